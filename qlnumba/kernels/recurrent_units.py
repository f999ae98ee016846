"""QL-LSTM recurrent layer on P threads that split the hidden units (CPU).

The same arithmetic as ``recurrent.py`` (read that first: same arguments, same
saved buffers, always saved in full: inference runs ``recurrent_infer.py``),
reorganised for threads.  Splitting the rows of a batch gives
each thread a per-step product of B/P rows, which BLAS runs at two thirds of the
speed of a B-row one.  Here thread p owns the hidden units [u0, u1) of *every*
row instead: each step it multiplies the whole h_{t-1} (B, H) by its own packed
slice of U (the gate rows of its units), computes its units' gates, cell and
output, and waits at one spin barrier (``sync.barrier``) for the others before
the next step reads the new h.  h (and, in backward, δz) alternate between two
buffers, so one barrier per step is enough; a step where some block closes needs
a second one (the close reads every unit of a and m before any thread updates its
own).  The big products before and after the step loop are split by row blocks;
the weight gradients of the blocks are then added in a fixed order (deterministic),
except the small V_s, V_m ones, which each thread computes for its own units.

Shapes legend (besides recurrent.py's)
  P threads; ubounds (P+1,) int64 unit edges; rbounds (P+1,) int64 row edges
  Hp = u1 - u0 units of one thread; NG = G // H gate blocks (1 with psug, 4 without)
  Up (P, NG*HPMAX, H)  thread p's rows of U: gate k, unit u0+i at row k*Hp + i
  hbuf (2, B, H)       h_{t-1} and h_t, alternating by step parity
  DZbuf (2, B, G)      δz of this step and the last, alternating likewise
  flags (P*STRIDE,)    barrier counters
The caller runs exactly one Numba thread per part (``prange(P)`` with P equal to
Numba's thread count) and a part never waits on a thread that is not running.
"""
import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL
from .activations import dsigmoid, dtanh, sigmoid, tanh
from .sync import STRIDE, barrier


@njit(**JIT)
def pack_unit_rows(A, ubounds, NG):
    """(P, NG*HPMAX, cols): part p's rows k*H + u0 .. k*H + u1 of A, gate block by block."""
    P = len(ubounds) - 1
    H = A.shape[0] // NG
    hp_max = 0
    for p in range(P):
        hp_max = max(hp_max, ubounds[p + 1] - ubounds[p])
    out = np.zeros((P, NG * hp_max, A.shape[1]), dtype=A.dtype)
    for p in range(P):
        u0, u1 = ubounds[p], ubounds[p + 1]
        for k in range(NG):
            out[p, k * (u1 - u0):(k + 1) * (u1 - u0)] = A[k * H + u0:k * H + u1]
    return out


@njit(**JIT)
def _forward_part(p, P, flags, hbuf, out, h, c, m, a, n0, Z, GATES, C, CPREV, HPREV,
                  MBLK, SBLK, RBLK, x, lengths, W, Up, b, gamma, beta, V_s, V_m, b_r,
                  K, psug, hgr, reverse, rbounds, ubounds):
    B, T, E = x.shape
    H = h.shape[1]
    G = Z.shape[2]
    NG = G // H
    u0, u1 = ubounds[p], ubounds[p + 1]
    Hp = u1 - u0
    r0, r1 = rbounds[p], rbounds[p + 1]
    # this part's rows of the input projection Z = x W^T (all gate columns)
    np.dot(x[r0:r1].reshape((r1 - r0) * T, E), W.T, Z[r0:r1].reshape((r1 - r0) * T, G))
    for bb in range(B):
        out[bb, lengths[bb]:, u0:u1] = 0.0
        hbuf[0, bb, u0:u1] = h[bb, u0:u1]
        if hgr:
            MBLK[bb, 0, u0:u1] = m[bb, u0:u1]
    Upp = Up[p, :NG * Hp]                         # (NG*Hp, H)
    bp = np.empty(NG * Hp, dtype=h.dtype)         # b in Up's row order
    for k in range(NG):
        bp[k * Hp:(k + 1) * Hp] = b[k * H + u0:k * H + u1]
    gam = np.ascontiguousarray(gamma[:, u0:u1])   # (4, Hp) with psug
    bet = np.ascontiguousarray(beta[:, u0:u1])
    Vs_p = np.ascontiguousarray(V_s[u0:u1])       # (Hp, H): this part's rows of V_s, V_m
    Vm_p = np.ascontiguousarray(V_m[u0:u1])
    hUT = np.empty((NG * Hp, B), dtype=h.dtype)   # this part's rows of U h_{t-1}, one column per row
    zbuf = np.empty(NG * Hp, dtype=h.dtype)       # z_t of one row without psug (not kept)
    th = np.empty(Hp, dtype=h.dtype)
    S_close = np.empty((B, H), dtype=h.dtype)     # every unit of s and m of the closing rows
    M_close = np.empty((B, H), dtype=h.dtype)
    P_close = np.empty((B, Hp), dtype=h.dtype)    # this part's units of V_s s, V_m m
    Q_close = np.empty((B, Hp), dtype=h.dtype)
    rows_close = np.empty(B, dtype=np.int64)
    nbar = 1
    barrier(flags, p, P, nbar)                    # Z and hbuf[0] complete
    steps = lengths.max()
    # Loops below run over 1-D views of this part's units, indexed from 0: LLVM
    # vectorises those, not loops indexed u0..u1 into whole rows.
    for s in range(steps):
        hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
        np.dot(Upp, hcur.T, hUT)                  # U h^T: ~1.4x faster in BLAS than h U^T
        for bb in range(B):
            L = lengths[bb]
            hprev_u, hnext_u = hcur[bb, u0:u1], hnext[bb, u0:u1]
            if s >= L:
                hnext_u[:] = hprev_u
                continue
            pos = L - 1 - s if reverse else s
            zrow, hu = Z[bb, pos], hUT[:, bb]                     # hu: strided, read once
            gi, gf = GATES[bb, pos, 0, u0:u1], GATES[bb, pos, 1, u0:u1]
            gg, go = GATES[bb, pos, 2, u0:u1], GATES[bb, pos, 3, u0:u1]
            if psug:                                              # gate_k = act(γ_k z + β_k)
                z = zrow[u0:u1]                                   # z_t is saved for δγ
                for i in range(Hp):
                    z[i] = z[i] + hu[i] + bp[i]                   # z_t = W x_t + U h_{t-1} + b
                for i in range(Hp):
                    gi[i] = sigmoid(gam[0, i] * z[i] + bet[0, i])
                for i in range(Hp):
                    gf[i] = sigmoid(gam[1, i] * z[i] + bet[1, i])
                for i in range(Hp):
                    gg[i] = tanh(gam[2, i] * z[i] + bet[2, i])
                for i in range(Hp):
                    go[i] = sigmoid(gam[3, i] * z[i] + bet[3, i])
            else:                                                 # gate_k = act(k-th slice of z)
                zt = zbuf                                         # z_t assembled here (not kept)
                for k in range(4):
                    xk, hk = zrow[k * H + u0:k * H + u1], hu[k * Hp:(k + 1) * Hp]
                    zk, bk = zt[k * Hp:(k + 1) * Hp], bp[k * Hp:(k + 1) * Hp]
                    for i in range(Hp):
                        zk[i] = xk[i] + hk[i] + bk[i]
                z0, z1, z2, z3 = zt[:Hp], zt[Hp:2 * Hp], zt[2 * Hp:3 * Hp], zt[3 * Hp:]
                for i in range(Hp):
                    gi[i] = sigmoid(z0[i])
                for i in range(Hp):
                    gf[i] = sigmoid(z1[i])
                for i in range(Hp):
                    gg[i] = tanh(z2[i])
                for i in range(Hp):
                    go[i] = sigmoid(z3[i])
            crow = c[bb, u0:u1]
            cprev, hprev, ct = CPREV[bb, pos, u0:u1], HPREV[bb, pos, u0:u1], C[bb, pos, u0:u1]
            for i in range(Hp):
                cprev[i] = crow[i]
                hprev[i] = hprev_u[i]
            for i in range(Hp):
                ct[i] = gf[i] * cprev[i] + gi[i] * gg[i]          # c_t = f c_{t-1} + i g
                crow[i] = ct[i]
            for i in range(Hp):
                th[i] = tanh(crow[i])
            orow = out[bb, pos, u0:u1]
            if hgr:
                mrow, arow = m[bb, u0:u1], a[bb, u0:u1]
                for i in range(Hp):
                    hhat = go[i] * th[i]                          # ĥ_t = o tanh(c_t)
                    arow[i] += hhat                               # a += ĥ_t
                    orow[i] = hhat + mrow[i]                      # h_t = ĥ_t + m
                    hnext_u[i] = orow[i]
            else:
                for i in range(Hp):
                    orow[i] = go[i] * th[i]                       # h_t = o tanh(c_t)
                    hnext_u[i] = orow[i]
        nbar += 1
        barrier(flags, p, P, nbar)                # hnext complete; a complete for the closes
        if not hgr:
            continue
        nc = 0
        for bb in range(B):
            if s < lengths[bb] and (n0[bb] + s + 1) % K == 0:
                for j in range(H):
                    S_close[nc, j] = a[bb, j] / K                     # s = a / K
                    M_close[nc, j] = m[bb, j]
                rows_close[nc] = bb
                nc += 1
        if nc == 0:
            continue
        np.dot(S_close[:nc], Vs_p.T, P_close[:nc])
        np.dot(M_close[:nc], Vm_p.T, Q_close[:nc])
        nbar += 1
        barrier(flags, p, P, nbar)                # every part has read a and m
        for q in range(nc):
            bb = rows_close[q]
            jb = (n0[bb] + s + 1) // K - 1
            for i in range(Hp):
                j = u0 + i
                r = sigmoid(P_close[q, i] + Q_close[q, i] + b_r[j])   # r = σ(V_s s + V_m m + b_r)
                sv = S_close[q, j]
                mj = r * m[bb, j] + (1 - r) * sv                      # m = r m + (1-r) s
                SBLK[bb, jb, j] = sv
                RBLK[bb, jb, j] = r
                MBLK[bb, jb + 1, j] = mj
                m[bb, j] = mj
                a[bb, j] = 0.0
    for bb in range(B):
        h[bb, u0:u1] = hbuf[steps % 2, bb, u0:u1]


@njit(**JIT_PARALLEL)
def recurrent_forward_units(out, h, c, m, a, n, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                            x, lengths,
                            W, U, b, gamma, beta, V_s, V_m, b_r,
                            K, psug, hgr, reverse, rbounds, ubounds):
    """``recurrent_forward`` with the hidden units split over P = len(ubounds) - 1 threads."""
    P = len(ubounds) - 1
    B, H = h.shape
    NG = Z.shape[2] // H
    flags = np.zeros(P * STRIDE, dtype=np.int64)
    hbuf = np.empty((2, B, H), dtype=h.dtype)
    Up = pack_unit_rows(U, ubounds, NG)
    n0 = n.copy()
    for p in prange(P):
        _forward_part(p, P, flags, hbuf, out, h, c, m, a, n0, Z, GATES, C, CPREV, HPREV,
                      MBLK, SBLK, RBLK, x, lengths, W, Up, b, gamma, beta, V_s, V_m, b_r,
                      K, psug, hgr, reverse, rbounds, ubounds)
    if hgr:
        for bb in range(B):
            n[bb] = (n0[bb] + lengths[bb]) % K    # steps since the last close


@njit(**JIT)
def _backward_part(p, P, flags, DZbuf, DP, MB2, dW_p, dU_p, db_p, dx, dgamma, dbeta, dV_s, dV_m, db_r,
                   dh, dc, dm, da, DZ, dout, x, lengths, n0, Z, GATES, C, CPREV, HPREV,
                   MBLK, SBLK, RBLK, W, U, gamma, V_s, V_m, K, psug, hgr, reverse,
                   rbounds, ubounds):
    B, T, E = x.shape
    H = dh.shape[1]
    G = Z.shape[2]
    NG = G // H
    NB = SBLK.shape[1]
    u0, u1 = ubounds[p], ubounds[p + 1]
    Hp = u1 - u0
    r0, r1 = rbounds[p], rbounds[p + 1]
    for bb in range(r0, r1):
        DZ[bb, lengths[bb]:, :] = 0.0
    UCT = np.ascontiguousarray(U[:, u0:u1].T)     # (Hp, G): δh[:, units]^T = U[:, units]^T δz^T
    VmC = np.ascontiguousarray(V_m[:, u0:u1])     # (H, Hp)
    VsC = np.ascontiguousarray(V_s[:, u0:u1])
    gam = np.ascontiguousarray(gamma[:, u0:u1])   # (4, Hp) with psug
    dgam = np.zeros_like(gam)                     # this part's columns of dgamma, dbeta
    dbet = np.zeros_like(gam)
    dhUT = np.empty((Hp, B), dtype=dh.dtype)
    dhhat = np.empty(Hp, dtype=dh.dtype)
    th = np.empty(Hp, dtype=dh.dtype)
    dpre = np.empty((4, Hp), dtype=dh.dtype)      # δ of the four gate pre-activations
    DP_close = np.empty((B, H), dtype=dh.dtype)
    dm_close = np.empty((B, Hp), dtype=dh.dtype)
    ds_close = np.empty((B, Hp), dtype=dh.dtype)
    rows_close = np.empty(B, dtype=np.int64)
    nbar = 0
    steps = lengths.max()
    for s in range(steps - 1, -1, -1):
        # 1) block closes at this step (forward: m' = r m + (1-r) s, r = σ(V_s s + V_m m + b_r))
        nc = 0
        if hgr:
            for bb in range(B):
                if s >= lengths[bb] or (n0[bb] + s + 1) % K != 0:
                    continue
                jb = (n0[bb] + s + 1) // K - 1
                rr, mb, sb = RBLK[bb, jb, u0:u1], MBLK[bb, jb, u0:u1], SBLK[bb, jb, u0:u1]
                dmrow, darow, dprow = dm[bb, u0:u1], da[bb, u0:u1], DP[bb, jb, u0:u1]
                for i in range(Hp):
                    dm_after = dmrow[i]                           # δm' of  m' = r m + (1-r) s
                    dprow[i] = dm_after * (mb[i] - sb[i]) * dsigmoid(rr[i])   # r = σ(p)
                    dmrow[i] = dm_after * rr[i]                   # + V_m^T δp below
                    darow[i] = dm_after * (1 - rr[i])             # δs, + V_s^T δp below
                rows_close[nc] = bb
                nc += 1
        if nc > 0:
            nbar += 1
            barrier(flags, p, P, nbar)            # every unit of δp written
            for q in range(nc):
                bb = rows_close[q]
                DP_close[q, :] = DP[bb, (n0[bb] + s + 1) // K - 1, :]
            np.dot(DP_close[:nc], VmC, dm_close[:nc])
            np.dot(DP_close[:nc], VsC, ds_close[:nc])
            for q in range(nc):
                bb = rows_close[q]
                dmrow, darow = dm[bb, u0:u1], da[bb, u0:u1]
                for i in range(Hp):
                    dmrow[i] += dm_close[q, i]
                    # s = a / K, and a restarted from 0 after the close: the running δa is replaced
                    darow[i] = (darow[i] + ds_close[q, i]) / K
        # 2) the step itself, this part's units (1-D views indexed from 0, as in forward)
        dzs = DZbuf[s % 2]
        for bb in range(B):
            L = lengths[bb]
            if s >= L:
                for k in range(NG):
                    dzs[bb, k * H + u0:k * H + u1] = 0.0
                continue
            pos = L - 1 - s if reverse else s
            gi, gf = GATES[bb, pos, 0, u0:u1], GATES[bb, pos, 1, u0:u1]
            gg, go = GATES[bb, pos, 2, u0:u1], GATES[bb, pos, 3, u0:u1]
            drow, dhrow = dout[bb, pos, u0:u1], dh[bb, u0:u1]
            if hgr:                                               # h_t = ĥ_t + m  and  a += ĥ_t
                dmrow, darow = dm[bb, u0:u1], da[bb, u0:u1]
                for i in range(Hp):
                    dht = drow[i] + dhrow[i]                      # δh_t = δout_t + U^T δz_{t+1}
                    dmrow[i] += dht
                    dhhat[i] = dht + darow[i]
            else:
                for i in range(Hp):
                    dhhat[i] = drow[i] + dhrow[i]
            ct, cprev, dcrow = C[bb, pos, u0:u1], CPREV[bb, pos, u0:u1], dc[bb, u0:u1]
            for i in range(Hp):
                th[i] = tanh(ct[i])
            for i in range(Hp):                                   # ĥ_t = o tanh(c_t)
                dpre[3, i] = dhhat[i] * th[i] * dsigmoid(go[i])
                dcrow[i] += dhhat[i] * go[i] * dtanh(th[i])
            for i in range(Hp):                                   # c_t = f c_{t-1} + i g
                dct = dcrow[i]
                dpre[0, i] = dct * gg[i] * dsigmoid(gi[i])
                dpre[1, i] = dct * cprev[i] * dsigmoid(gf[i])
                dpre[2, i] = dct * gi[i] * dtanh(gg[i])
                dcrow[i] = dct * gf[i]                            # δc_{t-1}
            zrow, dzrow, dzsave = Z[bb, pos], dzs[bb], DZ[bb, pos]
            if psug:                                              # gate_k = act(γ_k z + β_k)
                z, dz, dzv = zrow[u0:u1], dzrow[u0:u1], dzsave[u0:u1]
                for i in range(Hp):
                    dz[i] = 0.0
                for k in range(4):
                    for i in range(Hp):
                        dz[i] += gam[k, i] * dpre[k, i]
                        dgam[k, i] += dpre[k, i] * z[i]
                        dbet[k, i] += dpre[k, i]
                for i in range(Hp):
                    dzv[i] = dz[i]
            else:
                for k in range(4):
                    dz, dzv = dzrow[k * H + u0:k * H + u1], dzsave[k * H + u0:k * H + u1]
                    for i in range(Hp):
                        dz[i] = dpre[k, i]
                        dzv[i] = dpre[k, i]
        nbar += 1
        barrier(flags, p, P, nbar)                # every column of δz_t written
        # δh_{t-1} = U^T δz_t, this part's units; idle rows keep theirs
        np.dot(UCT, dzs.T, dhUT)                  # (faster in BLAS than δz U, as in forward)
        for bb in range(B):
            if s < lengths[bb]:
                dh[bb, u0:u1] = dhUT[:, bb]
    if psug:
        dgamma[:, u0:u1] += dgam
        dbeta[:, u0:u1] += dbet
    nbar += 1
    barrier(flags, p, P, nbar)                    # DZ and DP complete
    # weight gradients: this part's rows of every step, summed over parts by the caller
    if r1 > r0:
        x2 = x[r0:r1].reshape((r1 - r0) * T, E)
        DZ2 = DZ[r0:r1].reshape((r1 - r0) * T, G)
        np.dot(DZ2.T, x2, dW_p)                                      # z = W x + ...
        np.dot(DZ2.T, HPREV[r0:r1].reshape((r1 - r0) * T, H), dU_p)  # z = ... + U h_{t-1} + ...
        db_p[:] = DZ2.sum(axis=0)
        dx[r0:r1] += np.dot(DZ2, W).reshape(r1 - r0, T, E)
    if hgr and NB > 0:
        DPu = np.ascontiguousarray(DP.reshape(B * NB, H)[:, u0:u1])   # p = V_s s + V_m m + b_r
        dV_s[u0:u1] += np.dot(DPu.T, SBLK.reshape(B * NB, H))
        dV_m[u0:u1] += np.dot(DPu.T, MB2)
        db_r[u0:u1] += DPu.sum(axis=0)


@njit(**JIT_PARALLEL)
def recurrent_backward_units(dx, dW, dU, db, dgamma, dbeta, dV_s, dV_m, db_r, dh, dc, dm, da, DZ,
                             dout, x, lengths, n0, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK,
                             W, U, gamma, V_s, V_m,
                             K, psug, hgr, reverse, rbounds, ubounds):
    """``recurrent_backward`` with the hidden units split over P = len(ubounds) - 1 threads."""
    P = len(ubounds) - 1
    B, H = dh.shape
    NB = SBLK.shape[1]
    flags = np.zeros(P * STRIDE, dtype=np.int64)
    DZbuf = np.empty((2, B, Z.shape[2]), dtype=dh.dtype)
    DP = np.zeros((B, NB, H), dtype=dh.dtype)
    MB2 = np.ascontiguousarray(MBLK[:, :NB, :]).reshape(B * NB, H)
    dW_p = np.zeros((P, dW.shape[0], dW.shape[1]), dtype=dW.dtype)   # each part's sums over its rows
    dU_p = np.zeros((P, dU.shape[0], dU.shape[1]), dtype=dU.dtype)
    db_p = np.zeros((P, db.shape[0]), dtype=db.dtype)
    for p in prange(P):
        _backward_part(p, P, flags, DZbuf, DP, MB2, dW_p[p], dU_p[p], db_p[p], dx, dgamma, dbeta,
                       dV_s, dV_m, db_r,
                       dh, dc, dm, da, DZ, dout, x, lengths, n0, Z, GATES, C, CPREV, HPREV,
                       MBLK, SBLK, RBLK, W, U, gamma, V_s, V_m, K, psug, hgr, reverse,
                       rbounds, ubounds)
    for p in range(P):                            # in a fixed order: deterministic
        dW += dW_p[p]
        dU += dU_p[p]
        db += db_p[p]
