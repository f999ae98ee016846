#!/usr/bin/env bash
# The one command that sets everything up and runs the test suite:
#   creates (or reuses) .venv, installs qlnumba with its test extra, runs pytest twice:
#   the CPU suite, then the GPU kernels in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1
#   must be set before numba is imported, hence a process of its own).
# Extra arguments go to both pytest runs (for example: scripts/test.sh --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test
.venv/bin/python -m pytest --ignore=tests/cuda "$@"
NUMBA_ENABLE_CUDASIM=1 exec .venv/bin/python -m pytest tests/cuda "$@"
