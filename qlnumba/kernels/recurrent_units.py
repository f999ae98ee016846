"""QL-LSTM recurrent layer for training on P threads that split the hidden units (CPU).

The model of ``recurrent.py`` (read that first: same arguments for state and
parameters), reorganised for threads and laid out *unit-major*, as in
``recurrent_infer.py``.  Splitting the rows of a batch gives each thread a
per-step product of B/P rows, which BLAS ran at two thirds of the speed of a
B-row one (before the per-step products moved to ``tiles.py``).  Here thread p owns the hidden units [u0, u1) of *every* sequence
instead: each step it multiplies the whole h_{t-1} by its own packed rows of U,
computes its units' gates, cell and output, and waits at one spin barrier
(``sync.barrier``) for the others before the next step reads the new h.  h
(and, in backward, δz) alternate between two buffers, so one barrier per step is
enough; a step where some block closes needs a second one (the close reads
every unit of a and m before any thread updates its own).  A close's V_s s + V_m m
is one product, [V_s | V_m] [s; m], on the tiles (backward: [V_m^T; V_s^T] δp),
and its saves go row by row, each row's units contiguous (``close_blocks``).

Unit-major: every per-step array holds one row of B values per hidden unit, one
column per sequence, so a thread's units are one contiguous block of Hp*B values
and the element-wise work runs as a few flat loops that LLVM vectorises.
Columns are the batch rows sorted by decreasing length (``order``): the
sequences running at step s are columns 0 .. nact-1.  Forward saves a row's
final state when its column drops off and goes on computing the column on zero
inputs (finite, never read).  Backward runs the steps in reverse: a column joins
at its last step with the gradient of its final state, and until then all of its
gradients are exactly zero, so its δz is zero at the steps it did not run and it
adds nothing to the weight gradients.

Forward saves, step-major and unit-major, what backward reads.  Backward keeps
δz of a span of steps (``grad_span_steps``: 256 to 1024 columns) and, as soon
as the span is complete, thread p adds the span's share to the rows of dW, dU
and db of its own units (nothing to add up between threads) and gives δx of its
share of the span's steps, in products over the whole span: wide enough for
BLAS, small enough to stay in cache where G is small.

Shapes legend (besides recurrent.py's)
  P threads; ubounds (P+1,) int64 unit edges; Hp = u1 - u0; NG = G // H; S = steps = max length
  order (B,) int64      column j holds row order[j] (stable sort by decreasing length)
  XS (S*B, E)           the inputs in step order: XS[s*B + j] = x[order[j], position of step s],
                        zero where the row has ended
  ZS (T, H, B)          z_t (psug only; empty otherwise)
  GS (T, 4, H, B)       the gates i, f, g, o
  CS (T+1, H, B)        c: CS[0] the initial state, CS[s+1] after step s
  THS (T, H, B)         tanh(c_t)
  chunk                 steps per chunk of the input projection (``chunk_steps(B)``)
  span                  steps per span of the weight gradients (``grad_span_steps(B, G)``)
  HS (NS, H, span*B)    h_{t-1} of step s: span s // span, columns (s % span)*B .. + B - 1
  MBLK, SBLK, RBLK      as in recurrent.py: (B, NB+1, H), (B, NB, H), (B, NB, H), by batch row
  HT (2, H, B)          h_{t-1} and h_t, alternating by step parity; MT, AT (H, B) m and a
  Wp, Up (P, NG*HPMAX, E or H)  thread p's rows of W, U: gate k, unit u0+i at row k*Hp + i
  DZT (2, G, B)         δz of this step and the last, alternating by step parity (backward)
  DZC (2, G, span*B)    δz of the steps of a span, laid out as HS; by span parity
The caller runs exactly one Numba thread per part (``prange(P)`` with P equal to
Numba's thread count) and a part never waits on a thread that is not running.
"""
import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL
from .activations import dsigmoid, dtanh, flush, sigmoid, tanh
from .blas import gemm
from .sync import STRIDE, barrier
from .tiles import pack_panels, panel_gemm

CHUNK_COLUMNS = 256     # a chunk has about this many columns (chunk*B) ...
CHUNK_MAX = 16          # ... and at most this many steps (at least one)


@njit(**JIT)
def chunk_steps(B):
    """Steps per chunk: products of about CHUNK_COLUMNS columns, wide enough for BLAS."""
    return max(1, min(CHUNK_MAX, CHUNK_COLUMNS // B))


@njit(**JIT)
def grad_span_steps(B, G):
    """Steps per span of backward's weight-gradient products: G columns, within [256, 1024].
    (Measured on 2 cores, forward + backward: at (B, T, E, H) = (64, 512, 300, 512) spans
    of 1024 columns against 256 took LSTM 3.36 s against 3.62 s and QL-LSTM 1.04 s against
    1.12 s; at (32, 256, 128, 256), LSTM gains 2% from 1024 columns, QL-LSTM none.)"""
    return max(1, min(1024, max(256, G)) // B)


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
def expand_units(A, u0, u1, B):
    """(rows, Hp*B): A[:, u0:u1] with each value repeated B times, as unit-major blocks."""
    out = np.empty((A.shape[0], u1 - u0, B), dtype=A.dtype)
    for k in range(A.shape[0]):
        for i in range(u1 - u0):
            out[k, i, :] = A[k, u0 + i]
    return out.reshape(A.shape[0], (u1 - u0) * B)


@njit(**JIT)
def part_params(b, gamma, beta, V_s, V_m, u0, u1, B, psug):
    """The parameters a forward part reads per step, for units u0 .. u1: b in the packed row
    order of Up (NG*Hp,); γ and β expanded by ``expand_units`` (4, Hp*B) with psug; the
    rows of V_s beside those of V_m, VSM (Hp, 2H) = [V_s[u0:u1] | V_m[u0:u1]], and VSM
    packed for ``panel_gemm`` by B columns (a block close's one product)."""
    NG = 1 if psug else 4
    H, Hp = b.shape[0] // NG, u1 - u0
    brow = np.empty(NG * Hp, dtype=b.dtype)
    for k in range(NG):
        brow[k * Hp:(k + 1) * Hp] = b[k * H + u0:k * H + u1]
    GAM = expand_units(gamma, u0, u1, B) if psug else np.empty((4, 1), b.dtype)
    BET = expand_units(beta, u0, u1, B) if psug else np.empty((4, 1), b.dtype)
    Hv = V_s.shape[1]                             # H with hgr, 0 without (V_s empty)
    VSM = np.empty((Hp if Hv else 0, 2 * Hv), dtype=b.dtype)
    if Hv:
        VSM[:, :Hv] = V_s[u0:u1]
        VSM[:, Hv:] = V_m[u0:u1]
    return brow, GAM, BET, VSM, pack_panels(VSM, B)


@njit(**JIT)
def _forward_part(p, P, flags, HT, MT, AT, out, h, c, m, a, XS, ZS, GS, CS, THS, HS,
                  MBLK, SBLK, RBLK, x, lengths, order, n0, Wp, Up, b, gamma, beta,
                  V_s, V_m, b_r, K, psug, hgr, reverse, ubounds):
    B, T, E = x.shape
    NG = 1 if psug else 4
    u0, u1 = ubounds[p], ubounds[p + 1]
    Hp = u1 - u0
    n = Hp * B                                    # the element-wise loops run over all n at once
    steps = lengths[order[0]]
    # 1) this part's units of the state, unit-major; its share of the steps of XS
    for j in range(B):
        row = order[j]
        out[row, lengths[row]:, u0:u1] = 0.0
        for i in range(Hp):
            HT[0, u0 + i, j] = h[row, u0 + i]
            CS[0, u0 + i, j] = c[row, u0 + i]
            if hgr:
                MT[u0 + i, j] = m[row, u0 + i]
                AT[u0 + i, j] = a[row, u0 + i]
                MBLK[row, 0, u0 + i] = m[row, u0 + i]
    for s in range(p, steps, P):
        for j in range(B):
            row = order[j]
            L = lengths[row]
            if s < L:
                XS[s * B + j] = x[row, L - 1 - s if reverse else s]
            else:
                XS[s * B + j] = 0.0
    nbar = 1
    barrier(flags, p, P, nbar)                    # HT[0] and XS complete
    # 2) the steps; this part's rows of the input projection a chunk of steps at a time
    rows = NG * Hp
    Wpp, Upp = Wp[p, :rows], Up[p, :rows]          # (NG*Hp, E), (NG*Hp, H)
    Upk = pack_panels(Upp, B)                     # for the per-step products U h_{t-1}
    chunk = chunk_steps(B)
    span = HS.shape[2] // B
    Zflat = np.empty(rows * chunk * B, dtype=h.dtype)
    Zc = Zflat.reshape(rows, chunk * B)           # x W^T of the chunk's steps: column sc*B + j
    HU = np.empty((rows, B), dtype=h.dtype)       # z_t (psug: U h_{t-1} only, z goes to ZS)
    brow, GAM, BET, VSM, VSMk = part_params(b, gamma, beta, V_s, V_m, u0, u1, B, psug)
    hh = np.empty(n, dtype=h.dtype)               # h_t of this part's units
    mt, at = MT[u0:u1].reshape(n), AT[u0:u1].reshape(n)   # this part's m and a, flat
    nact = B
    for s in range(steps):
        sc = s % chunk
        if sc == 0:
            ns = min(chunk, steps - s)
            Zc = Zflat[:rows * ns * B].reshape(rows, ns * B)
            np.dot(Wpp, XS[s * B:(s + ns) * B].T, Zc)
        cur, nxt = s % 2, (s + 1) % 2
        cprev = CS[s, u0:u1].reshape(n)
        while lengths[order[nact - 1]] <= s:      # a row that has ended: its final state now
            nact -= 1
            save_column(h, c, m, a, HT[cur], CS[s, u0:u1], MT, AT, order[nact], nact, u0, u1, hgr)
        hcur = HT[cur, u0:u1]
        hs = HS[s // span, u0:u1, (s % span) * B:(s % span + 1) * B]
        for i in range(Hp):                       # h_{t-1}, saved for δU
            hs[i] = hcur[i]
        panel_gemm(HU, Upk, Upp, HT[cur], False)  # U h_{t-1}, all B columns
        c0 = sc * B                               # this step's columns of Zc
        gi, gf = GS[s, 0, u0:u1].reshape(n), GS[s, 1, u0:u1].reshape(n)
        gg, go = GS[s, 2, u0:u1].reshape(n), GS[s, 3, u0:u1].reshape(n)
        if psug:                                  # z_t = W x_t + U h_{t-1} + b, saved for δγ
            for r in range(rows):
                zs, hu, zx, br = ZS[s, u0 + r], HU[r], Zc[r, c0:c0 + B], brow[r]
                for j in range(B):
                    zs[j] = hu[j] + zx[j] + br
            z = ZS[s, u0:u1].reshape(n)           # gate_k = act(γ_k z + β_k)
            for k in range(n):
                gi[k] = sigmoid(GAM[0, k] * z[k] + BET[0, k])
            for k in range(n):
                gf[k] = sigmoid(GAM[1, k] * z[k] + BET[1, k])
            for k in range(n):
                gg[k] = tanh(GAM[2, k] * z[k] + BET[2, k])
            for k in range(n):
                go[k] = sigmoid(GAM[3, k] * z[k] + BET[3, k])
        else:                                     # gate_k = act(k-th block of z)
            for r in range(rows):
                hu, zx, br = HU[r], Zc[r, c0:c0 + B], brow[r]
                for j in range(B):
                    hu[j] += zx[j] + br
            z = HU.reshape(rows * B)
            for k in range(n):
                gi[k] = sigmoid(z[k])
            for k in range(n):
                gf[k] = sigmoid(z[n + k])
            for k in range(n):
                gg[k] = tanh(z[2 * n + k])
            for k in range(n):
                go[k] = sigmoid(z[3 * n + k])
        ct, th = CS[s + 1, u0:u1].reshape(n), THS[s, u0:u1].reshape(n)
        for k in range(n):
            ct[k] = gf[k] * cprev[k] + gi[k] * gg[k]      # c_t = f c_{t-1} + i g
        for k in range(n):
            th[k] = tanh(ct[k])
        for k in range(n):
            hh[k] = go[k] * th[k]                         # ĥ_t = o tanh(c_t)
        publish_h(HT[nxt], out, hh, mt, at, order, lengths, nact, s, u0, u1, hgr, reverse)
        nbar += 1
        barrier(flags, p, P, nbar)                # h_t complete; a complete for the closes
        if hgr:
            nbar = close_blocks(p, P, flags, nbar, MT, AT, SBLK, RBLK, MBLK, order, n0, nact, s,
                                VSM, VSMk, b_r, K, u0, u1, True)
    # 3) final state of the rows that ran every step
    for j in range(nact):
        save_column(h, c, m, a, HT[steps % 2], CS[steps, u0:u1], MT, AT, order[j], j, u0, u1, hgr)


@njit(**JIT)
def publish_h(HTn, out, hh, mt, at, order, lengths, nact, s, u0, u1, hgr, reverse):
    """The output of step s from this part's ĥ_t (hh, unit-major, flat): with hgr a += ĥ_t and
    h_t = ĥ_t + m; h_t goes to HTn (the next step's h, all units) and to ``out``."""
    B = HTn.shape[1]
    n = (u1 - u0) * B
    if hgr:
        for k in range(n):
            at[k] += hh[k]                                # a += ĥ_t
        for k in range(n):
            hh[k] += mt[k]                                # h_t = ĥ_t + m
    hn = HTn[u0:u1].reshape(n)
    for k in range(n):
        hn[k] = hh[k]
    for j in range(nact):                         # out[row, position] = h_t, running columns
        row = order[j]
        orow = out[row, lengths[row] - 1 - s if reverse else s, u0:u1]
        for i in range(u1 - u0):
            orow[i] = hh[i * B + j]


@njit(**JIT)
def close_blocks(p, P, flags, nbar, MT, AT, SBLK, RBLK, MBLK, order, n0, nact, s,
                 VSM, VSMk, b_r, K, u0, u1, save):
    """The blocks that close after step s, this part's units of m and a; returns the barrier
    count.  Every unit of a and m must be complete (a barrier after the step).  With ``save``,
    s, r and the new m go to SBLK, RBLK, MBLK (backward's saves).

    Shapes: MT, AT (H, B) unit-major; VSM (Hp, 2H) this part's rows of V_s beside those of
    V_m, VSMk VSM packed by ``part_params``.
    """
    H, B = MT.shape
    Hp = u1 - u0
    cols = np.empty(B, dtype=np.int64)            # the closing columns
    nc = 0
    for j in range(nact):
        if (n0[order[j]] + s + 1) % K == 0:
            cols[nc] = j
            nc += 1
    if nc == 0:
        return nbar
    SM = np.empty((2 * H, nc), dtype=MT.dtype)    # s over m: every unit of the closing columns
    for v in range(H):
        av, mv, sv, mc = AT[v], MT[v], SM[v], SM[H + v]
        for q in range(nc):
            sv[q] = av[cols[q]] / K                                   # s = a / K
            mc[q] = mv[cols[q]]
    PC = np.empty((Hp, nc), dtype=MT.dtype)
    panel_gemm(PC, VSMk, VSM, SM, False)          # this part's units of V_s s + V_m m
    nbar += 1
    barrier(flags, p, P, nbar)                    # every part has read a and m
    RN, MN = np.empty((Hp, nc), dtype=MT.dtype), np.empty((Hp, nc), dtype=MT.dtype)
    for i in range(Hp):
        u = u0 + i
        pc, sv, mc, br, rn, mn = PC[i], SM[u], SM[H + u], b_r[u], RN[i], MN[i]
        for q in range(nc):
            rn[q] = sigmoid(pc[q] + br)                               # r = σ(V_s s + V_m m + b_r)
        for q in range(nc):
            mn[q] = rn[q] * mc[q] + (1 - rn[q]) * sv[q]               # m = r m + (1-r) s
        mv, av = MT[u], AT[u]
        for q in range(nc):
            mv[cols[q]] = mn[q]
            av[cols[q]] = 0.0
    if save:                                      # row by row: each row's units are contiguous
        for q in range(nc):
            row = order[cols[q]]
            jb = (n0[row] + s + 1) // K - 1
            srow, rrow, mrow = SBLK[row, jb, u0:u1], RBLK[row, jb, u0:u1], MBLK[row, jb + 1, u0:u1]
            for i in range(Hp):
                srow[i] = SM[u0 + i, q]
                rrow[i] = RN[i, q]
                mrow[i] = MN[i, q]
    return nbar


@njit(**JIT)
def advance_counters(n, n0, lengths, K):
    """Each row's n after its lengths[row] steps from n0: the steps since its last close."""
    for row in range(n.shape[0]):
        n[row] = (n0[row] + lengths[row]) % K


@njit(**JIT)
def save_column(h, c, m, a, HTs, CTp, MT, AT, row, j, u0, u1, hgr):
    """Final state of one row, this part's units: column j of the unit-major state
    (HTs, MT, AT every unit; CTp this part's units of c)."""
    for i in range(u1 - u0):
        h[row, u0 + i] = HTs[u0 + i, j]
        c[row, u0 + i] = CTp[i, j]
        if hgr:
            m[row, u0 + i] = MT[u0 + i, j]
            a[row, u0 + i] = AT[u0 + i, j]


@njit(**JIT_PARALLEL)
def recurrent_forward_units(out, h, c, m, a, n, order, XS, ZS, GS, CS, THS, HS, MBLK, SBLK, RBLK,
                            x, lengths,
                            W, U, b, gamma, beta, V_s, V_m, b_r,
                            K, psug, hgr, reverse, ubounds):
    """``recurrent_forward`` on P = len(ubounds) - 1 threads (P = 1 runs on one thread),
    saving in this module's layout; XS is a flat buffer of at least T*B*E values."""
    P = len(ubounds) - 1
    B, H = h.shape
    E = x.shape[2]
    NG = 1 if psug else 4
    flags = np.zeros(P * STRIDE, dtype=np.int64)
    HT = np.empty((2, H, B), dtype=h.dtype)
    MT = np.empty((H, B), dtype=h.dtype)
    AT = np.empty((H, B), dtype=h.dtype)
    Wp = pack_unit_rows(W, ubounds, NG)
    Up = pack_unit_rows(U, ubounds, NG)
    order[:] = np.argsort(-lengths, kind="mergesort")   # stable: decreasing length
    steps = lengths[order[0]]
    XS2 = XS[:steps * B * E].reshape(steps * B, E)
    n0 = n.copy()
    for p in prange(P):
        # np.int64(p): prange's index turns uint64 when the loop becomes parallel, and each
        # integer type of p would compile the part once more (cold compiles 18% shorter)
        _forward_part(np.int64(p), P, flags, HT, MT, AT, out, h, c, m, a, XS2, ZS, GS, CS, THS, HS,
                      MBLK, SBLK, RBLK, x, lengths, order, n0, Wp, Up, b, gamma, beta,
                      V_s, V_m, b_r, K, psug, hgr, reverse, ubounds)
    if hgr:
        advance_counters(n, n0, lengths, K)


@njit(**JIT)
def _backward_part(p, P, flags, DZT, DZC, DPT, dx, dW, dU, db, dgamma, dbeta, dV_s, dV_m, db_r,
                   dh, dc, dm, da, DP, MB2, dout, lengths, order, n0, XS, ZS, GS, CS, THS, HS,
                   MBLK, SBLK, RBLK, W, U, gamma, V_s, V_m, K, psug, hgr, reverse, ubounds):
    B, H = dh.shape
    NG = 1 if psug else 4
    NB = SBLK.shape[1]
    u0, u1 = ubounds[p], ubounds[p + 1]
    Hp = u1 - u0
    n = Hp * B
    steps = lengths[order[0]]
    UCT = np.ascontiguousarray(U[:, u0:u1].T)     # (Hp, G): δh[units] = U[:, units]^T δz
    UCTk = pack_panels(UCT, B)
    # V_m[:, units]^T over V_s[:, units]^T, (2Hp, H): at a close one product gives this
    # part's δm += V_m^T δp and δs += V_s^T δp (hgr off: V_s is empty, and so is VT)
    Hv = V_s.shape[0]
    VT = np.empty((2 * Hp if Hv else 0, Hv), dtype=dh.dtype)
    if Hv:
        VT[:Hp] = V_m[:, u0:u1].T
        VT[Hp:] = V_s[:, u0:u1].T
    VTk = pack_panels(VT, B)
    GAM = expand_units(gamma, u0, u1, B) if psug else np.empty((4, 1), dh.dtype)  # γ_k of each element
    DG = np.zeros((8, n), dtype=dh.dtype)         # δγ_k, δβ_k of each element, summed over B at the end
    DH = np.zeros((Hp, B), dtype=dh.dtype)        # the running δh, δc, δm, δa of this part's units;
    DC = np.zeros((Hp, B), dtype=dh.dtype)        # zero in a column until it joins
    DM = np.zeros((Hp, B), dtype=dh.dtype)
    DA = np.zeros((Hp, B), dtype=dh.dtype)
    DO = np.zeros((Hp, B), dtype=dh.dtype)        # δout_t, zero in the columns not running
    dh_, dc_, dm_, da_, do_ = DH.reshape(n), DC.reshape(n), DM.reshape(n), DA.reshape(n), DO.reshape(n)
    dhhat = np.empty(n, dtype=dh.dtype)
    dpre = np.empty((4, n), dtype=dh.dtype)       # δ of the four gate pre-activations
    DZTf = DZT.reshape(2 * NG * H * B)
    span = HS.shape[2] // B
    E = W.shape[1]
    DXf = np.empty(span * B * E, dtype=dh.dtype)      # δx of this part's steps of a span
    ones = np.ones((span * B, 1), dtype=dh.dtype)
    cols_close = np.empty(B, dtype=np.int64)
    DVf = np.empty(2 * Hp * B, dtype=dh.dtype)    # V_m^T δp over V_s^T δp, the closing columns
    nact = 0
    nbar = 0
    for s in range(steps - 1, -1, -1):
        cur = s % 2
        while nact < B and lengths[order[nact]] > s:   # a row's last step: it joins with the
            row = order[nact]                           # gradient of its final state
            for i in range(Hp):
                DH[i, nact] = dh[row, u0 + i]
                DC[i, nact] = dc[row, u0 + i]
                if hgr:
                    DM[i, nact] = dm[row, u0 + i]
                    DA[i, nact] = da[row, u0 + i]
            nact += 1
        # 1) block closes after this step (forward: m' = r m + (1-r) s, r = σ(V_s s + V_m m + b_r))
        nc = 0
        if hgr:
            for j in range(nact):
                if (n0[order[j]] + s + 1) % K == 0:
                    cols_close[nc] = j
                    nc += 1
        if nc > 0:
            DPc = DPT[:H * nc].reshape(H, nc)     # δp of every unit, the closing columns
            for q in range(nc):                   # row by row: each row's units are contiguous
                j = cols_close[q]
                row = order[j]
                jb = (n0[row] + s + 1) // K - 1
                rrow, mrow, srow = RBLK[row, jb, u0:u1], MBLK[row, jb, u0:u1], SBLK[row, jb, u0:u1]
                dprow = DP[row, jb, u0:u1]
                for i in range(Hp):
                    rr = rrow[i]
                    dm_after = DM[i, j]                                   # δm' of m' = r m + (1-r) s
                    dp = flush(dm_after * (mrow[i] - srow[i]) * dsigmoid(rr))   # r = σ(p)
                    DPc[u0 + i, q] = dp
                    dprow[i] = dp
                    DM[i, j] = dm_after * rr                              # + V_m^T δp below
                    DA[i, j] = dm_after * (1 - rr)                        # δs, + V_s^T δp below
            nbar += 1
            barrier(flags, p, P, nbar)            # every unit of δp written
            DV = DVf[:2 * Hp * nc].reshape(2 * Hp, nc)
            panel_gemm(DV, VTk, VT, DPc, False)   # p = V_s s + V_m m + b_r, this part's units
            for i in range(Hp):
                for q in range(nc):
                    j = cols_close[q]
                    DM[i, j] = flush(DM[i, j] + DV[i, q])           # the carries: see flush
                    # s = a / K, and a restarted from 0 after the close: the running δa is replaced
                    DA[i, j] = flush((DA[i, j] + DV[Hp + i, q]) / K)
        # 2) the step itself, flat over this part's units of every column
        for j in range(nact):
            row = order[j]
            drow = dout[row, lengths[row] - 1 - s if reverse else s, u0:u1]
            for i in range(Hp):
                DO[i, j] = drow[i]
        gi, gf = GS[s, 0, u0:u1].reshape(n), GS[s, 1, u0:u1].reshape(n)
        gg, go = GS[s, 2, u0:u1].reshape(n), GS[s, 3, u0:u1].reshape(n)
        cprev, th = CS[s, u0:u1].reshape(n), THS[s, u0:u1].reshape(n)   # c_{t-1}, tanh(c_t)
        for k in range(n):
            dh_[k] += do_[k]                      # δh_t = δout_t + U^T δz_{t+1}
        if hgr:                                   # h_t = ĥ_t + m  and  a += ĥ_t
            for k in range(n):
                dm_[k] += dh_[k]
            for k in range(n):
                dhhat[k] = dh_[k] + da_[k]
        else:
            for k in range(n):
                dhhat[k] = dh_[k]
        di, df, dg, do = dpre[0], dpre[1], dpre[2], dpre[3]
        for k in range(n):                        # ĥ_t = o tanh(c_t)
            do[k] = dhhat[k] * th[k] * dsigmoid(go[k])
        for k in range(n):
            dc_[k] += dhhat[k] * go[k] * dtanh(th[k])
        for k in range(n):                        # c_t = f c_{t-1} + i g
            di[k] = dc_[k] * gg[k] * dsigmoid(gi[k])
        for k in range(n):
            df[k] = dc_[k] * cprev[k] * dsigmoid(gf[k])
        for k in range(n):
            dg[k] = dc_[k] * gi[k] * dtanh(gg[k])
        for k in range(n):
            dc_[k] = flush(dc_[k] * gf[k])        # δc_{t-1} (flush: see activations)
        if psug:                                  # gate_k = act(γ_k z + β_k)
            z = ZS[s, u0:u1].reshape(n)
            dz = DZTf[(cur * H + u0) * B:(cur * H + u1) * B]
            for k in range(n):                    # two loops: few arrays each, so LLVM vectorises
                dz[k] = GAM[0, k] * di[k] + GAM[1, k] * df[k]
            for k in range(n):
                dz[k] = flush(dz[k] + GAM[2, k] * dg[k] + GAM[3, k] * do[k])
            for g in range(4):
                dgam, dbet, dp_ = DG[g], DG[4 + g], dpre[g]
                for k in range(n):
                    dgam[k] += dp_[k] * z[k]
                for k in range(n):
                    dbet[k] += dp_[k]
        else:                                     # gate_k = act(k-th block of z)
            for g in range(4):
                dz = DZTf[((cur * 4 + g) * H + u0) * B:((cur * 4 + g) * H + u1) * B]
                dp_ = dpre[g]
                for k in range(n):
                    dz[k] = flush(dp_[k])         # δz feeds every product below
        ci, sc = s // span, s % span
        dzc = DZC[ci % 2]
        for g in range(NG):                       # δz of the span's steps, for the weight gradients
            dzg = DZT[cur, g * H + u0:g * H + u1]
            dzs = dzc[g * H + u0:g * H + u1, sc * B:(sc + 1) * B]
            for i in range(Hp):
                dzs[i] = dzg[i]
        nbar += 1
        barrier(flags, p, P, nbar)                # every unit of δz_t written
        panel_gemm(DH, UCTk, UCT, DZT[cur], False)   # δh_{t-1} = U^T δz_t, this part's units
        for k in range(n):
            dh_[k] = flush(dh_[k])
        if sc == 0:                               # the span is complete: its share of the products
            _span_gradients(p, P, dx, dW, dU, db, dzc, XS, HS[ci], ones, DXf, lengths, order, W,
                            ci * span, min(span, steps - ci * span), NG, u0, u1, reverse)
    # 3) the gradient of the initial state
    for j in range(nact):
        row = order[j]
        for i in range(Hp):
            dh[row, u0 + i] = DH[i, j]
            dc[row, u0 + i] = DC[i, j]
            if hgr:
                dm[row, u0 + i] = DM[i, j]
                da[row, u0 + i] = DA[i, j]
    if psug:
        for g in range(8):
            for i in range(Hp):
                acc = 0.0
                for j in range(B):
                    acc += DG[g, i * B + j]
                if g < 4:
                    dgamma[g, u0 + i] += acc
                else:
                    dbeta[g - 4, u0 + i] += acc
    if hgr and NB > 0:                            # p = V_s s + V_m m + b_r
        DPu = np.ascontiguousarray(DP.reshape(B * NB, H)[:, u0:u1])
        dV_s[u0:u1] += np.dot(DPu.T, SBLK.reshape(B * NB, H))
        dV_m[u0:u1] += np.dot(DPu.T, MB2)
        db_r[u0:u1] += DPu.sum(axis=0)


@njit(**JIT)
def _span_gradients(p, P, dx, dW, dU, db, dzc, XS, HSc, ones, DXf, lengths, order, W,
                    s0, ns, NG, u0, u1, reverse):
    """The weight gradients of this part's rows and δx of its share of the ns steps from s0
    (z = W x + U h_{t-1} + b); dzc and HSc hold the span's δz and h_{t-1}, column k*B + j."""
    B = order.size
    H, E = HSc.shape[0], W.shape[1]
    Hp = u1 - u0
    cols = ns * B
    XSc = XS[s0 * B:s0 * B + cols]
    for g in range(NG):
        r0 = g * H + u0
        DZg = dzc[r0:r0 + Hp, :cols]
        gemm(dW[r0:r0 + Hp], DZg, XSc, False, False, True)
        gemm(dU[r0:r0 + Hp], DZg, HSc[:, :cols], False, True, True)
        gemm(db[r0:r0 + Hp].reshape(Hp, 1), DZg, ones[:cols], False, False, True)
    k0, k1 = ns * p // P, ns * (p + 1) // P       # δx = δz W for steps s0+k0 .. s0+k1-1
    if k1 == k0:
        return
    DX = DXf[:(k1 - k0) * B * E].reshape((k1 - k0) * B, E)
    gemm(DX, dzc[:, k0 * B:k1 * B], W, True, False, False)
    for k in range(k1 - k0):
        s = s0 + k0 + k
        for j in range(B):
            row = order[j]
            L = lengths[row]
            if s >= L:
                break                             # columns by decreasing length: the rest ended too
            dxrow, dxs = dx[row, L - 1 - s if reverse else s], DX[k * B + j]
            for e in range(E):
                dxrow[e] += dxs[e]


@njit(**JIT_PARALLEL)
def recurrent_backward_units(dx, dW, dU, db, dgamma, dbeta, dV_s, dV_m, db_r, dh, dc, dm, da,
                             dout, x, lengths, n0, order, XS, ZS, GS, CS, THS, HS, MBLK, SBLK, RBLK,
                             W, U, gamma, V_s, V_m,
                             K, psug, hgr, reverse, ubounds):
    """``recurrent_backward`` for ``recurrent_forward_units``' saves, on P = len(ubounds) - 1
    threads."""
    P = len(ubounds) - 1
    B, H = dh.shape
    E = x.shape[2]
    G = U.shape[0]
    NB = SBLK.shape[1]
    steps = lengths[order[0]]
    flags = np.zeros(P * STRIDE, dtype=np.int64)
    DZT = np.empty((2, G, B), dtype=dh.dtype)
    DPT = np.empty(H * B, dtype=dh.dtype)
    DP = np.zeros((B, NB, H), dtype=dh.dtype)
    MB2 = np.ascontiguousarray(MBLK[:, :NB, :]).reshape(B * NB, H)
    DZC = np.empty((2, G, HS.shape[2]), dtype=dh.dtype)
    XS2 = XS[:steps * B * E].reshape(steps * B, E)
    for p in prange(P):                                 # np.int64(p): see recurrent_forward_units
        _backward_part(np.int64(p), P, flags, DZT, DZC, DPT, dx, dW, dU, db, dgamma, dbeta, dV_s, dV_m,
                       db_r, dh, dc, dm, da, DP, MB2, dout, lengths, order, n0, XS2, ZS, GS,
                       CS, THS, HS, MBLK, SBLK, RBLK, W, U, gamma, V_s, V_m, K, psug, hgr,
                       reverse, ubounds)
