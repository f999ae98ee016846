#!/usr/bin/env bash
# One prepared device run that compares the persistent kernels' settings side by side
# (row groups 1, 2 x team_dot items of 2, 4 rows) next to cuDNN, after the GPU tests,
# then profiles the large shape.  Files go to $OUT (or bench/results).  About 4 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$DEST/gpu_card.txt"
[ -n "${SKIP_TESTS:-}" ] || timeout 80 "$PY" -m pytest -q -p no:cacheprovider -W ignore::Warning tests/cuda 2>&1 | tee "$DEST/gpu_cuda_tests.log" | tail -3
timeout 120 "$PY" bench/gpu.py --check --check-shapes small,large --trainer --repeats 3 \
    --row-groups 1,2 --item-rows 2,4 --json-out "$DEST/gpu_bench.json" 2>&1 | grep -v -i warn > "$DEST/gpu_bench.log"
"$PY" - "$DEST/gpu_bench.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("max rel err", {k: max(max(v.values()) for v in d.values()) for k, d in r["check_vs_cpu_max_rel_err"].items()})
for n, row in r["shapes"].items():
    for m in ("train", "infer"):
        print(n, m, {k.replace("qlnumba_", "").replace("_persistent", ""): round(v, 3)
                     for k, v in row[m + "_ratio_vs_cudnn"].items()})
print(r.get("trainer"), r.get("kernel_resources"))
PYEOF
[ -n "${SKIP_PROFILE:-}" ] || timeout 35 "$PY" bench/gpu_profile.py --shapes large --cprofile --json-out "$DEST/gpu_profile.json" 2>&1 \
    | grep -v -i warn > "$DEST/gpu_profile.log"
grep -o '"persistent_[a-z]*_us_per_step": [0-9.]*\|"host_overhead_ms": [0-9.]*' "$DEST/gpu_profile.log" | tr '\n' ' '
