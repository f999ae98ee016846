"""Timing shared by the benchmarks: warm up once (compilation excluded), then the median."""
import statistics
import time


def median_time(fn, repeats, sync=lambda: None):
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up; ``sync`` waits for a device."""
    return interleaved_median_times({"fn": fn}, repeats, sync, settle=0.0)["fn"]   # no contender


def interleaved_median_times(fns, repeats, sync=lambda: None, settle=0.05):
    """Median seconds of each of ``fns`` (a dict of callables), timed in rounds.

    Every function is warmed up first; then each round calls every function once.
    On a shared machine whose speed drifts, a slow spell then hits all contenders
    alike instead of whichever one happened to be running.  Before each timed call
    the process sleeps ``settle`` seconds (not timed), so that the thread pool of
    the previous contender (OpenMP threads spin for a while after their work) is
    asleep and does not compete for the cores.
    """
    for fn in fns.values():
        fn()
        sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle)
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}
