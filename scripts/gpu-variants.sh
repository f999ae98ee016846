#!/usr/bin/env bash
# scripts/gpu-check.sh with the persistent kernels' default plan next to cuDNN (ROW_GROUPS,
# ITEM_ROWS, ITEM_COLS, TEAM_LOADS and GRID_BARRIER, for example 1,2 and default,1 and default,4
# and default,0,32 and default,spin, compare settings side by side in one process, each checked
# against the CPU layer at both shapes; the ninth session's runs chose the row groups), the
# matrix-product tiles (MATMUL_TILES; empty: none) on the large shape's products, a
# one-line-per-mode summary of the ratios, then the defaults again with each option set of
# VARIANTS ("|" between runs; default: --tensor-cores off, --matmul-tile @best-tile, where
# @best-tile is the tile of MATMUL_TILES whose four products took the least time; each checked
# against the CPU too, tokens/s printed to set beside the first run's, all in one
# gpu_bench_variants.json: the device returns 8 files at most; "@baseline" runs
# the code of an earlier commit, made by scripts/make-baseline.sh), then a profile
# of the large shape and of CudaTrainer steps with PROFILE_OPTIONS (default: none).
# GRU=1 also times our GRU layer beside cuDNN's nn.GRU at both shapes (bench/gpu.py --gru).
# Files go to $OUT (or bench/results).  SKIP_TESTS=1, VARIANTS= and SKIP_PROFILE=1 leave out the
# GPU tests, the variant runs and the profile.
# Timings on an H100 (fourteenth session): the defaults' run without tiles about 70 s, each
# variant about 45 s (the step tensor cores' longer), the GPU tests 69 in 232 s (the whole folder
# takes more: run the tests that cover what changed first, -k); the machine's start and the
# transfers about 40 s.  A device command may run 10 minutes, and a session has 15 minutes of
# device time in all, so one full call and a short one right after it (the machine stays warm
# 30 s): 1. scripts/gpu-session.sh (this script, then the GPU tests in the time left, about 9.5
# minutes); 2. the option that won, again: VARIANTS="..." SKIP_TESTS=1 MATMUL_TILES=
# SKIP_PROFILE=1 bash scripts/gpu-variants.sh.
# (run locally, into bench/results, a call's files replace the previous call's).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
MATMUL_TILES="${MATMUL_TILES-128x128pf,128x128tf32x3,128x128tf32x3tested,128x128tf32x3as,128x128tf32x3as16,128x128tf32x3r128,128x128tf32x3w16,64x128tf32x3r128}"
TEST_TIMEOUT="${TEST_TIMEOUT:-150}" BENCH_TIMEOUT="${BENCH_TIMEOUT:-180}" scripts/gpu-check.sh \
    --check-shapes small,large --row-groups "${ROW_GROUPS:-default}" --item-rows "${ITEM_ROWS:-default}" \
    --item-cols "${ITEM_COLS:-default}" --team-loads "${TEAM_LOADS:-default}" \
    --grid-barrier "${GRID_BARRIER:-default}" ${GRU:+--gru} \
    ${MATMUL_TILES:+--matmul-tiles "$MATMUL_TILES"} > /dev/null
[ -n "${SKIP_TESTS:-}" ] || tail -1 "$DEST/gpu_cuda_tests.log"
"$PY" - "$DEST/gpu_bench.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("max rel err", {k: max(max(v.values()) for v in d.values()) for k, d in r["check_vs_cpu_max_rel_err"].items()})
print("host", r.get("host_cpu"))
for n, row in r["shapes"].items():
    print(n, "torch's tiny ops, us each (before, after the rounds)", row.get("torch_launch_us"))
    for m in ("train", "infer"):
        print(n, m, {k.replace("qlnumba_", "").replace("_persistent", ""): round(v, 3)
                     for k, v in row.get(m + "_ratio_vs_cudnn", {}).items()})
        print(n, m, "rounds' ratios, min-max", {k.replace("qlnumba_", "").replace("_persistent", ""):
                                                 f"{min(v):.3f}-{max(v):.3f}"
                                                 for k, v in row.get(m + "_ratio_rounds", {}).items()})
        print(n, m, "k tokens/s", {k.replace("qlnumba_", "").replace("_persistent", ""): round(v / 1e3)
                                   for k, v in row[m + "_tokens_per_s"].items()})
print(r.get("trainer"), r.get("kernel_resources"))
for tile, row in r.get("matmul_tiles", {}).items():
    print(tile, {k.replace(" GFLOP/s", ""): round(v, 2) if k.endswith(" ms") else round(v)
                 for k, v in row.items()})
PYEOF
# "@best-tile" in VARIANTS: the tile of MATMUL_TILES whose four products took the least time
BEST_TILE=$("$PY" - "$DEST/gpu_bench.json" <<'PYEOF'
import json, sys
tiles = json.load(open(sys.argv[1])).get("matmul_tiles", {})
timed = {name: row["all four ms"] for name, row in tiles.items() if "all four ms" in row}
print(min(timed, key=timed.get) if timed else "")
PYEOF
)
echo "best tile: ${BEST_TILE:-none}"
# the library's defaults with other options, each checked against the CPU and timed
with_options() {    # with_options NAME OPTIONS
    # "@baseline [OPTIONS]": the same benchmark on the code of scripts/make-baseline.sh (its own
    # bench/gpu.py, which imports the qlnumba beside it), for an A/B in the same call
    local script=bench/gpu.py options="$2"
    if [[ "$options" == @baseline* ]]; then
        script="${BASELINE_DIR:-baseline}/bench/gpu.py"
        options="${options#@baseline}"
        [ -f "$script" ] || { echo "no $script: run scripts/make-baseline.sh COMMIT first, and carry it"; return; }
        echo "@baseline: $(cat "${BASELINE_DIR:-baseline}/COMMIT" 2>/dev/null)"
    fi
    # shellcheck disable=SC2086
    # its log and JSON stay in /tmp (the device returns 8 files at most) unless the run fails
    PYTHONPATH="$PWD" timeout 150 "$PY" "$script" --check --check-shapes small,large $options \
        --json-out "/tmp/gpu_bench_$1.json" > "/tmp/gpu_bench_$1.log" 2>&1 \
        || { tail -30 "/tmp/gpu_bench_$1.log"; return; }
    "$PY" - "/tmp/gpu_bench_$1.json" "$2" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[2], "max rel err", {k: max(max(v.values()) for v in d.values())
                                   for k, d in r["check_vs_cpu_max_rel_err"].items()})
for n, row in r["shapes"].items():
    print(sys.argv[2], n, {m: {k.replace("qlnumba_", "").replace("_persistent", ""): round(v / 1e3)
                               for k, v in row[m + "_tokens_per_s"].items()} for m in ("train", "infer")})
PYEOF
}
VARIANTS="${VARIANTS---tensor-cores off|--matmul-tile @best-tile}"
if [[ "$VARIANTS" == *@best-tile* && -z "$BEST_TILE" ]]; then
    echo "no tile timed: the @best-tile runs are left out"
    VARIANTS=$(tr '|' '\n' <<< "$VARIANTS" | grep -v @best-tile | paste -sd '|')
fi
VARIANTS="${VARIANTS//@best-tile/$BEST_TILE}"
IFS='|' read -ra RUNS <<< "$VARIANTS"
for i in "${!RUNS[@]}"; do
    rm -f "/tmp/gpu_bench_variant$i.json"
    with_options "variant$i" "${RUNS[$i]}"
done
if [ "${#RUNS[@]}" -gt 0 ]; then    # every variant's JSON in one file, keyed by its options
    "$PY" - "$DEST/gpu_bench_variants.json" "${RUNS[@]}" <<'PYEOF'
import json, os, sys
out = {}
for i, opts in enumerate(sys.argv[2:]):
    path = f"/tmp/gpu_bench_variant{i}.json"
    out[opts] = json.load(open(path)) if os.path.exists(path) else None
json.dump(out, open(sys.argv[1], "w"), indent=1)
PYEOF
fi
if [ -z "${SKIP_PROFILE:-}" ]; then
    # shellcheck disable=SC2086
    PYTHONPATH="$PWD" timeout 90 "$PY" bench/gpu_profile.py --shapes large --cprofile --trainer \
        ${PROFILE_OPTIONS-} --json-out "$DEST/gpu_profile.json" 2>&1 \
        | grep -v -i warn > "$DEST/gpu_profile.log"
    grep -o '"persistent_[a-z]*_us_per_step": [0-9.]*\|"host_overhead_ms": [0-9.]*\|"step_ms": [0-9.]*' \
        "$DEST/gpu_profile.log" | tr '\n' ' '
fi
