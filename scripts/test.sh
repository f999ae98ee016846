#!/usr/bin/env bash
# The one command that sets everything up and runs the test suite:
#   creates (or reuses) .venv, installs qlnumba with its test and ptx extras, runs pytest twice,
#   side by side: the CPU suite, and the GPU kernels in Numba's CUDA simulator
#   (NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported, hence a process of its own),
#   each followed by scripts/ptx_check.py (every GPU kernel through the real CUDA compiler,
#   float32 after the simulator's suite, float64 after the CPU suite: the simulator runs kernels
#   as Python and accepts code the compiler refuses).
# Extra arguments go to both pytest runs (for example: scripts/test.sh --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test,ptx
# Two lanes side by side (each compiles on one core most of the time): the simulator's suite
# then the PTX check for float32 (about 3 + 2.5 minutes on 2 cores), and the CPU suite then the
# PTX check for float64 (about 4.5 + 2.5).  The simulator lane's output is printed after the
# CPU suite's, and the exit status fails if any of the four failed.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(
    status=0
    NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest tests/cuda "$@" > "$tmp/sim.log" 2>&1 || status=$?
    echo "$status" > "$tmp/sim.status"
    status=0
    .venv/bin/python scripts/ptx_check.py --dtypes float32 > "$tmp/ptx32.log" 2>&1 || status=$?
    echo "$status" > "$tmp/ptx32.status"
) &
sim_pid=$!
cpu_status=0
.venv/bin/python -m pytest --ignore=tests/cuda "$@" || cpu_status=$?
ptx_status=0
.venv/bin/python scripts/ptx_check.py --dtypes float64 > "$tmp/ptx64.log" 2>&1 || ptx_status=$?
wait "$sim_pid" || true
[ "$(cat "$tmp/ptx32.status" 2>/dev/null || echo 1)" -eq 0 ] || ptx_status=1
echo "---- tests/cuda in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) ----"
cat "$tmp/sim.log"
echo "---- scripts/ptx_check.py: every GPU kernel through the CUDA compiler, for sm_90 ----"
cat "$tmp/ptx32.log" "$tmp/ptx64.log" 2>/dev/null || true
sim_status="$(cat "$tmp/sim.status" 2>/dev/null || echo 1)"
echo "CPU suite exit status $cpu_status, simulator suite exit status $sim_status, PTX check exit status $ptx_status"
[ "$cpu_status" -eq 0 ] && [ "$sim_status" -eq 0 ] && [ "$ptx_status" -eq 0 ]
