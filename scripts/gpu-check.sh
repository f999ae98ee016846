#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU (the lent device has about 15 minutes):
#   1. the GPU tests on the card (every GPU kernel against the CPU one), log to $OUT or bench/results
#   2. bench/gpu.py: both qlnumba step loops beside cuDNN, JSON to the same folder
# Uses the machine's python with numba-cuda already installed (or installs the cuda extra).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
"$PY" -c "import numba.cuda" 2>/dev/null || "$PY" -m pip install --quiet -e ".[cuda,test]"
"$PY" -m pip install --quiet -e ".[test]" >/dev/null 2>&1 || true
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$DEST/gpu_card.txt"
timeout 300 "$PY" -m pytest -q tests/cuda 2>&1 | tail -30 | tee "$DEST/gpu_cuda_tests.log"
timeout 240 "$PY" bench/gpu.py --repeats 3 --json-out "$DEST/gpu_bench.json" | tail -60
