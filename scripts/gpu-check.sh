#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU (a lent device has about 15 minutes):
#   1. the GPU tests on the card (every GPU kernel against the CPU one), log to $OUT or bench/results
#   2. bench/gpu.py --check: the GPU layer against the CPU layer at the first benchmark shape
#      (128 blocks, not the tests' 3), then both models beside cuDNN (REPEATS rounds, default 5,
#      each running cuDNN too), JSON to the same folder
# Uses the machine's python with numba-cuda installed; qlnumba itself comes from this checkout.
# Arguments go on to bench/gpu.py; SKIP_TESTS=1 skips step 1.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -c "import numba_cuda" 2>/dev/null || "$PY" -m pip install --quiet -e ".[cuda,test]"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$DEST/gpu_card.txt"
"$PY" -m pip list 2>/dev/null | grep -i -E "^(numba|numba-cuda|numpy|torch|cuda-bindings) " | tee -a "$DEST/gpu_card.txt"
[ -n "${SKIP_TESTS:-}" ] || timeout "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -x -p no:cacheprovider tests/cuda 2>&1 | tee "$DEST/gpu_cuda_tests.log" | tail -25
timeout "${BENCH_TIMEOUT:-300}" "$PY" bench/gpu.py --check --trainer --repeats "${REPEATS:-5}" --json-out "$DEST/gpu_bench.json" "$@" 2>&1 \
    | tee "$DEST/gpu_bench.log" | tail -80
