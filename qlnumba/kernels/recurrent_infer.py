"""QL-LSTM recurrent layer, inference only: unit-major, on P >= 1 threads (CPU).

The forward of ``recurrent.py`` (same model, same arguments for state and
parameters) when nothing is saved for backward: ``recurrent_units.py``'s forward
without its saves, keeping c in a thread's own block instead and projecting the
inputs on the register tiles, in smaller chunks (below).  It keeps h, c, m,
a and the step products *unit-major*: one row of B values per hidden unit, one
column per sequence.  A thread's units then form one contiguous block of Hp*B
values in every array (c, h, m, a), and the element-wise loops, over contiguous
rows, vectorise.  The two cells use that differently (each way measured faster
for its cell, paired, 2 threads; in float32 at (B, T, E, H) = (64, 512, 300, 512)
and (32, 256, 128, 256)):

- LSTM: each step's product U h_{t-1} (``tiles.panel_gemm``) goes straight into the step's
  columns of the chunk's input projection (4 Hp rows of B values), and the gates
  run unit by unit over a unit's B columns, b one value per row.  Against the
  QL-LSTM way: 2-3.5% and 0.8% less time.
- QL-LSTM: U h_{t-1} goes to a block of its own (HU), one pass adds the
  projection and b, and the gates run as flat loops over all Hp*B values, with γ
  and β copied out to one value per element once per call.  Its z pass is a
  quarter of LSTM's, and with 16 to 32 columns per thread (the rows split, below)
  loops over a unit's B columns cost more: the LSTM way took 0.3% and 4% more.

Columns are the batch rows sorted by decreasing length, so the sequences still
running at step s are columns 0 .. nact-1.  A column whose row has ended has its
final state saved when it drops off; after that it is still computed (on zero
inputs, so it stays finite) but never read, and no loop needs a mask.  The
steps run in chunks (``chunk`` steps, below): each thread gathers a chunk's inputs,
transposed (reverse direction and ragged lengths resolved there), and gives their
projection onto its units in one product on the register tiles (``tiles.panel_gemm``,
W's rows packed once per call), which stays in its cache (a projection of every
step at once has rows 4 T B bytes apart).  Each step's
outputs go straight from the unit-major h_t to the running columns' rows of
``out``.  A block close works unit-major too: the closing columns of a and m
are gathered into (H, nc) blocks, so the two products V_s s and V_m m give
this thread's units for every closing column at once.

Two ways to split the work between P threads, both running ``_infer_part``:

- ``recurrent_infer_units``: as in ``recurrent_units.py``, thread p owns the
  hidden units [u0, u1) of every column, multiplies h_{t-1} by its own packed
  rows of U each step, and meets the other threads at one spin barrier per step
  (two where a block closes).
- ``recurrent_infer_rows``: thread p owns some of the columns (rows dealt out by
  ``deal_columns``, so that long and short rows spread evenly) and all of the
  units; the threads never wait for each other.  Each per-step product has B/P
  columns, which BLAS ran slower than B, but there is no barrier: QL-LSTM
  (G = H, a small product per step) gained more from that than it lost (measured
  with BLAS's per-step products, before ``tiles.py``; not measured again since).

Shapes legend (besides recurrent.py's)
  P threads; ubounds (P+1,) int64 unit edges; Hp = u1 - u0; NG = G // H
  order (Bc,) int64    column j holds row order[j] (rows by decreasing length); the part
                       runs Bc columns: B with the units split, about B/P with the rows split
  (below, B stands for Bc)
  XT (E, ns*B)         a thread's input of the ns <= chunk steps of a chunk, transposed:
                       XT[:, sc*B + j] = x[order[j], position of step s], zero where the row has ended
  Wp, Up (P, NG*HPMAX, E or H)  thread p's rows of W, U: gate k, unit u0+i at row k*Hp + i
  HT (2, H, B)         h_{t-1} and h_t unit-major, alternating by step parity
  MT, AT (H, B)        m and a unit-major
  CT (Hp, B)           a thread's units of c
  HU (Hp, B)           a thread's rows of z_t (QL-LSTM; LSTM: empty)
  Zc (NG*Hp, ns*B)     a thread's x W^T for the ns <= chunk steps of a chunk: column sc*B + j;
                       LSTM: step s adds U h_{t-1} to its own columns (z_t without b)
"""
import numpy as np
from numba import njit, prange

from ..config import JIT, JIT_PARALLEL
from .activations import sigmoid, tanh
from .recurrent_units import (CHUNK_MAX, advance_counters, close_blocks, pack_unit_rows,
                              part_params, publish_h, save_column)
from .sync import STRIDE, barrier
from .tiles import pack_panels, panel_gemm


# A chunk's inputs x^T take at most this many bytes (at least one step): every panel of W's
# rows reads them again, from L1 only if they are small (tiles.py).  Measured against the
# chunks of ``chunk_steps`` multiplied by BLAS (about 256 columns, in float32): LSTM at
# (B, T, E, H) = (32, 256, 128, 256) 4-11% less time on one thread, level on two; at
# (64, 512, 300, 512) 2-7% less on two; QL-LSTM level at both.  32 KB was no better.
INPUT_CHUNK_BYTES = 16 * 1024


@njit(**JIT)
def input_chunk_steps(B, E, itemsize):
    """Steps per chunk of the input projection: as many as keep the chunk's inputs x^T (E, ns*B)
    within INPUT_CHUNK_BYTES, at least one and at most CHUNK_MAX."""
    return max(1, min(CHUNK_MAX, INPUT_CHUNK_BYTES // (E * B * itemsize)))


@njit(**JIT)
def gather_inputs(XT, x, lengths, order, s, reverse):
    """XT (E, ns*B): the inputs of steps s .. s+ns-1, transposed for ``panel_gemm``:
    XT[:, k*B + j] = x[order[j], position of step s+k], zero where the row has ended.
    In blocks of 16 columns x 16 features, so that each read row and written row stays in L1."""
    E, n = XT.shape
    B = order.shape[0]
    for c0 in range(0, n, 16):
        for e0 in range(0, E, 16):
            e1 = min(e0 + 16, E)
            for col in range(c0, min(c0 + 16, n)):
                k, j = col // B, col % B
                row = order[j]
                L = lengths[row]
                if s + k < L:
                    xr = x[row, L - 1 - (s + k) if reverse else s + k]
                    for e in range(e0, e1):
                        XT[e, col] = xr[e]
                else:
                    for e in range(e0, e1):
                        XT[e, col] = 0.0


# The two loops below are functions of their own, not written out in ``_infer_part``: each
# makes a view per unit, and compiled inside that large function (with 512-bit vectors,
# config._prefer_512_bit) the views' reference counts were no longer pruned: an atomic
# increment and decrement per view and unit, 13-15% of the LSTM's inference time at
# (B, T, E, H) = (32, 256, 128, 256) (perf, on one and two threads).
@njit(**JIT)
def add_columns(HU, Zc, brow, c0):
    """HU += Zc[:, c0:c0 + B] + brow (one value per row): z_t = U h_{t-1} + x_t W^T + b."""
    for r in range(HU.shape[0]):
        hu, zx, br = HU[r], Zc[r, c0:c0 + HU.shape[1]], brow[r]
        for j in range(HU.shape[1]):
            hu[j] += zx[j] + br


@njit(**JIT)
def lstm_gates(CT, hh, Zc, brow, c0):
    """The LSTM step on a part's Hp units: gate k of unit i is act(Zc[k*Hp + i, c0 + j] + b),
    c_t = f c_{t-1} + i g into CT (Hp, B), ĥ_t = o tanh(c_t) into hh (Hp*B,), unit by unit
    over B contiguous columns, b one value per row (brow)."""
    Hp, B = CT.shape
    for i in range(Hp):
        zi, zf = Zc[i, c0:c0 + B], Zc[Hp + i, c0:c0 + B]
        zg, zo = Zc[2 * Hp + i, c0:c0 + B], Zc[3 * Hp + i, c0:c0 + B]
        bi, bf, bg, bo = brow[i], brow[Hp + i], brow[2 * Hp + i], brow[3 * Hp + i]
        cr, hr = CT[i], hh[i * B:(i + 1) * B]
        for j in range(B):                        # c_t = f c_{t-1} + i g
            cr[j] = sigmoid(zf[j] + bf) * cr[j] + sigmoid(zi[j] + bi) * tanh(zg[j] + bg)
        for j in range(B):                        # ĥ_t = o tanh(c_t)
            hr[j] = sigmoid(zo[j] + bo) * tanh(cr[j])


@njit(**JIT)
def _infer_part(p, P, flags, HT, MT, AT, out, h, c, m, a, x, lengths, order, n0,
                Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, ubounds):
    B, E = order.shape[0], x.shape[2]             # B: the columns this part runs
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
    Upk = pack_panels(Upp, B)                     # for the per-step products U h_{t-1}
    chunk = input_chunk_steps(B, E, h.itemsize)   # x_t^T of a chunk's steps fits in L1
    Wpk = pack_panels(Wpp, chunk * B)             # for the chunks' products W x^T
    XTflat = np.empty(E * chunk * B, dtype=h.dtype)
    Zflat = np.empty(rows * chunk * B, dtype=h.dtype)
    Zc = Zflat.reshape(rows, chunk * B)           # x W^T of the chunk's ns steps: column sc*B + j
    HU = np.empty((rows if psug else 0, B), dtype=h.dtype)   # z_t, this part's rows (QL-LSTM)
    n = Hp * B                                    # this part's values of z (QL-LSTM), c, h, m, a
    brow, GAM, BET, VSM, VSMk = part_params(b, gamma, beta, V_s, V_m, u0, u1, B, psug)
    z, ct = HU.reshape(HU.size), CT.reshape(n)    # flat views (contiguous)
    hh = np.empty(n, dtype=h.dtype)               # h_t of this part's units
    mt, at = MT[u0:u1].reshape(n), AT[u0:u1].reshape(n)   # this part's m and a, flat
    SBLK = np.empty((0, 0, 0), dtype=h.dtype)     # nothing saved at a close
    nact = B
    for s in range(steps):
        sc = s % chunk
        if sc == 0:
            ns = min(chunk, steps - s)
            XT = XTflat[:E * ns * B].reshape(E, ns * B)
            gather_inputs(XT, x, lengths, order, s, reverse)   # every thread its own copy (no
            Zc = Zflat[:rows * ns * B].reshape(rows, ns * B)   # data shared between cores)
            panel_gemm(Zc, Wpk, Wpp, XT, False)
        cur, nxt = s % 2, (s + 1) % 2
        while lengths[order[nact - 1]] <= s:      # a row that has ended: its final state now
            nact -= 1                             # (after its step s-1); its column drops off
            save_column(h, c, m, a, HT[cur], CT, MT, AT, order[nact], nact, u0, u1, hgr)
        # Ended columns are still computed below (on zero inputs: finite, and never read).
        c0 = sc * B                               # this step's columns of Zc: x_t W^T
        if psug:                                  # z_t = U h_{t-1} + x_t W^T + b, one row per unit,
            panel_gemm(HU, Upk, Upp, HT[cur], False)   # then flat loops over this part's n values:
            add_columns(HU, Zc, brow, c0)         # gate_k = act(γ_k z + β_k)
            gi, gf, gg, go, ei, ef, eg, eo = GAM[0], GAM[1], GAM[2], GAM[3], BET[0], BET[1], BET[2], BET[3]
            for k in range(n):                    # c_t = f c_{t-1} + i g
                zk = z[k]
                ct[k] = (sigmoid(gf[k] * zk + ef[k]) * ct[k]
                         + sigmoid(gi[k] * zk + ei[k]) * tanh(gg[k] * zk + eg[k]))
            for k in range(n):                    # ĥ_t = o tanh(c_t)
                hh[k] = sigmoid(go[k] * z[k] + eo[k]) * tanh(ct[k])
        else:                                     # gate_k = act(k-th block of z_t + b):
            # U h_{t-1} is added into the step's columns of Zc (4 Hp rows of B), then the gates
            # run unit by unit over B contiguous columns, b one value per row
            panel_gemm(Zc[:, c0:c0 + B], Upk, Upp, HT[cur], True)
            lstm_gates(CT, hh, Zc, brow, c0)
        publish_h(HT[nxt], out, hh, mt, at, order, lengths, nact, s, u0, u1, hgr, reverse)
        nbar += 1
        barrier(flags, p, P, nbar)                # h_t complete; a complete for the closes
        if hgr:
            nbar = close_blocks(p, P, flags, nbar, MT, AT, SBLK, SBLK, SBLK, order, n0, nact, s,
                                VSM, VSMk, b_r, K, u0, u1, False)
    # 3) final state of the rows that ran every step
    for j in range(nact):
        save_column(h, c, m, a, HT[steps % 2], CT, MT, AT, order[j], j, u0, u1, hgr)


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
        # np.int64 here and below: one compiled signature of each part function, whatever
        # integer type prange gives p (recurrent_units.recurrent_forward_units)
        _infer_part(np.int64(p), P, flags, HT, MT, AT, out, h, c, m, a, x, lengths, order, n0,
                    Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, ubounds)
    if hgr:
        advance_counters(n, n0, lengths, K)


@njit(**JIT)
def deal_columns(order, p, P):
    """Thread p's columns when P threads split the rows: the rows of ``order`` (decreasing
    length) dealt out back and forth (0, 1, .., P-1, P-1, .., 0, 0, 1, ..), so that every
    thread gets long and short rows alike; still in decreasing length."""
    cols = np.empty(order.shape[0], dtype=np.int64)
    nc = 0
    for j in range(order.shape[0]):
        rnd, pos = j // P, j % P
        if (pos if rnd % 2 == 0 else P - 1 - pos) == p:
            cols[nc] = order[j]
            nc += 1
    return cols[:nc]


@njit(**JIT)
def _infer_rows_part(p, P, out, h, c, m, a, x, lengths, order, n0,
                     Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, whole):
    """Thread p's share of ``recurrent_infer_rows``: its columns with every unit, in buffers of
    its own (allocated here, not in the prange body, so that none is shared between threads)."""
    H = h.shape[1]
    cols = deal_columns(order, p, P)
    Bc = cols.shape[0]
    flags = np.zeros(STRIDE, dtype=np.int64)      # a barrier of one thread: never waits
    HT = np.empty((2, H, Bc), dtype=h.dtype)
    MT = np.empty((H, Bc), dtype=h.dtype)
    AT = np.empty((H, Bc), dtype=h.dtype)
    _infer_part(np.int64(0), np.int64(1), flags, HT, MT, AT, out, h, c, m, a, x, lengths, cols, n0,
                Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, whole)


@njit(**JIT_PARALLEL)
def recurrent_infer_rows(out, h, c, m, a, n,
                         x, lengths,
                         W, U, b, gamma, beta, V_s, V_m, b_r,
                         K, psug, hgr, reverse, P):
    """``recurrent_forward`` saving nothing, with the batch rows split over P <= B
    threads that never wait for each other (P = 1 runs on one thread; any P works on
    any number of Numba threads)."""
    H = h.shape[1]
    NG = 1 if psug else 4
    whole = np.array([0, H], dtype=np.int64)      # every thread has all units
    Wp = pack_unit_rows(W, whole, NG)
    Up = pack_unit_rows(U, whole, NG)
    order = np.argsort(-lengths, kind="mergesort")   # stable: decreasing length
    n0 = n.copy()
    for p in prange(P):
        _infer_rows_part(np.int64(p), P, out, h, c, m, a, x, lengths, order, n0,
                         Wp, Up, b, gamma, beta, V_s, V_m, b_r, K, psug, hgr, reverse, whole)
    if hgr:
        advance_counters(n, n0, lengths, K)
