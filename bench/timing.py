"""Timing shared by the benchmarks: warm up once (compilation excluded), then the median."""
import statistics
import time


def median_time(fn, repeats, sync=lambda: None):
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up; ``sync`` waits for a device."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
