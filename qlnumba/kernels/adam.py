"""Adam with bias correction and decoupled weight decay (AdamW), on flat buffers (CPU).

Shapes legend
  P parameters of one tensor, flattened: p, g, m, v (P,)
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
def adam_step(p, m, v, g, lr, beta1, beta2, eps, weight_decay, t, grad_scale):
    """One AdamW step at step count ``t`` (1-based); ``g`` is multiplied by ``grad_scale`` (clipping)."""
    c1 = 1.0 - beta1 ** t                                 # bias corrections
    c2 = 1.0 - beta2 ** t
    for i in range(p.size):
        gi = g[i] * grad_scale
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        update = (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)
        p[i] -= lr * (update + weight_decay * p[i])      # decoupled decay: not through m, v
