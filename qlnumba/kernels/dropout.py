"""Inverted dropout from 16-bit random draws: forward and backward (CPU).

Shapes legend
  n values of one array, flattened: out, x, dx (n,) in the model's dtype; bits (n,) uint16
  threshold: int in [0, 65535]; scale: the model's dtype
A value is kept where bits >= threshold, and then multiplied by scale; else it is 0.
"""
from numba import njit

from ..config import JIT


@njit(**JIT)
def dropout_forward(out, x, bits, threshold, scale):
    """out = x * scale where bits >= threshold, else 0 (out may be x itself)."""
    zero = scale - scale                               # 0 in the model's dtype
    for i in range(x.size):
        out[i] = x[i] * (scale if bits[i] >= threshold else zero)


@njit(**JIT)
def dropout_backward(dx, bits, threshold, scale):
    """dx (the gradient w.r.t. out) becomes the gradient w.r.t. x, in place: out = x * scale
    or 0 in ``dropout_forward``, so dx * scale or 0."""
    dropout_forward(dx, dx, bits, threshold, scale)
