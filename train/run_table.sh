#!/usr/bin/env bash
# Train every row of results/imdb.md, two jobs at a time with one thread each
# (2 cores), then rebuild the table.  Each row's command is printed in the table.
#   train/run_table.sh [JOB ...]      JOB = model:seed, default: the full table
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(ql:0 lstm:0 gru:0 bilstm:0 psug:0 hgr:0 ql:1 lstm:1)
mkdir -p runs
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c '
    model=${1%%:*}; seed=${1##*:}; out=runs/${model}_s${seed}
    [ -f "$out/summary.json" ] && exit 0
    .venv/bin/python train/imdb.py --model "$model" --seed "$seed" --threads 1 --out "$out" \
        --no-progress > "$out.out" 2>&1' _ {}
.venv/bin/python train/report.py runs > results/imdb_table.md
