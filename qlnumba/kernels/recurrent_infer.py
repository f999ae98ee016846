"""QL-LSTM recurrent layer, inference only: unit-major, on P >= 1 threads (CPU).

The forward of ``recurrent.py`` (same model, same arguments for state and
parameters) when nothing is saved for backward.  It keeps h, c, m, a and the
step products *unit-major*: one row of B values per hidden unit, one column per
sequence.  Then every per-unit parameter (b, γ, β) is a scalar for a whole
row, and the element-wise loops run over B contiguous values.  (Row-major
``recurrent_units.py`` reads the step product column-wise and loads γ, β as
vectors: twice the element-wise time.)

Columns are the batch rows sorted by decreasing length, so at step s the
sequences still running are columns 0 .. nact-1 and no loop needs a mask.  The
steps run in chunks (``chunk`` steps, below): each thread gathers a chunk's inputs in step order
(reverse direction and ragged lengths resolved there) and gives their projection
onto its units in one product, which stays in its cache (a projection of every
step at once has rows 4 T B bytes apart); the chunk's outputs are written out
together at its end.

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
  Zc (NG*Hp, ns*B)     a thread's x W^T for the ns <= chunk steps of a chunk: column sc*B + j
  OC (Hp, chunk*B)     a thread's h_t of the chunk, same columns
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
    #    steps in one product, the outputs of a chunk's steps written out together
    rows = NG * Hp
    Wpp, Upp = Wp[p, :rows], Up[p, :rows]          # (NG*Hp, E), (NG*Hp, H)
    chunk = max(1, min(CHUNK_MAX, CHUNK_COLUMNS // B))   # a product wide enough for BLAS
    Xflat = np.empty(chunk * B * E, dtype=h.dtype)
    Zflat = np.empty(rows * chunk * B, dtype=h.dtype)
    Zc = Zflat.reshape(rows, chunk * B)           # x W^T of the chunk's ns steps: column sc*B + j
    OC = np.empty((Hp, chunk * B), dtype=h.dtype)     # h_t of the chunk, same columns
    HU = np.empty((rows, B), dtype=h.dtype)       # U h_{t-1}, this part's rows
    zt = np.empty(B, dtype=h.dtype)               # z_t of one unit (psug)
    hh = np.empty(B, dtype=h.dtype)               # ĥ_t of one unit
    S_close = np.empty((B, H), dtype=h.dtype)     # every unit of s and m of the closing columns
    M_close = np.empty((B, H), dtype=h.dtype)
    P_close = np.empty((B, Hp), dtype=h.dtype)    # this part's units of V_s s, V_m m
    Q_close = np.empty((B, Hp), dtype=h.dtype)
    cols_close = np.empty(B, dtype=np.int64)
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
        while lengths[order[nact - 1]] <= s:      # columns whose row has ended drop off the end
            nact -= 1
        cur, nxt = s % 2, (s + 1) % 2
        np.dot(Upp, HT[cur], HU)                  # U h_{t-1}, all B columns (ended ones unused)
        c0 = sc * B                               # this step's columns of Zc and OC
        # Loops run over 1-D views indexed from 0, few arrays each: LLVM vectorises those.
        for i in range(Hp):
            u = u0 + i
            ct, hn, oc = CT[i, :nact], HT[nxt, u, :nact], OC[i, c0:c0 + nact]
            if psug:                              # z_t = W x_t + U h_{t-1} + b; gate_k = act(γ_k z + β_k)
                zx, hu, bu = Zc[i, c0:c0 + nact], HU[i, :nact], b[u]
                for j in range(nact):
                    zt[j] = zx[j] + hu[j] + bu
                gi, gf, gg, go = gamma[0, u], gamma[1, u], gamma[2, u], gamma[3, u]
                ei, ef, eg, eo = beta[0, u], beta[1, u], beta[2, u], beta[3, u]
                for j in range(nact):             # c_t = f c_{t-1} + i g
                    z = zt[j]
                    ct[j] = sigmoid(gf * z + ef) * ct[j] + sigmoid(gi * z + ei) * tanh(gg * z + eg)
                for j in range(nact):             # ĥ_t = o tanh(c_t)
                    hh[j] = sigmoid(go * zt[j] + eo) * tanh(ct[j])
            else:                                 # gate_k = act(k-th slice of z)
                zi, zf = Zc[i, c0:c0 + nact], Zc[Hp + i, c0:c0 + nact]
                zg, zo = Zc[2 * Hp + i, c0:c0 + nact], Zc[3 * Hp + i, c0:c0 + nact]
                hi, hf, hg, ho = HU[i, :nact], HU[Hp + i, :nact], HU[2 * Hp + i, :nact], HU[3 * Hp + i, :nact]
                bi, bf, bg, bo = b[u], b[H + u], b[2 * H + u], b[3 * H + u]
                for j in range(nact):             # c_t = f c_{t-1} + i g
                    ct[j] = (sigmoid(zf[j] + hf[j] + bf) * ct[j]
                             + sigmoid(zi[j] + hi[j] + bi) * tanh(zg[j] + hg[j] + bg))
                for j in range(nact):             # ĥ_t = o tanh(c_t)
                    hh[j] = sigmoid(zo[j] + ho[j] + bo) * tanh(ct[j])
            if hgr:
                mr, ar = MT[u, :nact], AT[u, :nact]
                for j in range(nact):
                    ar[j] += hh[j]                # a += ĥ_t
                for j in range(nact):
                    hh[j] += mr[j]                # h_t = ĥ_t + m
            for j in range(nact):
                hn[j] = hh[j]
            for j in range(nact):
                oc[j] = hh[j]
        if sc == chunk - 1 or s == steps - 1:     # out[row, position] = h_t for the chunk's steps
            s0 = s - sc
            for j in range(B):
                row = order[j]
                L = lengths[row]
                for k in range(min(sc + 1, L - s0)):
                    orow = out[row, L - 1 - (s0 + k) if reverse else s0 + k, u0:u1]
                    for i in range(Hp):
                        orow[i] = OC[i, k * B + j]
        nbar += 1
        barrier(flags, p, P, nbar)                # h_t complete; a complete for the closes
        if not hgr:
            continue
        nc = 0
        for j in range(nact):
            if (n0[order[j]] + s + 1) % K == 0:
                for v in range(H):
                    S_close[nc, v] = AT[v, j] / K                     # s = a / K
                    M_close[nc, v] = MT[v, j]
                cols_close[nc] = j
                nc += 1
        if nc == 0:
            continue
        np.dot(S_close[:nc], Vs_p.T, P_close[:nc])
        np.dot(M_close[:nc], Vm_p.T, Q_close[:nc])
        nbar += 1
        barrier(flags, p, P, nbar)                # every part has read a and m
        for q in range(nc):
            j = cols_close[q]
            for i in range(Hp):
                u = u0 + i
                r = sigmoid(P_close[q, i] + Q_close[q, i] + b_r[u])   # r = σ(V_s s + V_m m + b_r)
                MT[u, j] = r * MT[u, j] + (1 - r) * S_close[q, u]     # m = r m + (1-r) s
                AT[u, j] = 0.0
    # 3) final state of this part's units, each row from its last step
    for j in range(B):
        row = order[j]
        last = lengths[row] % 2
        for i in range(Hp):
            h[row, u0 + i] = HT[last, u0 + i, j]
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
