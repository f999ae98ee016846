"""GRU layer, one direction, PyTorch's formulation: forward and BPTT (CPU).

Shapes legend
  B rows, T padded steps, E input features, H hidden units
  x (B,T,E)   lengths (B,) int64   out (B,T,H)
  W (3H,E)  U (3H,H)  b, b_U (3H); rows r, z, n (reset, update, new)
  state h (B,H): the initial state on entry, the final state on return
  saved by forward for backward (the caller allocates them zeroed):
    ZX (B,T,3H)     input side W x_t + b
    GATES (B,T,3,H) r_t, u_t, n_t
    HN (B,T,H)      U_n h_{t-1} + b_Un (what the reset gate multiplies)
    HPREV (B,T,H)   h_{t-1}
Step s of a row of length L reads position pos = s, or L-1-s with reverse.
Steps s >= L change nothing; out is zero at positions >= L.
"""
import numpy as np
from numba import njit

from ..config import JIT
from .activations import dsigmoid, dtanh, sigmoid, tanh


@njit(**JIT)
def gru_forward(out, h, ZX, GATES, HN, HPREV,
                x, lengths,
                W, U, b, b_U,
                reverse):
    B, T, E = x.shape
    H = h.shape[1]
    np.dot(x.reshape(B * T, E), W.T, ZX.reshape(B * T, 3 * H))
    hU = np.empty((B, 3 * H), dtype=h.dtype)
    for bb in range(B):
        out[bb, lengths[bb]:, :] = 0.0
        for t in range(lengths[bb]):
            for j in range(3 * H):
                ZX[bb, t, j] += b[j]
    for s in range(lengths.max()):
        np.dot(h, U.T, hU)
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            for j in range(H):
                hprev = h[bb, j]
                r = sigmoid(ZX[bb, pos, j] + hU[bb, j] + b_U[j])                 # r_t
                u = sigmoid(ZX[bb, pos, H + j] + hU[bb, H + j] + b_U[H + j])     # u_t
                hn = hU[bb, 2 * H + j] + b_U[2 * H + j]
                nn = tanh(ZX[bb, pos, 2 * H + j] + r * hn)                       # n_t
                hj = (1.0 - u) * nn + u * hprev                                  # h_t
                GATES[bb, pos, 0, j] = r
                GATES[bb, pos, 1, j] = u
                GATES[bb, pos, 2, j] = nn
                HN[bb, pos, j] = hn
                HPREV[bb, pos, j] = hprev
                h[bb, j] = hj
                out[bb, pos, j] = hj


@njit(**JIT)
def gru_backward(dx, dW, dU, db, db_U, dh,
                 dout, x, lengths, GATES, HN, HPREV,
                 W, U,
                 reverse):
    """BPTT of ``gru_forward``.

    dh (B,H) is the running state gradient: on entry w.r.t. the final h, on
    return w.r.t. the initial h.  Every other d* buffer is accumulated into.
    """
    B, T, E = x.shape
    H = dh.shape[1]
    DX = np.zeros((B, T, 3 * H), dtype=dh.dtype)     # δ of the input-side pre-activations
    DHID = np.zeros((B, T, 3 * H), dtype=dh.dtype)   # δ of U h_{t-1} + b_U
    DH_step = np.zeros((B, 3 * H), dtype=dh.dtype)
    dhU = np.empty((B, H), dtype=dh.dtype)
    for s in range(lengths.max() - 1, -1, -1):
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            for j in range(H):
                r = GATES[bb, pos, 0, j]
                u = GATES[bb, pos, 1, j]
                nn = GATES[bb, pos, 2, j]
                dht = dout[bb, pos, j] + dh[bb, j]
                # h_t = (1 - u) n + u h_{t-1}
                dn = dht * (1.0 - u)
                du = dht * (HPREV[bb, pos, j] - nn)
                dh[bb, j] = dht * u                          # + U^T δ below
                dpn = dn * dtanh(nn)                         # n = tanh(W_n x + b_n + r hn)
                dpr = dpn * HN[bb, pos, j] * dsigmoid(r)
                dpu = du * dsigmoid(u)
                DX[bb, pos, j] = dpr
                DX[bb, pos, H + j] = dpu
                DX[bb, pos, 2 * H + j] = dpn
                DH_step[bb, j] = dpr
                DH_step[bb, H + j] = dpu
                DH_step[bb, 2 * H + j] = dpn * r
            DHID[bb, pos, :] = DH_step[bb, :]
        np.dot(DH_step, U, dhU)
        for bb in range(B):
            if s < lengths[bb]:
                for j in range(H):
                    dh[bb, j] += dhU[bb, j]
                DH_step[bb, :] = 0.0
    DX2 = DX.reshape(B * T, 3 * H)
    DH2 = DHID.reshape(B * T, 3 * H)
    dW += np.dot(DX2.T, x.reshape(B * T, E))
    db += DX2.sum(axis=0)
    dU += np.dot(DH2.T, HPREV.reshape(B * T, H))
    db_U += DH2.sum(axis=0)
    dx += np.dot(DX2, W).reshape(B, T, E)
