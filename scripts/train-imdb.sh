#!/usr/bin/env bash
# The one command that sets everything up and trains the headline QL-LSTM on IMDB:
#   creates (or reuses) .venv, installs qlnumba, runs train/imdb.py with its defaults.
# Extra arguments go to train/imdb.py (see: scripts/train-imdb.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv
exec .venv/bin/python train/imdb.py "$@"
