"""GRU layer, one direction, PyTorch's formulation: forward and BPTT (CPU).

Shapes legend
  B rows, T padded steps, E input features, H hidden units
  x (B,T,E)   lengths (B,) int64   out (B,T,H)
  W (3H,E)  U (3H,H)  b, b_U (3H); rows r, z, n (reset, update, new)
  state h (B,H): the initial state on entry, the final state on return
  forward's workspace (caller's buffer): ZX (B,T,3H), the input side W x_t
  saved by forward for backward (caller's buffers, reused between calls; a
    position a call does not write keeps a finite stale value that backward
    only ever multiplies by a zero gradient):
    GATES (B,T,3,H) r_t, u_t, n_t
    HN (B,T,H)      U_n h_{t-1} + b_Un (what the reset gate multiplies)
    HPREV (B,T,H)   h_{t-1}
  backward's workspace (caller's buffers, any content on entry; they end holding
    the step deltas, zero at padded positions):
    DX (B,T,3H)     δ of the pre-activations W x_t + b (rows r, z, n)
    DHN (B,T,H)     δ of U_n h_{t-1} + b_Un; for rows r, z that δ is DX's own
  bounds (P+1,) int64  row-block edges for the *_split kernels (one thread per block)
Step s of a row of length L reads position pos = s, or L-1-s with reverse.
Steps s >= L change nothing; out is zero at positions >= L.
Element-wise work runs as short loops over contiguous rows, which LLVM vectorises.
The per-step products h_{t-1} U^T and δ U run on register tiles (kernels/tiles.py; U^T and U
packed once per call, h_{t-1} and δ repacked each step): at B = 32, H = 512 (one core) they
ran at 126 and 118 GFLOP/s, against 82 and 49 with U read in place (3 MB, past L2).
"""
import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL
from .activations import dsigmoid, dtanh, flush, sigmoid, tanh
from .blas import gemm
from .tiles import blocks_of, pack_rows, rows_gemm


@njit(**JIT)
def gru_forward(out, h, ZX, GATES, HN, HPREV,
                x, lengths,
                W, U, b, b_U,
                reverse):
    B, T, E = x.shape
    H = h.shape[1]
    np.dot(x.reshape(B * T, E), W.T, ZX.reshape(B * T, 3 * H))
    UT = np.ascontiguousarray(U.T)                           # (H, 3H)
    UTpk = blocks_of(UT)                                     # U^T as tile blocks of columns
    hU = np.empty((B, 3 * H), dtype=h.dtype)                 # h_{t-1} U^T, one row per sequence
    hpk = pack_rows(h)                                       # h_{t-1} as tile panels (kernels/tiles.py)
    hu = np.empty(3 * H, dtype=h.dtype)                      # U h_{t-1} + b_U of one row
    for bb in range(B):
        out[bb, lengths[bb]:, :] = 0.0
    for s in range(lengths.max()):
        rows_gemm(hU, hpk, h, UTpk, UT)                      # h_{t-1} U^T, all rows
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            zx, hu_row = ZX[bb, pos], hU[bb]
            gr, gu, gn = GATES[bb, pos, 0], GATES[bb, pos, 1], GATES[bb, pos, 2]
            hrow, hprev, hn, orow = h[bb], HPREV[bb, pos], HN[bb, pos], out[bb, pos]
            for j in range(3 * H):                              # one output array per loop
                hu[j] = hu_row[j] + b_U[j]                      # U h_{t-1} + b_U
            for j in range(H):
                gr[j] = sigmoid(zx[j] + b[j] + hu[j])           # r_t
            for j in range(H):
                gu[j] = sigmoid(zx[H + j] + b[H + j] + hu[H + j])   # u_t
            for j in range(H):
                hn[j] = hu[2 * H + j]
            for j in range(H):                                  # n_t = tanh(W_n x + b_n + r (U_n h + b_Un))
                gn[j] = tanh(zx[2 * H + j] + b[2 * H + j] + gr[j] * hn[j])
            for j in range(H):
                hprev[j] = hrow[j]
            for j in range(H):
                hrow[j] = (1 - gu[j]) * gn[j] + gu[j] * hprev[j]   # h_t = (1-u) n + u h_{t-1}
            for j in range(H):
                orow[j] = hrow[j]


@njit(**JIT)
def gru_backward(dx, dW, dU, db, db_U, dh, DX, DHN,
                 dout, x, lengths, GATES, HN, HPREV,
                 W, U,
                 reverse):
    """BPTT of ``gru_forward``.

    dh (B,H) is the running state gradient: on entry w.r.t. the final h, on
    return w.r.t. the initial h.  DX, DHN are workspace (legend).  Every other
    d* buffer is accumulated into.
    """
    B, T, E = x.shape
    H = dh.shape[1]
    for bb in range(B):
        DX[bb, lengths[bb]:, :] = 0.0                # padded steps add nothing to the sums below
        DHN[bb, lengths[bb]:, :] = 0.0
    DH_step = np.zeros((B, 3 * H), dtype=dh.dtype)   # δ of U h_{t-1} + b_U of this step, by row
    dhU = np.empty((B, H), dtype=dh.dtype)           # δ U (U^T δ of each row), one row per sequence
    dpk = pack_rows(DH_step)                         # DH_step as tile panels
    Upk = blocks_of(U)                               # U as tile blocks of columns
    dht = np.empty(H, dtype=dh.dtype)                # δh_t of one row
    for s in range(lengths.max() - 1, -1, -1):
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            gr, gu, gn = GATES[bb, pos, 0], GATES[bb, pos, 1], GATES[bb, pos, 2]
            hn, hprev, drow, dhrow = HN[bb, pos], HPREV[bb, pos], dout[bb, pos], dh[bb]
            dxr, dhs, dhn = DX[bb, pos], DH_step[bb], DHN[bb, pos]
            dr, du, dpn = dxr[:H], dxr[H:2 * H], dxr[2 * H:]
            # one output array per loop, so that LLVM vectorises each (few alias checks);
            # flush (see activations): these feed every product below and the carry
            for j in range(H):
                dht[j] = drow[j] + dhrow[j]                 # δh_t: δout_t + the carry
            for j in range(H):                              # h_t = (1 - u) n + u h_{t-1},
                dpn[j] = flush(dht[j] * (1 - gu[j]) * dtanh(gn[j]))   # n = tanh(W_n x + b_n + r hn)
            for j in range(H):
                dhn[j] = flush(dpn[j] * gr[j])              # hn = U_n h_{t-1} + b_Un
            for j in range(H):
                dr[j] = flush(dpn[j] * hn[j] * dsigmoid(gr[j]))      # r = σ(..)
            for j in range(H):
                du[j] = flush(dht[j] * (hprev[j] - gn[j]) * dsigmoid(gu[j]))   # u = σ(..)
            for j in range(H):
                dhrow[j] = dht[j] * gu[j]                   # + U^T δ below
            for j in range(2 * H):                          # r, u: U h_{t-1} sits beside W x_t
                dhs[j] = dxr[j]
            for j in range(H):
                dhs[2 * H + j] = dhn[j]
        rows_gemm(dhU, dpk, DH_step, Upk, U)         # U^T δ of every row
        for bb in range(B):
            if s < lengths[bb]:
                for j in range(H):
                    dh[bb, j] = flush(dh[bb, j] + dhU[bb, j])
                DH_step[bb, :] = 0.0
    # weight gradients: sums over steps, one matrix product each
    DX2 = DX.reshape(B * T, 3 * H)
    DHN2 = DHN.reshape(B * T, H)
    HPREV2 = HPREV.reshape(B * T, H)
    gemm(dW, DX2, x.reshape(B * T, E), True, False, True)       # W x_t + b
    sums = DX2.sum(axis=0)
    db += sums
    gemm(dU[:2 * H], DX2[:, :2 * H], HPREV2, True, False, True)  # U_r h_{t-1}, U_u h_{t-1}: DX's δ
    db_U[:2 * H] += sums[:2 * H]
    gemm(dU[2 * H:], DHN2, HPREV2, True, False, True)           # U_n h_{t-1} + b_Un
    db_U[2 * H:] += DHN2.sum(axis=0)
    gemm(dx.reshape(B * T, E), DX2, W, False, False, True)      # δx_t = W^T δ


@njit(**JIT_PARALLEL)
def gru_forward_split(out, h, ZX, GATES, HN, HPREV,
                      x, lengths,
                      W, U, b, b_U,
                      reverse, bounds):
    """``gru_forward`` on row blocks [bounds[p], bounds[p+1]) in parallel, one thread each."""
    for p in prange(len(bounds) - 1):
        r0, r1 = bounds[p], bounds[p + 1]
        gru_forward(out[r0:r1], h[r0:r1], ZX[r0:r1], GATES[r0:r1], HN[r0:r1], HPREV[r0:r1],
                    x[r0:r1], lengths[r0:r1], W, U, b, b_U, reverse)


@njit(**JIT_PARALLEL)
def gru_backward_split(dx, dW, dU, db, db_U, dh, DX, DHN,
                       dout, x, lengths, GATES, HN, HPREV,
                       W, U,
                       reverse, bounds):
    """``gru_backward`` on row blocks in parallel, weight gradients summed at the end."""
    P = len(bounds) - 1
    dW_p = np.zeros((P, dW.shape[0], dW.shape[1]), dtype=dW.dtype)
    dU_p = np.zeros((P, dU.shape[0], dU.shape[1]), dtype=dU.dtype)
    db_p = np.zeros((P, db.shape[0]), dtype=db.dtype)
    db_U_p = np.zeros((P, db_U.shape[0]), dtype=db_U.dtype)
    for p in prange(P):
        r0, r1 = bounds[p], bounds[p + 1]
        gru_backward(dx[r0:r1], dW_p[p], dU_p[p], db_p[p], db_U_p[p], dh[r0:r1], DX[r0:r1], DHN[r0:r1],
                     dout[r0:r1], x[r0:r1], lengths[r0:r1], GATES[r0:r1], HN[r0:r1], HPREV[r0:r1],
                     W, U, reverse)
    for p in range(P):
        dW += dW_p[p]
        dU += dU_p[p]
        db += db_p[p]
        db_U += db_U_p[p]
