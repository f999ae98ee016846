#!/usr/bin/env bash
# Train every row of results/imdb.md, at most two jobs at a time with one thread each
# (2 cores), then print the tables.  A job whose summary.json exists is skipped.
# The table ran at K = 32, the default block length before the thirty-sixth session (now 4).
#   train/run_table.sh [JOB ...]      JOB = model:seed, default: the full table
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=("$@")
[ ${#jobs[@]} -gt 0 ] || jobs=(ql:0 lstm:0 gru:0 bilstm:0 psug:0 hgr:0 ql:1 lstm:1)
mkdir -p runs
for job in "${jobs[@]}"; do
    model=${job%%:*}; seed=${job##*:}; out=runs/${model}_s${seed}
    [ -f "$out/summary.json" ] && continue
    while [ "$(pgrep -fc 'train/imdb.py --model')" -ge 2 ]; do sleep 5; done
    nohup .venv/bin/python train/imdb.py --model "$model" --seed "$seed" --threads 1 --out "$out" \
        --block-size 32 --no-progress > "$out.out" 2>&1 &
    sleep 2
done
wait
.venv/bin/python train/report.py runs          # paste into results/imdb.md
