#!/usr/bin/env bash
# scripts/gpu-check.sh comparing the persistent kernels' settings side by side (row groups
# 1, 2 x team_dot items of 2, 4 rows, each checked against the CPU layer at both shapes)
# next to cuDNN, the matrix-product tiles (plain and prefetching) on the large shape's
# products, a one-line-per-mode summary of the ratios, the defaults again with the options
# in SECOND (default: --team-loads 32) and in THIRD (default: --stage-rows on; each checked
# against the CPU too, tokens/s printed to set beside the first run's), then a profile of
# the large shape and of CudaTrainer steps.  Files go to $OUT (or bench/results).  About
# 6 minutes on an H100; SKIP_TESTS=1, SECOND=, THIRD= and SKIP_PROFILE=1 leave out the GPU
# tests, the second and third runs and the profile;
# ROW_GROUPS, ITEM_ROWS and MATMUL_TILES (empty: no tile timings) choose the variants.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
MATMUL_TILES="${MATMUL_TILES-64x64,128x128,64x64pf,128x128pf}"
TEST_TIMEOUT="${TEST_TIMEOUT:-150}" BENCH_TIMEOUT="${BENCH_TIMEOUT:-180}" scripts/gpu-check.sh \
    --check-shapes small,large --row-groups "${ROW_GROUPS:-1,2}" --item-rows "${ITEM_ROWS:-2,4}" \
    ${MATMUL_TILES:+--matmul-tiles "$MATMUL_TILES"} > /dev/null
[ -n "${SKIP_TESTS:-}" ] || tail -1 "$DEST/gpu_cuda_tests.log"
"$PY" - "$DEST/gpu_bench.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("max rel err", {k: max(max(v.values()) for v in d.values()) for k, d in r["check_vs_cpu_max_rel_err"].items()})
for n, row in r["shapes"].items():
    for m in ("train", "infer"):
        print(n, m, {k.replace("qlnumba_", "").replace("_persistent", ""): round(v, 3)
                     for k, v in row[m + "_ratio_vs_cudnn"].items()})
        print(n, m, "k tokens/s", {k.replace("qlnumba_", "").replace("_persistent", ""): round(v / 1e3)
                                   for k, v in row[m + "_tokens_per_s"].items()})
print(r.get("trainer"), r.get("kernel_resources"))
for tile, row in r.get("matmul_tiles", {}).items():
    print(tile, {k.replace(" GFLOP/s", ""): round(v) for k, v in row.items()})
PYEOF
# the library's defaults with other options, each checked against the CPU and timed
with_options() {    # with_options NAME OPTIONS
    # shellcheck disable=SC2086
    # its log stays out of $DEST (the device returns 8 files at most) unless the run fails
    PYTHONPATH="$PWD" timeout 150 "$PY" bench/gpu.py --check --check-shapes small,large $2 \
        --json-out "$DEST/gpu_bench_$1.json" > "/tmp/gpu_bench_$1.log" 2>&1 \
        || { tail -30 "/tmp/gpu_bench_$1.log"; return; }
    "$PY" - "$DEST/gpu_bench_$1.json" "$2" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[2], "max rel err", {k: max(max(v.values()) for v in d.values())
                                   for k, d in r["check_vs_cpu_max_rel_err"].items()})
for n, row in r["shapes"].items():
    print(sys.argv[2], n, {m: {k.replace("qlnumba_", "").replace("_persistent", ""): round(v / 1e3)
                               for k, v in row[m + "_tokens_per_s"].items()} for m in ("train", "infer")})
PYEOF
}
SECOND="${SECOND---team-loads 32}"
THIRD="${THIRD---stage-rows on}"
[ -z "$SECOND" ] || with_options second "$SECOND"
[ -z "$THIRD" ] || with_options third "$THIRD"
if [ -z "${SKIP_PROFILE:-}" ]; then
    PYTHONPATH="$PWD" timeout 90 "$PY" bench/gpu_profile.py --shapes large --cprofile --trainer \
        --json-out "$DEST/gpu_profile.json" 2>&1 | grep -v -i warn > "$DEST/gpu_profile.log"
    grep -o '"persistent_[a-z]*_us_per_step": [0-9.]*\|"host_overhead_ms": [0-9.]*\|"step_ms": [0-9.]*' \
        "$DEST/gpu_profile.log" | tr '\n' ' '
fi
