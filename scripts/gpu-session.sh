#!/usr/bin/env bash
# One device call that fits a session's 15 minutes of device time (about 40 s of start and
# transfers, then up to LIMIT seconds, default 560): the benchmarks first, then profiles, then
# the GPU tests with whatever time is left.
#   0. with PRECHECK (a pytest -k expression): those GPU tests first, stopped after PRECHECK_TIMEOUT
#      seconds (default 120).  If they fail or time out, step 1 runs without GRID_BARRIER's
#      settings: a step barrier that never opens would otherwise hang the benchmark (and with it
#      the whole call) until its timeout.  With BARRIER_PROFILE=1 then: the step barriers alone
#      (bench/gpu_profile.py --shapes "": µs per grid sync and per spin barrier, 90 s at most).
#   1. scripts/gpu-variants.sh without its tests and profile: the defaults beside cuDNN at both
#      shapes (checked against the CPU), the tiles of MATMUL_TILES, each option set of VARIANTS
#      (both as gpu-variants.sh takes them).
#   2. with NCU_RUNS (";" between runs, each the settings of one scripts/gpu-ncu.sh run, for
#      example "KIND=ql; KIND=lstm TAG=lstm_all KERNELS=persistent_|matmul SKIP=0 COUNT=6"):
#      Nsight Compute's stalls, each run bounded by the time left less 60 s.
#   3. pytest -v tests/cuda: first the tests that FIRST_TESTS selects (a pytest -k expression:
#      the ones on what changed since the last card run), then the rest, each run stopped by
#      the time left.  -v names every test as it ends, so a run that the timeout stops still
#      says which passed (the fourteenth session's -q log could only be counted).
# Example (the plan for the next card, twenty-first session: the spin barrier's layer tests,
# then both step barriers side by side beside cuDNN at both shapes, each checked against the
# CPU, then first the spin barrier's tests and the 40 GPU tests that the twentieth session's two
# calls had no time for, then the rest):
#   PRECHECK="spin_barrier_layer and (ql-groups2 or lstm)" BARRIER_PROFILE=1 GRID_BARRIER=default,spin \
#   GRU=1 BENCH_TIMEOUT=280 LIMIT=560 MATMUL_TILES= VARIANTS= \
#   FIRST_TESTS="spin or barrier or plan_defaults or wide or slab or prefetch or take_float32 or tf32x3_long or async or register or simulator or closing or reads_only or trainer or allocates or device_argument or tensor_core_products or gpu_ or gru or language_model or estimator_on or feature_vector or program" \
#   bash scripts/gpu-session.sh
# (GRU=1 and the tests "gru", "trainer", "program": the twenty-fourth session's persistent GRU
# loops, its GRU and bidirectional device trainers.)
# (The twentieth session's plan, run by none: the same without PRECHECK, GRID_BARRIER and the
# first two FIRST_TESTS, BENCH_TIMEOUT=120.)
# (The twentieth session's first call timed eight settings of the persistent loops:
# ITEM_ROWS=default,1 ITEM_COLS=default,4 TEAM_LOADS=default,0 BENCH_TIMEOUT=420 MATMUL_TILES=
# VARIANTS= FIRST_TESTS="loads0 or 1x8 or side_by_side or uneven or plan or device_calls or gru".)
# (The eighteenth session's call, which timed the seventeenth session's code against
# d81aaab's: VARIANTS="@baseline|--matmul-tile @best-tile|--team-loads 32" NCU_RUNS="KIND=ql;
# KIND=lstm TAG=lstm_all KERNELS=persistent_|matmul SKIP=0 COUNT=6" and FIRST_TESTS.)
# Files go to $OUT (or bench/results): gpu-variants.sh's, ncu_TAG.tar.gz per profile, and
# gpu_cuda_tests.log.  SKIP_BENCH=1 leaves out step 1 (for a dry run in the simulator:
# NUMBA_ENABLE_CUDASIM=1).
set -uo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/results}"
PY="${PYTHON:-python3}"
LIMIT="${LIMIT:-560}"
mkdir -p "$DEST"
if [ -n "${PRECHECK:-}" ]; then
    PYTHONPATH="$PWD" timeout "${PRECHECK_TIMEOUT:-120}" "$PY" -m pytest -v -p no:cacheprovider tests/cuda \
        -k "$PRECHECK" 2>&1 | grep -E "PASSED|FAILED|ERROR|SKIPPED|Error|assert| passed| failed" \
        | tee "$DEST/gpu_precheck.log"
    status="${PIPESTATUS[0]}"
    echo "precheck ($PRECHECK) ended at ${SECONDS} s, exit status $status"
    if [ "$status" != 0 ]; then
        echo "precheck failed: the benchmarks run without GRID_BARRIER=${GRID_BARRIER:-}"
        unset GRID_BARRIER
    fi
fi
if [ -n "${BARRIER_PROFILE:-}" ]; then
    PYTHONPATH="$PWD" timeout 90 "$PY" bench/gpu_profile.py --shapes "" --json-out "$DEST/gpu_barrier_us.json" \
        2>&1 | tail -3
    echo "barrier profile ended at ${SECONDS} s"
fi
[ -n "${SKIP_BENCH:-}" ] || SKIP_TESTS=1 SKIP_PROFILE=1 bash scripts/gpu-variants.sh
echo "benchmarks done at ${SECONDS} s"
profiles() {    # the ncu runs of NCU_RUNS, each bounded by the time left less 60 s
    local settings left
    IFS=';' read -ra NCU_LIST <<< "${NCU_RUNS:-}"
    for settings in "${NCU_LIST[@]}"; do
        left=$((LIMIT - SECONDS - 60))
        if [ "$left" -lt 60 ]; then
            echo "no time left for the ncu run: $settings"
            continue
        fi
        # shellcheck disable=SC2086
        env $settings NCU_TIMEOUT="$((left < 240 ? left : 240))" bash scripts/gpu-ncu.sh
        echo "ncu run ($settings) done at ${SECONDS} s"
    done
}
run_tests() {    # run_tests PYTEST_ARGS...: pytest -v on tests/cuda within the time left
    local left=$((LIMIT - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "no time left for: pytest $*"
        return
    fi
    PYTHONPATH="$PWD" timeout "$left" "$PY" -m pytest -v -p no:cacheprovider tests/cuda "$@" 2>&1 \
        | grep -E "PASSED|FAILED|ERROR|SKIPPED|Error|assert| passed| failed"
    local status="${PIPESTATUS[0]}"
    echo "(pytest $* ended at ${SECONDS} s, exit status $status$([ "$status" = 124 ] && echo ': stopped by the time limit'))"
}
tests() {    # tests [FIRST|REST]: the tests FIRST_TESTS selects, the others, or all without it
    if [ -z "${FIRST_TESTS:-}" ]; then
        [ "$1" = FIRST ] || run_tests
    elif [ "$1" = FIRST ]; then
        run_tests -k "$FIRST_TESTS"
    else
        run_tests -k "not ($FIRST_TESTS)"
    fi >> "$DEST/gpu_cuda_tests.log"
    grep -c PASSED "$DEST/gpu_cuda_tests.log" | sed 's/$/ tests passed so far/'
}
: > "$DEST/gpu_cuda_tests.log"
profiles
tests FIRST
tests REST
grep -E "FAILED|ERROR|ended at|no time" "$DEST/gpu_cuda_tests.log"
echo "all done at ${SECONDS} s"
