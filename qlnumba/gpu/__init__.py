"""GPU path (numba-cuda), imported only on demand: the CPU library never imports this package.

Named `gpu`, not `cuda`: numba-cuda redirects every module whose name contains
"numba.cuda", and "qlnumba.cuda" does (it recursed forever on the GPU machine).

``qlnumba.QLLSTM(..., device="cuda")`` reaches it.  Install with ``pip install
qlnumba[cuda]``.  Under ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) the same kernels run on the CPU in Numba's simulator, which is how
CI checks them without a GPU.
"""
import os
import time

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda 0.30 still calls np.row_stack, which numpy 2.5 removed
    np.row_stack = np.vstack


class CudaUnavailable(RuntimeError):
    """No usable CUDA device (and the simulator is off)."""


def get_cuda():
    """The ``numba.cuda`` module, or a clear error saying why it cannot be used."""
    try:
        from numba import cuda
    except ImportError as exc:                    # pragma: no cover - depends on the install
        raise CudaUnavailable(f"numba.cuda cannot be imported ({exc}); "
                              f"install the extra: pip install 'qlnumba[cuda]'") from None
    if not cuda.is_available():
        raise CudaUnavailable("no CUDA GPU is available (set NUMBA_ENABLE_CUDASIM=1 to run the "
                              "kernels in Numba's CPU simulator)")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        yielding_simulator()
    return cuda


def yielding_simulator():
    """Make Numba's CUDA simulator hand the GIL over at once (the simulation is unchanged).

    The simulator runs a block's threads as Python threads, and the thread that watches them
    polls their states in a loop that never blocks: a simulated thread that needs the GIL
    waited for the interpreter to force a switch (every 5 ms).  Here the watcher yields at
    each poll (``time.sleep(0)`` in ``BlockThread.is_alive``, which it calls for every thread
    of the block in each round).  The simulator suite's layer tests ran 5x faster.  Done
    once; skipped where the simulator is not built as numba-cuda 0.30's is."""
    try:
        from numba.cuda.simulator import kernel
    except ImportError:                           # pragma: no cover - another numba-cuda
        return
    base = getattr(kernel, "BlockThread", None)
    if base is None or getattr(base, "yields", False):
        return

    class YieldingBlockThread(base):
        yields = True

        def is_alive(self):
            time.sleep(0)                         # let a simulated thread take the GIL now
            return super().is_alive()
    kernel.BlockThread = YieldingBlockThread
