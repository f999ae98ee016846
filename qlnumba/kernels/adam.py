"""Adam with bias correction and decoupled weight decay (AdamW), on flat buffers (CPU).

Shapes legend
  P parameters of one tensor, flattened: p, g, m, v (P,)
  consts (8,) in the parameters' dtype, so float32 work stays float32 and vectorises:
    lr, beta1, beta2, eps, weight_decay, 1 - beta1^t, 1 - beta2^t, grad_scale
"""
import math

import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL


@njit(**JIT)
def sum_of_squares(g):
    """Σ g² in float64, as eight running sums: one running sum is a chain of dependent
    additions (LLVM may not reorder it without fastmath), eight chains overlap."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    n8 = g.size - g.size % 8
    for i in range(0, n8, 8):
        s0 += np.float64(g[i]) * g[i]
        s1 += np.float64(g[i + 1]) * g[i + 1]
        s2 += np.float64(g[i + 2]) * g[i + 2]
        s3 += np.float64(g[i + 3]) * g[i + 3]
        s4 += np.float64(g[i + 4]) * g[i + 4]
        s5 += np.float64(g[i + 5]) * g[i + 5]
        s6 += np.float64(g[i + 6]) * g[i + 6]
        s7 += np.float64(g[i + 7]) * g[i + 7]
    for i in range(n8, g.size):
        s0 += np.float64(g[i]) * g[i]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(**JIT_PARALLEL)
def sum_of_squares_split(g):
    """``sum_of_squares`` of eight equal parts side by side, added in order: the same result
    on any number of threads (not the same bits as one running sum)."""
    parts = np.zeros(8)
    chunk = (g.size + 7) // 8
    for k in prange(8):
        parts[k] = sum_of_squares(g[k * chunk:min(g.size, (k + 1) * chunk)])
    return ((parts[0] + parts[1]) + (parts[2] + parts[3])) + ((parts[4] + parts[5]) + (parts[6] + parts[7]))


@njit(**JIT)
def adam_step(p, m, v, g, consts):
    """One AdamW step; ``g`` is multiplied by grad_scale (clipping) first."""
    lr, beta1, beta2, eps, weight_decay = consts[0], consts[1], consts[2], consts[3], consts[4]
    c1, c2, grad_scale = consts[5], consts[6], consts[7]     # bias corrections 1 - beta^t
    one = consts[1] / consts[1]
    for i in range(p.size):
        gi = g[i] * grad_scale
        m[i] = beta1 * m[i] + (one - beta1) * gi
        v[i] = beta2 * v[i] + (one - beta2) * gi * gi
        update = (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)
        p[i] -= lr * (update + weight_decay * p[i])         # decoupled decay: not through m, v


@njit(**JIT_PARALLEL)
def adam_step_split(p, m, v, g, consts, bounds):
    """``adam_step`` on the blocks [bounds[k], bounds[k+1]) side by side (same results)."""
    for k in prange(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        adam_step(p[a:b], m[a:b], v[a:b], g[a:b], consts)
