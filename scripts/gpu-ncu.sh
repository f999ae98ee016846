#!/usr/bin/env bash
# Where the kernels wait, line by line: Nsight Compute (ncu) on launches of bench/ncu_driver.py
# (one layer's forward and backward, twice, at the large shape; KIND=ql or lstm), with
# warp-state statistics and source-level stall sampling.  KERNELS (an ncu regex over kernel
# names; default persistent_), SKIP and COUNT (of the matching launches; default 2 and 2: the
# second call's step loops) choose the launches: KERNELS='persistent_|matmul' SKIP=0 COUNT=6
# takes LSTM's first call whole (x W^T, the two loops, then the products of δx, δW and δU).
# The persistent loops and the matrix-product tiles are built with line information
# (QLNUMBA_CUDA_LINEINFO=1; see qlnumba/gpu/arrays.lines_only), so their stalls land on lines of
# qlnumba/gpu/persistent.py, cells.py, matmul.py and tensor_cores.py.
# Writes to $OUT (or bench/results), named by TAG (default KIND): the report, its details page,
# the source page per SASS instruction and per source line (CSV) and the log, in one
# ncu_$TAG.tar.gz (a device call returns 8 files at most); prints the warp-state lines and the
# lines and instructions with the most stall samples (bench/ncu_top.py).  About
# 2 minutes each; NCU_TIMEOUT (default 240) bounds the profiled run; the clocks are left alone
# (--clock-control none).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
mkdir -p "$DEST"
PY="${PYTHON:-python3}"
NCU="$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)"
if [ -z "$NCU" ]; then
    echo "ncu not found: no profile"
    exit 1
fi
KIND="${KIND:-ql}"
TAG="${TAG:-$KIND}"
WORK="$(mktemp -d)"
REP="$WORK/ncu_$TAG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" QLNUMBA_CUDA_LINEINFO=1
timeout "${NCU_TIMEOUT:-240}" "$NCU" --clock-control none --kernel-name "regex:${KERNELS:-persistent_}" \
    --launch-skip "${SKIP:-2}" --launch-count "${COUNT:-2}" --section WarpStateStats \
    --section SourceCounters --section SchedulerStats --section LaunchStats --section SpeedOfLight \
    --import-source yes -f -o "$REP" "$PY" bench/ncu_driver.py --kind "$KIND" > "$WORK/ncu_run_$TAG.log" 2>&1
echo "ncu $TAG: exit status $?"
tail -5 "$WORK/ncu_run_$TAG.log"
if [ -f "$REP.ncu-rep" ]; then
    "$NCU" -i "$REP.ncu-rep" --page details > "$WORK/ncu_details_$TAG.txt" 2>&1
    "$NCU" -i "$REP.ncu-rep" --page source --csv --print-source sass > "$WORK/ncu_source_sass_$TAG.csv" 2>&1
    "$NCU" -i "$REP.ncu-rep" --page source --csv --print-source cuda > "$WORK/ncu_source_lines_$TAG.csv" 2>&1
    grep -E "^  [a-zA-Z_]|Duration|Warp Cycles Per Issued|Issued Warp|Eligible Warps|No Eligible|Achieved Occupancy|Registers Per|Compute \(SM\) Throughput|Memory Throughput|stall" \
        "$WORK/ncu_details_$TAG.txt" | cut -c1-200 | head -80
    "$PY" bench/ncu_top.py "$WORK/ncu_source_lines_$TAG.csv" --top 15
    "$PY" bench/ncu_top.py "$WORK/ncu_source_sass_$TAG.csv" --top 10
fi
tar -czf "$DEST/ncu_$TAG.tar.gz" -C "$WORK" .
ls -l "$DEST/ncu_$TAG.tar.gz"
rm -rf "$WORK"
