"""QL-LSTM recurrent layer, inference only: unit-major, on P >= 1 threads (CPU).

The forward of ``recurrent.py`` (same model, same arguments for state and
parameters) when nothing is saved for backward.  It keeps h, c, m, a and the
step products *unit-major*: one row of B values per hidden unit, one column per
sequence.  A thread's units then form one contiguous block of Hp*B values in
every array (z, c, h, m, a), and the element-wise work is a few flat loops over
the whole block, which LLVM vectorises with no per-unit overhead; γ and β are
copied out to one value per element once per call.  (Row-major
``recurrent_units.py`` reads the step product column-wise and runs short loops
per row: about twice the element-wise time.)

Columns are the batch rows sorted by decreasing length, so the sequences still
running at step s are columns 0 .. nact-1.  A column whose row has ended has its
final state saved when it drops off; after that it is still computed (on zero
inputs, so it stays finite) but never read, and no loop needs a mask.  The
steps run in chunks (``chunk`` steps, below): each thread gathers a chunk's inputs
in step order (reverse direction and ragged lengths resolved there) and gives
their projection onto its units in one product, which stays in its cache (a
projection of every step at once has rows 4 T B bytes apart).  Each step's
outputs go straight from the unit-major h_t to the running columns' rows of
``out``.  A block close works unit-major too: the closing columns of a and m
are gathered into (H, nc) blocks, so the two products V_s s and V_m m give
this thread's units for every closing column at once.

As in ``recurrent_units.py``, thread p owns the hidden units [u0, u1) of every
column, multiplies h_{t-1} by its own packed rows of U each step, and meets
the other threads at one spin barrier per step (two where a block closes).

Shapes legend (besides recurrent.py's)
  P threads; ubounds (P+1,) int64 unit edges; Hp = u1 - u0; NG = G // H
  order (B,) int64     column j holds row order[j] (rows by decreasing length)
  XC (ns*B, E)         a thread's input of the ns <= chunk steps of a chunk, in step order:
                       XC[sc*B + j] = x[order[j], position of step s], zero where the row has ended
  Wp, Up (P, NG*HPMAX, E or H)  thread p's rows of W, U: gate k, unit u0+i at row k*Hp + i
  HT (2, H, B)         h_{t-1} and h_t unit-major, alternating by step parity
  MT, AT (H, B)        m and a unit-major
  CT (Hp, B)           a thread's units of c
  HU (NG*Hp, B)        a thread's rows of z_t (gate k, unit u0+i at row k*Hp + i)
  Zc (NG*Hp, ns*B)     a thread's x W^T for the ns <= chunk steps of a chunk: column sc*B + j
  SC, MC (H, nc)       s = a / K and m of the nc columns closing a block at this step
  PC, QC (Hp, nc)      a thread's units of V_s s and V_m m for those columns
"""
import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL
from .activations import sigmoid, tanh
from .recurrent_units import pack_unit_rows
from .sync import STRIDE, barrier

CHUNK_COLUMNS = 256     # a chunk's projection has about this many columns (chunk*B) ...
CHUNK_MAX = 16          # ... and at most this many steps (at least one)


@njit(**JIT)
def _infer_part(p, P, flags, HT, MT, AT, out, h, c, m, a, x, lengths, order, n0,
                Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, ubounds):
    B, T, E = x.shape
    H = h.shape[1]
    NG = 1 if psug else 4
    u0, u1 = ubounds[p], ubounds[p + 1]
    Hp = u1 - u0
    steps = lengths[order[0]]
    # 1) this part's units of the state, unit-major; zeros past each row's end
    CT = np.empty((Hp, B), dtype=h.dtype)
    for j in range(B):
        row = order[j]
        out[row, lengths[row]:, u0:u1] = 0.0
        for i in range(Hp):
            HT[0, u0 + i, j] = h[row, u0 + i]
            CT[i, j] = c[row, u0 + i]
            if hgr:
                MT[u0 + i, j] = m[row, u0 + i]
                AT[u0 + i, j] = a[row, u0 + i]
    nbar = 1
    barrier(flags, p, P, nbar)                    # HT[0] complete
    # 2) the steps, chunk at a time: this part's rows of the input projection of a chunk's
    #    steps in one product
    rows = NG * Hp
    Wpp, Upp = Wp[p, :rows], Up[p, :rows]          # (NG*Hp, E), (NG*Hp, H)
    chunk = max(1, min(CHUNK_MAX, CHUNK_COLUMNS // B))   # a product wide enough for BLAS
    Xflat = np.empty(chunk * B * E, dtype=h.dtype)
    Zflat = np.empty(rows * chunk * B, dtype=h.dtype)
    Zc = Zflat.reshape(rows, chunk * B)           # x W^T of the chunk's ns steps: column sc*B + j
    HU = np.empty((rows, B), dtype=h.dtype)       # z_t = U h_{t-1} + x_t W^T + b, this part's rows
    n = Hp * B                                    # the element-wise loops run over all n at once
    brow = np.empty(rows, dtype=h.dtype)          # b in HU's row order
    for k in range(NG):
        brow[k * Hp:(k + 1) * Hp] = b[k * H + u0:k * H + u1]
    GB = np.zeros((8, Hp, B), dtype=h.dtype)      # γ_i, γ_f, γ_g, γ_o, β_i, .. β_o of each element
    if psug:
        for k in range(4):
            for i in range(Hp):
                GB[k, i, :] = gamma[k, u0 + i]
                GB[4 + k, i, :] = beta[k, u0 + i]
    G = GB.reshape(8, n)
    hh = np.empty(n, dtype=h.dtype)               # h_t of this part's units
    z, ct = HU.reshape(rows * B), CT.reshape(n)   # flat views (contiguous)
    HTf, MTf, ATf = HT.reshape(2 * H * B), MT.reshape(H * B), AT.reshape(H * B)
    mt, at = MTf[u0 * B:u1 * B], ATf[u0 * B:u1 * B]
    SCf, MCf = np.empty(H * B, dtype=h.dtype), np.empty(H * B, dtype=h.dtype)
    PCf, QCf = np.empty(Hp * B, dtype=h.dtype), np.empty(Hp * B, dtype=h.dtype)
    cols_close = np.empty(B, dtype=np.int64)      # the closing columns
    r_close = np.empty(B, dtype=h.dtype)          # r and the new m of one unit, every closing column
    m_close = np.empty(B, dtype=h.dtype)
    Vs_p = np.ascontiguousarray(V_s[u0:u1])       # (Hp, H)
    Vm_p = np.ascontiguousarray(V_m[u0:u1])
    nact = B
    for s in range(steps):
        sc = s % chunk
        if sc == 0:
            ns = min(chunk, steps - s)
            XC = Xflat[:ns * B * E].reshape(ns * B, E)
            for k in range(ns):                   # the chunk's inputs in step order, every thread
                for j in range(B):                # its own copy (no data shared between cores)
                    row = order[j]
                    L = lengths[row]
                    if s + k < L:
                        XC[k * B + j] = x[row, L - 1 - (s + k) if reverse else s + k]
                    else:
                        XC[k * B + j] = 0.0
            Zc = Zflat[:rows * ns * B].reshape(rows, ns * B)
            np.dot(Wpp, XC.T, Zc)
        cur, nxt = s % 2, (s + 1) % 2
        while lengths[order[nact - 1]] <= s:      # a row that has ended: its final state now
            nact -= 1                             # (after its step s-1); its column drops off
            _save_column(h, c, m, a, HT[cur], CT, MT, AT, order[nact], nact, u0, u1, hgr)
        # Ended columns are still computed below (on zero inputs: finite, and never read).
        np.dot(Upp, HT[cur], HU)                  # U h_{t-1}, all B columns
        c0 = sc * B                               # this step's columns of Zc
        for r in range(rows):                     # z_t = W x_t + U h_{t-1} + b
            hu, zx, br = HU[r], Zc[r, c0:c0 + B], brow[r]
            for j in range(B):
                hu[j] += zx[j] + br
        # Flat loops over this part's n = Hp*B elements, few arrays each: LLVM vectorises those.
        if psug:                                  # gate_k = act(γ_k z + β_k)
            gi, gf, gg, go, ei, ef, eg, eo = G[0], G[1], G[2], G[3], G[4], G[5], G[6], G[7]
            for k in range(n):                    # c_t = f c_{t-1} + i g
                zk = z[k]
                ct[k] = (sigmoid(gf[k] * zk + ef[k]) * ct[k]
                         + sigmoid(gi[k] * zk + ei[k]) * tanh(gg[k] * zk + eg[k]))
            for k in range(n):                    # ĥ_t = o tanh(c_t)
                hh[k] = sigmoid(go[k] * z[k] + eo[k]) * tanh(ct[k])
        else:                                     # gate_k = act(k-th block of z)
            zi, zf, zg, zo = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
            for k in range(n):                    # c_t = f c_{t-1} + i g
                ct[k] = sigmoid(zf[k]) * ct[k] + sigmoid(zi[k]) * tanh(zg[k])
            for k in range(n):                    # ĥ_t = o tanh(c_t)
                hh[k] = sigmoid(zo[k]) * tanh(ct[k])
        if hgr:
            for k in range(n):
                at[k] += hh[k]                    # a += ĥ_t
            for k in range(n):
                hh[k] += mt[k]                    # h_t = ĥ_t + m
        hn = HTf[(nxt * H + u0) * B:(nxt * H + u1) * B]
        for k in range(n):
            hn[k] = hh[k]
        for j in range(nact):                     # out[row, position] = h_t, running columns
            row = order[j]
            orow = out[row, lengths[row] - 1 - s if reverse else s, u0:u1]
            for i in range(Hp):
                orow[i] = hh[i * B + j]
        nbar += 1
        barrier(flags, p, P, nbar)                # h_t complete; a complete for the closes
        if not hgr:
            continue
        nc = 0
        for j in range(nact):
            if (n0[order[j]] + s + 1) % K == 0:
                cols_close[nc] = j
                nc += 1
        if nc == 0:
            continue
        SC, MC = SCf[:H * nc].reshape(H, nc), MCf[:H * nc].reshape(H, nc)
        for v in range(H):                        # every unit of the closing columns
            av, mv, sv, mc = AT[v], MT[v], SC[v], MC[v]
            for q in range(nc):
                sv[q] = av[cols_close[q]] / K                         # s = a / K
                mc[q] = mv[cols_close[q]]
        PC, QC = PCf[:Hp * nc].reshape(Hp, nc), QCf[:Hp * nc].reshape(Hp, nc)
        np.dot(Vs_p, SC, PC)                      # this part's units of V_s s, V_m m
        np.dot(Vm_p, MC, QC)
        nbar += 1
        barrier(flags, p, P, nbar)                # every part has read a and m
        for i in range(Hp):
            u = u0 + i
            pc, qc, sv, mc, br = PC[i], QC[i], SC[u], MC[u], b_r[u]
            for q in range(nc):
                r_close[q] = sigmoid(pc[q] + qc[q] + br)              # r = σ(V_s s + V_m m + b_r)
            for q in range(nc):
                m_close[q] = r_close[q] * mc[q] + (1 - r_close[q]) * sv[q]   # m = r m + (1-r) s
            mv, av = MT[u], AT[u]
            for q in range(nc):
                mv[cols_close[q]] = m_close[q]
                av[cols_close[q]] = 0.0
    # 3) final state of the rows that ran every step
    for j in range(nact):
        _save_column(h, c, m, a, HT[steps % 2], CT, MT, AT, order[j], j, u0, u1, hgr)


@njit(**JIT)
def _save_column(h, c, m, a, HTs, CT, MT, AT, row, j, u0, u1, hgr):
    """Final state of one row, this part's units: column j of the unit-major state."""
    for i in range(u1 - u0):
        h[row, u0 + i] = HTs[u0 + i, j]
        c[row, u0 + i] = CT[i, j]
        if hgr:
            m[row, u0 + i] = MT[u0 + i, j]
            a[row, u0 + i] = AT[u0 + i, j]


@njit(**JIT_PARALLEL)
def recurrent_infer_units(out, h, c, m, a, n,
                          x, lengths,
                          W, U, b, gamma, beta, V_s, V_m, b_r,
                          K, psug, hgr, reverse, ubounds):
    """``recurrent_forward`` saving nothing, with the hidden units split over
    P = len(ubounds) - 1 threads (P = 1 runs on one thread)."""
    P = len(ubounds) - 1
    B, H = h.shape
    NG = 1 if psug else 4
    flags = np.zeros(P * STRIDE, dtype=np.int64)
    HT = np.empty((2, H, B), dtype=h.dtype)
    MT = np.empty((H, B), dtype=h.dtype)
    AT = np.empty((H, B), dtype=h.dtype)
    Wp = pack_unit_rows(W, ubounds, NG)
    Up = pack_unit_rows(U, ubounds, NG)
    order = np.argsort(-lengths, kind="mergesort")   # stable: decreasing length
    n0 = n.copy()
    for p in prange(P):
        _infer_part(p, P, flags, HT, MT, AT, out, h, c, m, a, x, lengths, order, n0,
                    Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, ubounds)
    if hgr:
        for bb in range(B):
            n[bb] = (n0[bb] + lengths[bb]) % K    # steps since the last close
