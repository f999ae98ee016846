#!/usr/bin/env bash
# Where the persistent step loops wait, line by line: Nsight Compute (ncu) on the second
# forward and backward launch of bench/ncu_driver.py (large shape; KIND=ql or lstm), with
# warp-state statistics and source-level stall sampling, the forward built with line
# information (QLNUMBA_CUDA_LINEINFO=1; NVVM refuses it for the backward, whose stalls are
# then placed on SASS only: qlnumba/gpu/persistent.py).  Writes to $OUT (or bench/results): the report,
# its details page, the source page per SASS instruction and per source line (CSV), and
# the log.  About 2 minutes; the clocks are left alone (--clock-control none).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
KIND="${KIND:-ql}"
REP="$DEST/ncu_persistent_$KIND"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" QLNUMBA_CUDA_LINEINFO=1
timeout "${NCU_TIMEOUT:-240}" "$NCU" --clock-control none --kernel-name regex:persistent_ \
    --launch-skip 2 --launch-count 2 --section WarpStateStats --section SourceCounters \
    --section SchedulerStats --section LaunchStats --import-source yes -f -o "$REP" \
    "$PY" bench/ncu_driver.py --kind "$KIND" > "$DEST/ncu_run_$KIND.log" 2>&1
tail -5 "$DEST/ncu_run_$KIND.log"
"$NCU" -i "$REP.ncu-rep" --page details > "$DEST/ncu_details_$KIND.txt" 2>&1
"$NCU" -i "$REP.ncu-rep" --page source --csv --print-source sass > "$DEST/ncu_source_sass_$KIND.csv" 2>&1
"$NCU" -i "$REP.ncu-rep" --page source --csv --print-source cuda > "$DEST/ncu_source_lines_$KIND.csv" 2>&1
grep -i -E "stall|warp cycles|eligible|issued" "$DEST/ncu_details_$KIND.txt" | head -20
wc -c "$DEST"/ncu_*"$KIND"*
