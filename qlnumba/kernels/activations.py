"""Scalar activations and their derivatives, typed by their argument, inlined into the kernels.

float64: the exact ``math.exp`` / ``math.tanh`` (the gradient tests run in float64).
float32: ``math.tanh`` is a scalar library call (~30 ns) that LLVM cannot vectorise,
so tanh is a rational function instead, the 12-level truncation of Lambert's continued
fraction

    tanh x = x / (1 + x²/(3 + x²/(5 + x²/(7 + ...)))),

expanded once (below) into x·N(x²)/D(x²), with x clamped to [-9, 9] (beyond, tanh
is 1 to float32 precision).  sigmoid(x) = ½ + ½·tanh(x/2).  Largest error against
float64 math: 3.5e-7 for tanh, 1.7e-7 for sigmoid (tests/test_activations.py).
Kernel loops over contiguous rows then vectorise (AVX2: ~0.8 ns per value); that
needs ``error_model="numpy"`` (config.JIT), else every division carries a
Python zero-division check.

The derivatives take the activation's *output* (what forward saved), as in
scikit-learn's ``neural_network._base``.

After editing this file, delete ``qlnumba/kernels/__pycache__`` (or set
QLNUMBA_CACHE=0): Numba's on-disk cache keys a kernel on its own file only, so
kernels that inline these functions would keep the old code.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numpy.polynomial import polynomial as P

TANH_LEVELS = 12
TANH_CLAMP = 9.0


def tanh_rational_coefficients(levels=TANH_LEVELS):
    """N, D (lowest power first, in y = x²) with tanh x ≈ x N(y) / D(y), D(0) = 1."""
    num, den = np.array([2.0 * levels + 1.0]), np.array([1.0])    # the innermost level
    for k in range(levels - 1, -1, -1):                            # (2k+1) + x²/(num/den)
        num, den = P.polyadd((2 * k + 1) * num, P.polymulx(den)), num
    # now tanh x ≈ x * den / num
    return den / num[0], num / num[0]


_N, _D = tanh_rational_coefficients()
assert len(_N) == len(_D) == 7
N1, N2, N3, N4, N5, N6 = (np.float32(c) for c in _N[1:])
D1, D2, D3, D4, D5, D6 = (np.float32(c) for c in _D[1:])
ONE32, HALF32, CLAMP32 = np.float32(1.0), np.float32(0.5), np.float32(TANH_CLAMP)
ZERO32 = np.float32(0.0)
FLUSH32 = np.float32(np.finfo(np.float32).tiny / np.finfo(np.float32).eps)     # 2^-103
FLUSH64 = float(np.finfo(np.float64).tiny / np.finfo(np.float64).eps)         # 2^-970


@intrinsic
def muladd(typingctx, a, b, c):
    """a * b + c through LLVM's ``llvm.fmuladd``: one fused instruction where the CPU has
    FMA, a multiply and an add elsewhere.  Unlike fastmath, it changes nothing but the
    rounding of this one expression (NaN and inf behave as IEEE says)."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.return_type)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ty]),
                                            f"llvm.fmuladd.f{sig.return_type.bitwidth}")
        return builder.call(fn, args)
    return a(a, b, c), codegen


@njit(inline="always")
def _tanh32(x):
    x = min(max(x, -CLAMP32), CLAMP32)
    y = x * x
    num = muladd(muladd(muladd(muladd(muladd(muladd(N6, y, N5), y, N4), y, N3), y, N2), y, N1), y, ONE32)
    den = muladd(muladd(muladd(muladd(muladd(muladd(D6, y, D5), y, D4), y, D3), y, D2), y, D1), y, ONE32)
    return x * num / den


def sigmoid(x):
    """1 / (1 + e^-x)"""
    return 1.0 / (1.0 + math.exp(-x))


def tanh(x):
    return math.tanh(x)


def dsigmoid(y):
    """d sigmoid / dx written with y = sigmoid(x)"""
    return y - y * y


def dtanh(y):
    """d tanh / dx written with y = tanh(x)"""
    return 1.0 - y * y


def flush(x):
    """x, or 0 where x is nonzero and smaller in magnitude than the dtype's FLUSH level
    (smallest normal number / machine epsilon: 9.9e-32 in float32, 1.0e-292 in float64).
    NaN and inf pass.

    In BPTT over long sequences the gradients that travel back from a late loss shrink
    by a factor each step; over hundreds of steps they reach the subnormal range (below
    1.2e-38 in float32), where x86 CPUs run every multiply-add that reads or makes such
    a value through a microcode assist, 10-100x slower: an LSTM's forward and backward
    over 784 steps took 9-11x as long as with healthy gradients, GRU's 5x
    (bench/subnormal.py, before the flush).  The kernels flush the state gradients
    they carry from step to step and the δz they hand to the matrix products, so the
    slow values never spread.  Flushing at tiny / eps rather than at tiny keeps the
    products of a kept value with factors down to eps normal too.  What is lost is far
    below what float32 can add to any sum of gradient-sized terms.
    """
    return 0.0 if abs(x) < np.finfo(type(x)).tiny / np.finfo(type(x)).eps else x


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(sigmoid, inline="always")
def _sigmoid(x):
    if _is_f32(x):
        def impl(x):
            return HALF32 + HALF32 * _tanh32(HALF32 * x)
    else:
        def impl(x):
            return 1.0 / (1.0 + math.exp(-x))        # e^-x = inf for x << 0 gives 0, never NaN
    return impl


@overload(tanh, inline="always")
def _tanh(x):
    if _is_f32(x):
        def impl(x):
            return _tanh32(x)
    else:
        def impl(x):
            return math.tanh(x)
    return impl


@overload(dsigmoid, inline="always")
def _dsigmoid(y):
    def impl(y):
        return y - y * y
    return impl


@overload(dtanh, inline="always")
def _dtanh(y):
    if _is_f32(y):
        def impl(y):
            return ONE32 - y * y
    else:
        def impl(y):
            return 1.0 - y * y
    return impl


@overload(flush)                # LLVM inlines it (Numba's own inlining trips on the branch)
def _flush(x):
    if _is_f32(x):
        def impl(x):
            return ZERO32 if abs(x) < FLUSH32 else x      # NaN compares False: it passes
    else:
        def impl(x):
            return 0.0 if abs(x) < FLUSH64 else x
    return impl
