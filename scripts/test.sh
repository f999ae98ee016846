#!/usr/bin/env bash
# The one command that sets everything up and runs the test suite:
#   creates (or reuses) .venv, installs qlnumba with its test extra, runs pytest.
# Extra arguments go to pytest (for example: scripts/test.sh --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
exec .venv/bin/python -m pytest "$@"
