"""GPU path (numba-cuda), imported only on demand: the CPU library never imports this package.

Named `gpu`, not `cuda`: numba-cuda redirects every module whose name contains
"numba.cuda", and "qlnumba.cuda" does (it recursed forever on the GPU machine).

``qlnumba.QLLSTM(..., device="cuda")`` reaches it.  Install with ``pip install
qlnumba[cuda]``.  Under ``NUMBA_ENABLE_CUDASIM=1`` (set before numba is
imported) the same kernels run on the CPU in Numba's simulator, which is how
CI checks them without a GPU.
"""
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
    return cuda
