"""Embedding lookup with padding id 0: forward and scatter-add backward (CPU).

Shapes legend
  B rows, T steps, V vocabulary size, E embedding width
  ids (B,T) int64 in [0, V)   table (V,E)   out (B,T,E)
Id 0 is padding: it embeds to zeros and receives no gradient.
"""
from numba import njit

from ..config import JIT


@njit(**JIT)
def embedding_forward(out, ids, table):
    B, T = ids.shape
    for bb in range(B):
        for t in range(T):
            k = ids[bb, t]
            if k == 0:
                out[bb, t, :] = 0.0
            else:
                out[bb, t, :] = table[k, :]


@njit(**JIT)
def embedding_backward(dtable, dout, ids):
    B, T = ids.shape
    for bb in range(B):
        for t in range(T):
            k = ids[bb, t]
            if k != 0:
                dtable[k, :] += dout[bb, t, :]          # out[b,t] = table[k]: scatter-add
