"""One place for Numba flags, dtype defaults and the thread count.

Every ``@njit`` in the library is written ``@njit(**JIT)`` (or ``JIT_PARALLEL`` for
the ``*_split`` kernels); nothing else sets ``fastmath``, ``parallel`` or ``cache``.
``fastmath`` stays off: the tests check gradients to 1e-6 and rely on IEEE NaN/inf.

Threads.  By default the kernels run serially and only BLAS (inside the big matrix
products) uses its own threads.  ``set_num_threads(n)`` switches to one thread
pool of ``n`` Numba threads, and BLAS is pinned to one thread, since two pools
fighting over the cores collapses speed.  How the work is split (``partition``):

- ``"units"`` (QL-LSTM/LSTM layers, the default): each thread owns a slice of the
  hidden units of every row and the threads meet at a spin barrier every step
  (kernels/recurrent_units.py; one thread runs these kernels too, as one part).
  Called from several Python threads at once, kernels on several threads take
  turns where they would need more threads than there are (``threads_region``).
  Per-step products keep all B columns (sequences).  QL-LSTM inference splits rows instead where
  every thread gets 16 rows or more (``layers._QLCell._infer``: no barrier).
- ``"rows"``: the rows of each batch are split into ``n`` blocks run side by side
  with no synchronisation at all (GRU layers always split this way).

Environment variables (read once, at import):

``QLNUMBA_CACHE``    "0" disables Numba's on-disk cache (default on).
``QLNUMBA_THREADS``  calls ``set_num_threads`` with this value.
``QLNUMBA_WIDE_VECTORS``  "0" keeps LLVM's own vector width for the loops it vectorises
                     (default: 512-bit vectors on AVX-512 hosts; see ``_prefer_512_bit``).
"""
import contextlib
import os
import threading

import numpy as np

FASTMATH = False
CACHE = os.environ.get("QLNUMBA_CACHE", "1") != "0"

# error_model="numpy": a division by zero gives inf instead of raising, which lets LLVM
# vectorise loops with divisions (kernels never divide by a value that can be zero).
JIT = dict(fastmath=FASTMATH, parallel=False, cache=CACHE, nogil=True, error_model="numpy")
JIT_PARALLEL = dict(JIT, parallel=True)

DTYPES = (np.float32, np.float64)


def _prefer_512_bit():
    """Let LLVM vectorise the kernels' loops with 512-bit vectors on AVX-512 hosts.

    LLVM's tuning for Intel's AVX-512 cores (Skylake-SP to Sapphire Rapids, and the
    "rocketlake" this VM's Xeon reports) prefers 256-bit vectors for the loops it
    vectorises itself (``prefer-256-bit``), against clock slowdowns on the oldest of
    them; only hand-written vector code (``kernels/tiles.py``) used the 512-bit
    registers.  The element-wise loops (gates, state updates) run at twice the
    values per instruction with them: on the CI machine kind's Xeon, QL-LSTM's gate
    loop at (B, H) = (16, 256) took 1.62 ms per 256 steps against 1.99, and its whole
    inference at (32, 256, 128, 256) 9.2-9.5 ms against 10.2 (bench/results/README.md).
    Results are the same bits: no loop here reassociates sums (fastmath is off).

    This is done by adding ``-prefer-256-bit`` to the features Numba compiles with
    (``numba.core.config.CPU_FEATURES``, read once, when Numba sets up its CPU target:
    at the first ``@njit``).  Numba's CPU target is shared, so the setting reaches
    every Numba function of the process; it is left alone where the user chose
    (NUMBA_CPU_NAME or NUMBA_CPU_FEATURES set), where QLNUMBA_WIDE_VECTORS=0, on
    hosts without AVX-512, and where the CPU target was set up before this import
    (it would not take effect).  Returns whether the setting is in place.
    """
    if os.environ.get("QLNUMBA_WIDE_VECTORS", "1") == "0":
        return False
    from numba.core import config as numba_config
    from numba.core import registry

    if numba_config.CPU_NAME is not None or numba_config.CPU_FEATURES is not None:
        return False
    if "_toplevel_target_context" in vars(registry.cpu_target):    # already set up
        return False
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:                          # llvmlite cannot read this host's features
        return False
    if "+avx512f" not in features.split(","):
        return False
    numba_config.CPU_FEATURES = features + ",-prefer-256-bit"
    return True


WIDE_VECTORS = _prefer_512_bit()

_threads = 1
_partition = "units"
PARTITIONS = ("units", "rows")


def set_num_threads(n, partition="units"):
    """Run the recurrent kernels on ``n`` threads with single-threaded BLAS.

    ``partition`` is "units" (threads split the hidden units, one barrier per
    step) or "rows" (threads split the batch rows); see the module docstring.
    """
    global _threads, _partition
    if not isinstance(partition, str) or partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
    import numba

    from .validate import check_size                 # (validate imports this module)
    n = min(check_size(n, "thread count"), numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    # Numba's np.dot calls SciPy's BLAS, which is loaded lazily: load it now, or the
    # limit (which reaches only libraries already loaded) would miss it
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_limits     # installed with scikit-learn

    threadpool_limits(1, user_api="blas")
    _threads, _partition = n, partition


def get_num_threads():
    return _threads


def get_partition():
    return _partition


_layer_ok = None


def _threads_run_together():
    """Whether Numba's threading layer gives each prange chunk a thread of its own at once.

    OpenMP and the workqueue do; TBB may run two chunks one after the other on one
    thread, and a spin barrier between them would then wait forever.
    """
    global _layer_ok
    if _layer_ok is None:
        import numba

        @numba.njit(parallel=True, cache=False)
        def probe(a):
            for i in numba.prange(a.size):
                a[i] = i

        probe(np.zeros(2))                        # the layer is chosen at the first parallel run
        _layer_ok = numba.threading_layer() in ("omp", "workqueue")
    return _layer_ok


def unit_blocks(hidden, align=8):
    """Edges (P+1,) int64 of the hidden-unit slices for the "units" partition, or None.

    One thread (or Numba running one): [0, hidden], the unit-major kernels on one
    part, which never waits at its barrier.  On one core with BLAS pinned they
    trained 27-31% faster than ``recurrent.py``'s serial kernels (``bench/cpu.py
    --threads 1 --partition units`` against ``rows``, bench/results/README.md; at
    parity when BLAS keeps its own threads).
    None means: do not split units (the rows partition, fewer units than threads,
    or a threading layer that does not run the threads together: a spin barrier
    would then wait forever).
    Slices are multiples of ``align`` units where the size allows (aligned rows).
    """
    import numba

    parts = min(_threads, numba.get_num_threads())
    if _partition != "units":
        return None
    if parts == 1:
        return np.array([0, hidden], dtype=np.int64)
    if hidden < parts or not _threads_run_together():
        return None
    if hidden >= parts * align:
        edges = np.linspace(0, hidden // align, parts + 1).round().astype(np.int64) * align
        edges[-1] = hidden
        return edges
    return np.linspace(0, hidden, parts + 1).round().astype(np.int64)


class _ThreadBudget:
    """The Numba threads of the process, handed to kernels that run on several of them."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = 0

    @contextlib.contextmanager
    def take(self, parts):
        import numba
        total = numba.config.NUMBA_NUM_THREADS
        parts = min(parts, total)
        with self._cond:
            self._cond.wait_for(lambda: self._busy + parts <= total)
            self._busy += parts
        try:
            yield
        finally:
            with self._cond:
                self._busy -= parts
                self._cond.notify_all()


_budget = _ThreadBudget()


def threads_region(parts):
    """The context to call a kernel in that runs on ``parts`` Numba threads.

    The kernels release the GIL, so Python threads can call them at once.  Side by
    side, kernels whose threads together outnumber Numba's threads (the cores, by
    default) would share cores, and the spin barriers of the units partition then
    wait for parts whose threads are not running: two QL-LSTM trainers on 2 threads
    each, on 2 cores, took 13.5-24x as long side by side as one after the other
    (thirty-seventh session).  A kernel on two parts or more waits here until that
    many of the process's threads are free (on 16 cores, four kernels on 4 threads
    still run side by side); one part, the serial kernels, never waits.
    """
    return _budget.take(parts) if parts > 1 else contextlib.nullcontext()


def row_blocks(batch):
    """Edges (P+1,) int64 of the blocks ``batch`` rows (or values) are split into:
    P = the thread count, at most ``batch`` (no empty block)."""
    parts = max(1, min(_threads, batch))
    return np.linspace(0, batch, parts + 1).round().astype(np.int64)


if "QLNUMBA_THREADS" in os.environ:
    if not os.environ["QLNUMBA_THREADS"].strip().isdigit():
        raise ValueError("QLNUMBA_THREADS must be an integer >= 1, got "
                         f"{os.environ['QLNUMBA_THREADS']!r}")
    set_num_threads(int(os.environ["QLNUMBA_THREADS"]))
