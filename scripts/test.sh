#!/usr/bin/env bash
# The one command that sets everything up and runs the test suite:
#   creates (or reuses) .venv, installs qlnumba with its test and ptx extras, runs pytest twice,
#   side by side: the CPU suite, and the GPU kernels in Numba's CUDA simulator
#   (NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, hence a process of its own),
#   and after the CPU suite scripts/ptx_check.py (every GPU kernel through the real CUDA
#   compiler, float32 then float64: the simulator runs kernels as Python and accepts code the
#   compiler refuses).
# Extra arguments go to both pytest runs (for example: scripts/test.sh --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test,ptx
# The two pytest runs go side by side (each compiles on one core most of the time: on 2 cores
# the CPU suite takes about 6 minutes, the simulator's about 9), the CPU suite followed by the
# PTX check (about 1.5 minutes per float type).  The simulator's and the PTX check's output are
# printed after the CPU suite's, and the exit status fails if any of them failed.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(
    status=0
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest tests/cuda "$@" > "$tmp/sim.log" 2>&1 || status=$?
    echo "$status" > "$tmp/sim.status"
) &
sim_pid=$!
cpu_status=0
.venv/bin/python -m pytest --ignore=tests/cuda "$@" || cpu_status=$?
ptx_status=0
.venv/bin/python scripts/ptx_check.py --dtypes float32 > "$tmp/ptx32.log" 2>&1 || ptx_status=$?
.venv/bin/python scripts/ptx_check.py --dtypes float64 > "$tmp/ptx64.log" 2>&1 || ptx_status=$?
wait "$sim_pid" || true
echo "---- tests/cuda in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) ----"
cat "$tmp/sim.log"
echo "---- scripts/ptx_check.py: every GPU kernel through the CUDA compiler, for sm_90 ----"
cat "$tmp/ptx32.log" "$tmp/ptx64.log" 2>/dev/null || true
sim_status="$(cat "$tmp/sim.status" 2>/dev/null || echo 1)"
echo "CPU suite exit status $cpu_status, simulator suite exit status $sim_status, PTX check exit status $ptx_status"
[ "$cpu_status" -eq 0 ] && [ "$sim_status" -eq 0 ] && [ "$ptx_status" -eq 0 ]
