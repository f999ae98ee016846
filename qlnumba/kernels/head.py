"""Linear head with softmax cross-entropy: forward and backward (CPU).

Shapes legend
  N rows (sequences, or valid steps for a language model), D features, C classes
  h (N,D)  W (C,D)  b (C)  targets (N,) int64 in [0, C)
  probs (N,C) softmax of the logits, saved for backward
  losses (N,) each row's -log p[target]
  weights (N,): each row's share of the loss (1/N each for the mean; w_i / N with sample weights)
"""
import math

import numpy as np
from numba import njit

from ..config import JIT


@njit(**JIT)
def linear_xent_forward(probs, losses, h, targets, W, b):
    N, C = probs.shape
    np.dot(h, W.T, probs)                                 # logits = h W^T + b
    for i in range(N):
        top = -np.inf
        for k in range(C):
            probs[i, k] += b[k]
            top = max(top, probs[i, k])
        total = 0.0
        for k in range(C):                                # softmax, shifted by the max
            e = math.exp(probs[i, k] - top)
            probs[i, k] = e
            total += e
        for k in range(C):
            probs[i, k] /= total
        losses[i] = -math.log(max(probs[i, targets[i]], 1e-300))


@njit(**JIT)
def linear_xent_backward(dh, dW, db, probs, h, targets, W, weights):
    N, C = probs.shape
    dlogits = probs.copy()                                # δlogits = (p - onehot) * weights[i]
    for i in range(N):
        dlogits[i, targets[i]] -= 1.0
        for k in range(C):
            dlogits[i, k] *= weights[i]
    dW += np.dot(dlogits.T, h)
    db += dlogits.sum(axis=0)
    dh += np.dot(dlogits, W)
