"""Timing shared by the benchmarks: warm up first (compilation excluded), then the median."""
import platform
import statistics
import time


def median_time(fn, repeats, sync=lambda: None):
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up; ``sync`` waits for a device."""
    return interleaved_median_times({"fn": fn}, repeats, sync, settle=0.0)["fn"]   # no contender


def interleaved_times(fns, repeats, sync=lambda: None, settle=0.05, warmup=1, rewarm=False):
    """Seconds of every timed call of each of ``fns`` (a dict of callables), by name: lists
    of ``repeats``, entry i from round i.

    Every function is called ``warmup`` times first; then each round calls every function
    once.  On a shared machine whose speed drifts, a slow spell then hits all contenders
    alike instead of whichever one happened to be running.  Before each timed call the
    process sleeps ``settle`` seconds (not timed), so that the thread pool of the previous
    contender (OpenMP threads spin for a while after their work) is asleep and does not
    compete for the cores.

    With ``rewarm``, each timed call comes right after an untimed call of the same function,
    so that it finds memory and caches as the next step of a loop would.  On a VM whose host
    reclaims guest memory left untouched for a few seconds, the first touch of each page
    afterwards costs microseconds: a contender timed right after another contender's
    seconds-long call then paid for touching its own buffers again (bench/results/README.md,
    twenty-eighth session).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        sync()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if rewarm:
                fn()
                sync()
            time.sleep(settle)
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_median_times(fns, repeats, sync=lambda: None, settle=0.05, rewarm=False):
    """Median seconds of each of ``fns``, timed in interleaved rounds (``interleaved_times``)."""
    times = interleaved_times(fns, repeats, sync, settle, rewarm=rewarm)
    return {name: statistics.median(t) for name, t in times.items()}


def round_speedups(times, name, reference):
    """Round by round, how many times faster ``name`` ran than ``reference`` (their seconds
    in the same round of ``interleaved_times``: reference / name)."""
    return [ref / own for ref, own in zip(times[reference], times[name], strict=True)]


def launch_us(op, sync, calls=1000, batches=3):
    """Median microseconds per call of ``op`` when ``calls`` of them are issued back to back
    and then waited for (``sync``): for a tiny device operation, how fast this host (Python,
    driver, CPU) can feed the device.  A recurrence that launches kernels at every step
    (cuDNN's LSTM) runs no faster than that allows at small sizes."""
    sync()
    per_call = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            op()
        sync()
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(per_call)


def host_cpu():
    """The host's CPU model (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
