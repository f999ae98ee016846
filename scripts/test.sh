#!/usr/bin/env bash
# The one command that sets everything up and runs the test suite:
#   creates (or reuses) .venv, installs qlnumba with its test extra, runs pytest twice, side
#   by side: the CPU suite, and the GPU kernels in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1
#   must be set before numba is imported, hence a process of its own).
# Extra arguments go to both pytest runs (for example: scripts/test.sh --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test
# The two runs go side by side (each compiles on one core most of the time); the simulator's
# output is printed after the CPU suite's, and the exit status fails if either failed.
sim_log="$(mktemp)"
trap 'rm -f "$sim_log"' EXIT
NUMBA_ENABLE_CUDASIM=1 .venv/bin/python -m pytest tests/cuda "$@" > "$sim_log" 2>&1 &
sim_pid=$!
cpu_status=0
.venv/bin/python -m pytest --ignore=tests/cuda "$@" || cpu_status=$?
sim_status=0
wait "$sim_pid" || sim_status=$?
echo "---- tests/cuda in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) ----"
cat "$sim_log"
echo "CPU suite exit status $cpu_status, simulator suite exit status $sim_status"
[ "$cpu_status" -eq 0 ] && [ "$sim_status" -eq 0 ]
