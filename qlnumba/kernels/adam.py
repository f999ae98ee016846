"""Adam with bias correction and decoupled weight decay (AdamW), on flat buffers (CPU).

Shapes legend
  P parameters of one tensor, flattened: p, g, m, v (P,)
  consts (8,) in the parameters' dtype, so float32 work stays float32 and vectorises:
    lr, beta1, beta2, eps, weight_decay, 1 - beta1^t, 1 - beta2^t, grad_scale
"""
import math

from numba import njit

from ..config import JIT


@njit(**JIT)
def sum_of_squares(g):
    total = 0.0
    for i in range(g.size):
        total += g[i] * g[i]
    return total


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
