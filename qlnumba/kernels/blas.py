"""A matrix product on strided 2-D views (CPU), through the BLAS that ``np.dot`` uses.

Numba's ``np.dot`` wants contiguous operands (it copies the others) and always
overwrites its output.  ``gemm`` takes any 2-D views whose rows are contiguous (a
block of columns of a larger array, say) and can add to its output, so a kernel
can multiply a slice of saved steps in place.

Shapes legend
  C (m, n); A (m, k), or (k, m) with trans_a; B (k, n), or (n, k) with trans_b.
  Every operand's last axis has unit stride; its row stride is the leading dimension.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload
from numba.np.linalg import ensure_blas, get_blas_kind

from ..config import JIT


def _xxgemm(dtype):
    ptr = types.CPointer(dtype)
    sig = types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                     ptr, ptr, types.intp, ptr, types.intp, ptr, ptr, types.intp)
    return types.ExternalFunction("numba_xxgemm", sig)


def gemm(C, A, B, trans_a, trans_b, accumulate):
    """C = op(A) op(B), or C += op(A) op(B) with ``accumulate``; op(X) = X.T where asked."""


@overload(gemm)
def _gemm(C, A, B, trans_a, trans_b, accumulate):
    ensure_blas()
    fn = _xxgemm(C.dtype)
    kind = ord(get_blas_kind(C.dtype, "gemm"))
    item = np.dtype(str(C.dtype)).itemsize
    dtype = np.dtype(str(C.dtype))

    def impl(C, A, B, trans_a, trans_b, accumulate):
        m, n = C.shape
        k = A.shape[0] if trans_a else A.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:
            if not accumulate:
                C[:] = 0
            return
        alpha = np.ones(1, dtype=dtype)
        beta = np.full(1, 1.0 if accumulate else 0.0, dtype=dtype)
        # BLAS is column-major: a row-major X with row stride ld is X^T there, so
        # compute C^T = op(B)^T op(A)^T, B first.  A matrix of one row may have any
        # row stride (a transposed column, say); BLAS wants ld >= its columns.
        ldb = B.strides[0] // item if B.shape[0] > 1 else B.shape[1]
        lda = A.strides[0] // item if A.shape[0] > 1 else A.shape[1]
        ldc = C.strides[0] // item if C.shape[0] > 1 else C.shape[1]
        fn(kind, ord("t") if trans_b else ord("n"), ord("t") if trans_a else ord("n"),
           n, m, k, alpha.ctypes, B.ctypes, max(1, ldb),
           A.ctypes, max(1, lda), beta.ctypes, C.ctypes, max(1, ldc))
    return impl


@njit(**JIT)
def gemm_njit(C, A, B, trans_a, trans_b, accumulate):
    """``gemm`` callable from Python (tests)."""
    gemm(C, A, B, trans_a, trans_b, accumulate)
