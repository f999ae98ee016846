#!/usr/bin/env bash
# The one command that sets everything up and trains the headline QL-LSTM on IMDB:
#   creates (or reuses) .venv, installs qlnumba, runs train/imdb.py with its defaults.
# Extra arguments go to train/imdb.py (see: scripts/train-imdb.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/python train/imdb.py "$@"
