"""QL-LSTM recurrent layer, one direction: forward and BPTT (CPU).

One code path, two switches (see docs/model.md):
  psug off, hgr off  standard LSTM        psug on, hgr off  PSUG only
  psug off, hgr on   HGR-ASC only         psug on, hgr on   QL-LSTM

Shapes legend
  B rows, T padded steps, E input features, H hidden units, K block length
  G   = H with psug (one shared pre-activation z), 4H without (rows i, f, g, o)
  NB  = (T + K - 1) // K, the most blocks one row can close in one call
  x (B,T,E)   lengths (B,) int64   out (B,T,H)
  W (G,E)  U (G,H)  b (G)  gamma, beta (4,H)  V_s, V_m (H,H)  b_r (H)
  state h, c, m, a (B,H) and n (B,) int64: the initial state on entry, the
    final state on return (updated in place)
  saved by forward for backward (caller's buffers, reused between calls; a
    position a call does not write keeps a finite stale value that backward
    only ever multiplies by a zero gradient):
    Z (B,T,G)       with psug z_t (the shared pre-activation); without, only x_t W^T
                    (backward reads Z only for δγ)
    GATES (B,T,4,H) gate values i, f, g, o
    C, CPREV, HPREV (B,T,H)  c_t, c_{t-1}, h_{t-1}
    MBLK (B,NB+1,H) the memory each block started from (MBLK[:,0] = m0),
                    MBLK[:,j+1] = the memory after close j
    SBLK, RBLK (B,NB,H)  summary s and gate r of each block close
  bounds (P+1,) int64  row-block edges for the *_split kernels (one thread per block)
Step s of a row of length L reads position pos = s, or L-1-s with reverse.
Steps s >= L change nothing; out is zero at positions >= L.
The element-wise work is written as short loops over contiguous rows of H values
(few arrays per loop) so that LLVM vectorises them.
The per-step products h_{t-1} U^T and δz U run on register tiles (kernels/tiles.py: U^T and
U packed once per call, h_{t-1} and δz repacked each step), faster than BLAS at these thin shapes.
Block bookkeeping needs no saved flags: with n0 the row's initial n, step s
closes a block iff (n0 + s + 1) % K == 0, and that close is number
(n0 + s + 1) // K - 1.
"""
import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL
from .activations import dsigmoid, dtanh, flush, sigmoid, tanh
from .tiles import blocks_of, pack_rows, rows_gemm


@njit(**JIT)
def recurrent_forward(out, h, c, m, a, n, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                      x, lengths,
                      W, U, b, gamma, beta, V_s, V_m, b_r,
                      K, psug, hgr, reverse):
    B, T, E = x.shape
    H = h.shape[1]
    G = Z.shape[2]
    # input projection of every step at once: Z = x W^T (the step loop adds U h + b)
    np.dot(x.reshape(B * T, E), W.T, Z.reshape(B * T, G))
    UT = np.ascontiguousarray(U.T)                # (H, G)
    UTpk = blocks_of(UT)                          # U^T as tile blocks of columns
    hU = np.empty((B, G), dtype=h.dtype)          # h_{t-1} U^T, one row per sequence
    hpk = pack_rows(h)                            # h_{t-1} as tile panels
    zbuf = np.empty(G, dtype=h.dtype)             # z_t of one row without psug (not kept)
    th = np.empty(H, dtype=h.dtype)               # tanh(c_t) of one row
    S_close = np.empty((B, H), dtype=h.dtype)     # rows closing a block this step:
    M_close = np.empty((B, H), dtype=h.dtype)     #   their summary s and memory m,
    P_close = np.empty((B, H), dtype=h.dtype)     #   V_s s
    Q_close = np.empty((B, H), dtype=h.dtype)     #   V_m m
    rows_close = np.empty(B, dtype=np.int64)
    n_closed = np.zeros(B, dtype=np.int64)
    for bb in range(B):
        out[bb, lengths[bb]:, :] = 0.0
        if hgr:
            MBLK[bb, 0, :] = m[bb, :]
    steps = lengths.max()
    for s in range(steps):
        rows_gemm(hU, hpk, h, UTpk, UT)                       # h_{t-1} U^T, all rows
        nc = 0
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            xw, hu = Z[bb, pos], hU[bb]
            z = xw if psug else zbuf                              # z_t is kept in Z with psug only
            for j in range(G):                                    # (backward needs it for δγ)
                z[j] = xw[j] + hu[j] + b[j]                       # z_t = W x_t + U h_{t-1} + b
            gt = GATES[bb, pos]                                   # (4, H): i, f, g, o
            if psug:                                              # gate_k = act(γ_k z + β_k)
                for j in range(H):
                    gt[0, j] = sigmoid(gamma[0, j] * z[j] + beta[0, j])
                for j in range(H):
                    gt[1, j] = sigmoid(gamma[1, j] * z[j] + beta[1, j])
                for j in range(H):
                    gt[2, j] = tanh(gamma[2, j] * z[j] + beta[2, j])
                for j in range(H):
                    gt[3, j] = sigmoid(gamma[3, j] * z[j] + beta[3, j])
            else:                                                 # gate_k = act(k-th slice of z)
                for j in range(H):
                    gt[0, j] = sigmoid(z[j])
                for j in range(H):
                    gt[1, j] = sigmoid(z[H + j])
                for j in range(H):
                    gt[2, j] = tanh(z[2 * H + j])
                for j in range(H):
                    gt[3, j] = sigmoid(z[3 * H + j])
            hrow, crow = h[bb], c[bb]
            cprev, hprev, ct = CPREV[bb, pos], HPREV[bb, pos], C[bb, pos]
            for j in range(H):
                cprev[j] = crow[j]
                hprev[j] = hrow[j]
            for j in range(H):
                ct[j] = gt[1, j] * cprev[j] + gt[0, j] * gt[2, j]  # c_t = f c_{t-1} + i g
                crow[j] = ct[j]
            for j in range(H):
                th[j] = tanh(ct[j])
            orow = out[bb, pos]
            if hgr:
                mrow, arow = m[bb], a[bb]
                for j in range(H):
                    hhat = gt[3, j] * th[j]                       # ĥ_t = o tanh(c_t)
                    arow[j] += hhat                               # a += ĥ_t
                    orow[j] = hhat + mrow[j]                      # h_t = ĥ_t + m
                    hrow[j] = orow[j]
                n[bb] += 1
                if n[bb] == K:                                    # the block closes after its K-th step
                    for j in range(H):
                        S_close[nc, j] = arow[j] / K              # s = a / K
                        M_close[nc, j] = mrow[j]
                    rows_close[nc] = bb
                    nc += 1
            else:
                for j in range(H):
                    orow[j] = gt[3, j] * th[j]                    # h_t = ĥ_t = o tanh(c_t)
                    hrow[j] = orow[j]
        if nc > 0:
            np.dot(S_close[:nc], V_s.T, P_close[:nc])
            np.dot(M_close[:nc], V_m.T, Q_close[:nc])
            for q in range(nc):
                bb = rows_close[q]
                jb = n_closed[bb]
                for j in range(H):
                    r = sigmoid(P_close[q, j] + Q_close[q, j] + b_r[j])  # r = σ(V_s s + V_m m + b_r)
                    sv = S_close[q, j]
                    mj = r * m[bb, j] + (1 - r) * sv                    # m = r m + (1-r) s
                    SBLK[bb, jb, j] = sv
                    RBLK[bb, jb, j] = r
                    MBLK[bb, jb + 1, j] = mj
                    m[bb, j] = mj
                    a[bb, j] = 0.0
                n[bb] = 0
                n_closed[bb] = jb + 1


@njit(**JIT)
def recurrent_backward(dx, dW, dU, db, dgamma, dbeta, dV_s, dV_m, db_r, dh, dc, dm, da, DZ,
                       dout, x, lengths, n0, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                       W, U, gamma, V_s, V_m,
                       K, psug, hgr, reverse):
    """BPTT of ``recurrent_forward``.

    dh, dc, dm, da (B,H) are the running state gradients: on entry the
    gradient of the loss w.r.t. the final state, on return w.r.t. the initial
    state.  DZ (B,T,G) is workspace (any content on entry): it ends holding
    δz_t of every step, zero at padded positions.  Every other d* buffer is
    accumulated into.
    """
    B, T, E = x.shape
    H = dh.shape[1]
    G = Z.shape[2]
    NB = SBLK.shape[1]
    for bb in range(B):
        DZ[bb, lengths[bb]:, :] = 0.0               # padded steps add nothing to the sums below
    DZ_step = np.zeros((B, G), dtype=dh.dtype)      # δz of this step, gathered by row
    dhU = np.empty((B, H), dtype=dh.dtype)          # δz U (U^T δz of each row), one row per sequence
    dpk = pack_rows(DZ_step)                        # DZ_step as tile panels
    Upk = blocks_of(U)                              # U as tile blocks of columns
    dhhat = np.empty(H, dtype=dh.dtype)             # δĥ_t of one row
    th = np.empty(H, dtype=dh.dtype)                # tanh(c_t) of one row
    dpre = np.empty((4, H), dtype=dh.dtype)         # δ of the four gate pre-activations of one row
    DP = np.zeros((B, NB, H), dtype=dh.dtype)       # δ(gate pre-activation) of every block close
    DP_close = np.empty((B, H), dtype=dh.dtype)
    dm_close = np.empty((B, H), dtype=dh.dtype)
    ds_close = np.empty((B, H), dtype=dh.dtype)
    rows_close = np.empty(B, dtype=np.int64)
    steps = lengths.max()
    for s in range(steps - 1, -1, -1):
        # 1) block closes at this step: their rule comes first walking backward
        nc = 0
        if hgr:
            for bb in range(B):
                if s >= lengths[bb] or (n0[bb] + s + 1) % K != 0:
                    continue
                jb = (n0[bb] + s + 1) // K - 1
                for j in range(H):
                    r = RBLK[bb, jb, j]
                    dm_after = dm[bb, j]                          # δm' of  m' = r m + (1-r) s
                    dr = dm_after * (MBLK[bb, jb, j] - SBLK[bb, jb, j])
                    dp = flush(dr * dsigmoid(r))                  # r = σ(p)
                    DP[bb, jb, j] = dp
                    DP_close[nc, j] = dp
                    dm[bb, j] = dm_after * r                      # + V_m^T δp below
                    da[bb, j] = dm_after * (1 - r)                # δs, + V_s^T δp below
                rows_close[nc] = bb
                nc += 1
        if nc > 0:
            np.dot(DP_close[:nc], V_m, dm_close[:nc])
            np.dot(DP_close[:nc], V_s, ds_close[:nc])
            for q in range(nc):
                bb = rows_close[q]
                for j in range(H):
                    dm[bb, j] = flush(dm[bb, j] + dm_close[q, j])   # the carries: see flush
                    # s = a / K, and a restarted from 0 after the close: the running δa is replaced
                    da[bb, j] = flush((da[bb, j] + ds_close[q, j]) / K)
        # 2) the step itself
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                continue
            pos = L - 1 - s if reverse else s
            gt, drow, dhrow = GATES[bb, pos], dout[bb, pos], dh[bb]
            if hgr:                                               # h_t = ĥ_t + m  and  a += ĥ_t
                dmrow, darow = dm[bb], da[bb]
                for j in range(H):
                    dht = drow[j] + dhrow[j]                      # δh_t = δout_t + U^T δz_{t+1}
                    dmrow[j] += dht
                    dhhat[j] = dht + darow[j]
            else:
                for j in range(H):
                    dhhat[j] = drow[j] + dhrow[j]
            ct, cprev, dcrow = C[bb, pos], CPREV[bb, pos], dc[bb]
            for j in range(H):
                th[j] = tanh(ct[j])
            for j in range(H):                                    # ĥ_t = o tanh(c_t)
                dpre[3, j] = dhhat[j] * th[j] * dsigmoid(gt[3, j])
                dcrow[j] += dhhat[j] * gt[3, j] * dtanh(th[j])
            for j in range(H):                                    # c_t = f c_{t-1} + i g
                dct = dcrow[j]
                dpre[0, j] = dct * gt[2, j] * dsigmoid(gt[0, j])
                dpre[1, j] = dct * cprev[j] * dsigmoid(gt[1, j])
                dpre[2, j] = dct * gt[0, j] * dtanh(gt[2, j])
                dcrow[j] = flush(dct * gt[1, j])                  # δc_{t-1} (flush: see activations)
            dz = DZ_step[bb]
            if psug:                                              # gate_k = act(γ_k z + β_k)
                z = Z[bb, pos]
                for k in range(4):
                    for j in range(H):
                        dz[j] += gamma[k, j] * dpre[k, j]
                        dgamma[k, j] += dpre[k, j] * z[j]
                        dbeta[k, j] += dpre[k, j]
            else:
                for k in range(4):
                    for j in range(H):
                        dz[k * H + j] = dpre[k, j]
            for k in range(G):                                    # δz feeds every product below
                dz[k] = flush(dz[k])
            DZ[bb, pos, :] = dz
        # δh_{t-1} = U^T δz_t for the rows that stepped; idle rows keep theirs
        rows_gemm(dhU, dpk, DZ_step, Upk, U)
        for bb in range(B):
            if s < lengths[bb]:
                for j in range(H):
                    dh[bb, j] = flush(dhU[bb, j])
                DZ_step[bb, :] = 0.0
    # weight gradients: sums over steps, one matrix product each
    DZ2 = DZ.reshape(B * T, G)
    dW += np.dot(DZ2.T, x.reshape(B * T, E))               # z = W x + ...
    dU += np.dot(DZ2.T, HPREV.reshape(B * T, H))           # z = ... + U h_{t-1} + ...
    db += DZ2.sum(axis=0)
    dx += np.dot(DZ2, W).reshape(B, T, E)
    if hgr:
        DP2 = DP.reshape(B * NB, H)
        dV_s += np.dot(DP2.T, SBLK.reshape(B * NB, H))    # p = V_s s + V_m m + b_r
        dV_m += np.dot(DP2.T, np.ascontiguousarray(MBLK[:, :NB, :]).reshape(B * NB, H))
        db_r += DP2.sum(axis=0)


@njit(**JIT_PARALLEL)
def recurrent_forward_split(out, h, c, m, a, n, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                            x, lengths,
                            W, U, b, gamma, beta, V_s, V_m, b_r,
                            K, psug, hgr, reverse, bounds):
    """``recurrent_forward`` on row blocks [bounds[p], bounds[p+1]) in parallel, one thread each.

    Rows never interact, so each thread runs the serial kernel on its own rows
    for the whole sequence: no synchronisation between steps.
    """
    for p in prange(len(bounds) - 1):
        r0, r1 = bounds[p], bounds[p + 1]
        recurrent_forward(out[r0:r1], h[r0:r1], c[r0:r1], m[r0:r1], a[r0:r1], n[r0:r1],
                          Z[r0:r1], GATES[r0:r1], C[r0:r1], CPREV[r0:r1], HPREV[r0:r1],
                          MBLK[r0:r1], SBLK[r0:r1], RBLK[r0:r1],
                          x[r0:r1], lengths[r0:r1],
                          W, U, b, gamma, beta, V_s, V_m, b_r,
                          K, psug, hgr, reverse)


@njit(**JIT_PARALLEL)
def recurrent_backward_split(dx, dW, dU, db, dgamma, dbeta, dV_s, dV_m, db_r, dh, dc, dm, da, DZ,
                             dout, x, lengths, n0, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                             W, U, gamma, V_s, V_m,
                             K, psug, hgr, reverse, bounds):
    """``recurrent_backward`` on row blocks in parallel; each thread sums its weight
    gradients into a buffer of its own, and the buffers are added at the end."""
    P = len(bounds) - 1
    dW_p = np.zeros((P, dW.shape[0], dW.shape[1]), dtype=dW.dtype)
    dU_p = np.zeros((P, dU.shape[0], dU.shape[1]), dtype=dU.dtype)
    db_p = np.zeros((P, db.shape[0]), dtype=db.dtype)
    dgamma_p = np.zeros((P, dgamma.shape[0], dgamma.shape[1]), dtype=dgamma.dtype)
    dbeta_p = np.zeros((P, dbeta.shape[0], dbeta.shape[1]), dtype=dbeta.dtype)
    dV_s_p = np.zeros((P, dV_s.shape[0], dV_s.shape[1]), dtype=dV_s.dtype)
    dV_m_p = np.zeros((P, dV_m.shape[0], dV_m.shape[1]), dtype=dV_m.dtype)
    db_r_p = np.zeros((P, db_r.shape[0]), dtype=db_r.dtype)
    for p in prange(P):
        r0, r1 = bounds[p], bounds[p + 1]
        recurrent_backward(dx[r0:r1], dW_p[p], dU_p[p], db_p[p], dgamma_p[p], dbeta_p[p],
                           dV_s_p[p], dV_m_p[p], db_r_p[p],
                           dh[r0:r1], dc[r0:r1], dm[r0:r1], da[r0:r1], DZ[r0:r1],
                           dout[r0:r1], x[r0:r1], lengths[r0:r1], n0[r0:r1],
                           Z[r0:r1], GATES[r0:r1], C[r0:r1], CPREV[r0:r1], HPREV[r0:r1],
                           MBLK[r0:r1], SBLK[r0:r1], RBLK[r0:r1],
                           W, U, gamma, V_s, V_m,
                           K, psug, hgr, reverse)
    for p in range(P):
        dW += dW_p[p]
        dU += dU_p[p]
        db += db_p[p]
        dgamma += dgamma_p[p]
        dbeta += dbeta_p[p]
        dV_s += dV_s_p[p]
        dV_m += dV_m_p[p]
        db_r += db_r_p[p]
