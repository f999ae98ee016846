"""One place for Numba flags and dtype defaults.

Every ``@njit`` in the library is written ``@njit(**JIT)``; nothing else sets
``fastmath``, ``parallel`` or ``cache``.  ``fastmath`` stays off: the test
suite checks gradients to 1e-6 and relies on IEEE NaN/inf behaviour.

Environment variables (read once, at import):

``QLNUMBA_CACHE``    "0" disables Numba's on-disk cache (default on).
``QLNUMBA_THREADS``  number of threads for Numba and BLAS (default: Numba's).
"""
import os

import numpy as np

FASTMATH = False
PARALLEL = False
CACHE = os.environ.get("QLNUMBA_CACHE", "1") != "0"

# error_model="numpy": a division by zero gives inf instead of raising, which lets LLVM
# vectorise loops with divisions (kernels never divide by a value that can be zero).
JIT = dict(fastmath=FASTMATH, parallel=PARALLEL, cache=CACHE, nogil=True, error_model="numpy")

DTYPES = (np.float32, np.float64)
DEFAULT_DTYPE = np.float32


def set_num_threads(n):
    """Set the thread count used by Numba's parallel regions and BLAS."""
    import numba

    n = int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # threadpoolctl comes with scikit-learn; optional here
        pass


if "QLNUMBA_THREADS" in os.environ:
    set_num_threads(os.environ["QLNUMBA_THREADS"])
