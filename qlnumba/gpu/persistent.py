"""The persistent step loops: every step of a layer's forward, or of its BPTT, in one
cooperative launch.

Block q owns part q: a group of rows and a group of hidden units (``persistent_plan``), and
keeps the units' slices of U (and V_s, V_m) in shared memory; its teams of threads make
U h_{t-1} for those rows and units (``team_dot``), then run their cells (the device functions
of ``cells.py``), and one step barrier per step (two on a closing step in BPTT; by default
``cuda.cg.this_grid().sync()``, see GRID_BARRIER) publishes the new h.  h, s, m and δz are
double-buffered so no block overwrites what another still reads.  The simple path
(``recurrent.py``) is the reference these loops are tested against.

Index arithmetic.  Numba types integers as signed 64-bit: ``a // b`` or ``a % b`` by a
run-time value compiles to a call of a 64-bit division (behind a test for a 32-bit fast
path) plus floor corrections, and ``range(start, stop, step)`` with a run-time step works out
its trip count by such a division too.  So the loops divide by ``arrays.divmod32`` (one
32-bit unsigned division for both results) and write their grid-stride loops as while loops.
Row and unit indices pass through ``arrays.index32``, so the compiler sees they are not
negative and leaves out Numba's wraparound code.  In sm_90 SASS (``scripts/ptx_check.py
--loops --lines``) this took the 103 (forward) and 117 (BPTT) call sites of 64-bit divisions
down to 2 and 1 (in the prologue), the kernels from 13415 and 14242 instructions to 6980 and
7261, and their spills from 120 and 128 bytes to 64 each (seventeenth session).  On an H100
that trained (64, 1024, 300, 512) 37.5% (QL-LSTM) and 25.6% (LSTM) faster than the code
before it, in the same call (eighteenth session, bench/results/README.md).  (index32 where
the compiler already knew the range made it unroll more: the row and column of team_dot's
outputs stay as they are.)

Shapes legend (device arrays, C order): those of ``cells.py``, and
  double buffers: hbuf, mbuf, Sbuf (2,B,H), DZbuf (2,B,G);  close_flags (steps,) int64
  bar (rgroups * barrier.SLOT,) int64: the spin barrier's counters (zeros before a forward)
  shared memory per block: U slice (ncol_pad, H) forward or (ncol_pad, G) backward, V_s and
    V_m slices (padded(nu), H), team partials (teams * item cols * item rows, TEAM + 1)

Tried on an H100 and taken out again, each slower than these loops (bench/results/README.md;
the code is in the history, before the commit "persistent: four options ... taken out"):
- PRELOAD_CELLS: each thread's first forward cell's loads issued before team_dot, to be in
  flight while it runs: 5% (QL-LSTM) and 4% (LSTM) slower, 348 bytes of spills against 172.
- PREFETCH_STEPS: what each cell reads at the next step prefetched into L2 (PTX prefetch.L2):
  3.5% and 3% slower.
- STAGE_ROWS: a part's rows of h (δz) copied into shared memory first, for team_dot to read
  there instead of each team from L2: 22% and 7% slower, 464 bytes of spills against 172.
- STEP_TENSOR_CORES (``mma_dot``): U h_{t-1} and U^T δz_t by mma.sync, three TF32 products:
  training 37% and 31% slower (255 registers a thread, so half the threads per block, and each
  warp's partials through shared memory, mostly padding for QL-LSTM's 8 units per block);
  only LSTM's inference gained, 11%.
"""
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import float32, float64, uint64

from . import cells, get_cuda
from .arrays import DEVICE_JIT, LINEINFO, SIM, THREADS, divmod32, index32, multiprocessors
from .barrier import SLOT, blocks_barrier

cuda = get_cuda()
TEAM = 4 if SIM else 32                  # lanes that share one team_dot item (a warp on a GPU)
# loads of h (or δz) each team_dot lane issues together per pass (then it waits for them);
# 0: no passes, every k through the one-k loop, which the compiler unrolls and pipelines.
# On an H100 (eighteenth session, one run each, bench/results/README.md) 32 trained the
# small shape 22% (QL-LSTM) and 10% (LSTM) faster than 16, and the large shape 1.4% slower.
# There a pass of 32 loads is 512 k, more than H = 256, so QL-LSTM's loops and LSTM's
# forward ran only the one-k loop.  0 (that loop at every shape; twentieth session, one call)
# trained the large shape 4.6% (QL-LSTM) and 10% (LSTM) slower than 16, the small one within 2%
TEAM_LOADS = 16
# columns of one team_dot item (4 or 8; None: the plan's choice, 4 for narrow parts, else 8,
# see persistent_plan).  A step's loops read every row of h (or δz) from L2 once per group of
# item columns: at (64, 1024, 300, 512) LSTM's forward and backward each read 67 MB per step
# with 4, 34 MB with 8.  With 8 the items default to 2 rows (the same 16 accumulators per
# lane).  On an H100 (twelfth session, bench/results/README.md) 8 trained that shape 7.6%
# (QL-LSTM) and 11% (LSTM) faster than 4, with the same results to the bit
ITEM_COLS = None
# the step barrier: "cg", cooperative groups' grid.sync() (a call into libcudadevrt, every
# block of the grid); "spin", ``barrier.blocks_barrier`` among the blocks of one row group
# (parts of different row groups share nothing: a part reads and writes only its own rows
# of h, s, m and δz), so row groups wait only for themselves; written out, the compiler sees
# the whole loop.  "cg" until "spin" is timed on a card.  A grid sync of 132 blocks took
# 1.5 µs on an H100, where a forward step of QL-LSTM at the large shape takes 7.8 µs, and
# ncu put 10-11% of the loops' stalls at block barriers, most of them warps waiting while
# their thread 0 spins in the grid sync (bench/results/README.md)
GRID_BARRIER = "cg"
GRID_BARRIERS = ("cg", "spin")
SHARED_BYTES = 48 * 1024                 # dynamic shared memory without an opt-in
TEAM1 = np.uint64(TEAM)                  # unsigned: team_dot's k loop
TEAMP = TEAM + 1                         # a padded row of team partials (see team_dot)
ONE, TWO, THREE, FOUR = (np.uint64(n) for n in (1, 2, 3, 4))
# 128 registers let a 512-thread persistent block fit one multiprocessor (ptxas: a few
# bytes of spills, against 217 registers uncapped); the simulator takes no such option.
PERSISTENT_JIT = {} if SIM else {"max_registers": 128}
# QLNUMBA_CUDA_LINEINFO=1 adds line information to both loops, so that a profiler (ncu) can
# place its stalls on lines of this file (scripts/gpu-ncu.sh sets it; arrays.lines_only lets
# NVVM compile persistent_backward with it).  scripts/ptx_check.py checks both builds
LOOP_JIT = dict(PERSISTENT_JIT, lineinfo=True) if LINEINFO else PERSISTENT_JIT


def check_grid_barrier(barrier):
    if barrier not in GRID_BARRIERS:
        raise ValueError(f"grid barrier must be one of {GRID_BARRIERS}, got {barrier!r}")


def check_item_cols(item_cols):
    if item_cols not in (4, 8):
        raise ValueError(f"item_cols must be 4 or 8, got {item_cols!r}")


@lru_cache(maxsize=None)
def persistent_kernels(dtype, item_rows, loads, item_cols, grid_barrier="cg"):
    """The persistent step loops (and their device functions) for one float dtype,
    ``team_dot`` items of ``item_rows`` rows x ``item_cols`` columns, ``loads`` loads of h
    in flight per lane and pass (compile-time constants: the register blocks need them); with
    ``loads`` 0 no passes: every k goes through the one-k loop, which the compiler unrolls
    and pipelines itself; the step barrier ``grid_barrier`` (see GRID_BARRIER)."""
    if loads < 0 or loads % item_rows:
        raise ValueError(f"team_dot's loads per pass ({loads}) must be 0 or a multiple of its "
                         f"item rows ({item_rows})")
    check_item_cols(item_cols)
    check_grid_barrier(grid_barrier)
    SPIN = grid_barrier == "spin"
    ftype = float32 if np.dtype(dtype) == np.float32 else float64
    k = cells.cell_kernels(np.dtype(dtype))
    cell_forward, cell_backward, closes_at = k["cell_forward"], k["cell_backward"], k["closes_at"]
    close_forward_cell, close_backward_cell = k["close_forward_cell"], k["close_backward_cell"]
    close_backward_finish_cell = k["close_backward_finish_cell"]
    gru_cell_forward, gru_cell_backward = k["gru_cell_forward"], k["gru_cell_backward"]
    ROWS, COLS = item_rows, item_cols
    NOUT = COLS * ROWS                                  # outputs of one item
    KPASS = loads // ROWS                               # k per pass: `loads` loads of X in flight
    PASSES = KPASS > 0                                  # loads 0: the one-k loop only
    NX = max(KPASS, 1) * ROWS                           # (local array sizes must be constants)
    KSTEP, KLAST = np.uint64(KPASS * TEAM), np.uint64(max(KPASS - 1, 0) * TEAM)

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def padded(n):
        """n columns rounded up to whole items of COLS (slices of U, V_s, V_m in shared memory)."""
        return (n + COLS - 1) // COLS * COLS

    @cuda.jit(device=True, **DEVICE_JIT)
    def part_span(q, ugroups, rgroups, B, H):
        """Part q's rows [r0, r0 + nr) and hidden units [u0, u0 + nq): unit group q % ugroups
        (nu = ceil(H / ugroups) units each), row group q // ugroups (ceil(B / rgroups) rows
        each; nr may be 0).  Returns (r0, nr, u0, nq, nu)."""
        nu = divmod32(H + ugroups - 1, ugroups)[0]
        rgroup, ugroup = divmod32(q, ugroups)
        u0 = index32(ugroup * nu)
        nrg = divmod32(B + rgroups - 1, rgroups)[0]
        r0 = index32(rgroup * nrg)
        return r0, max(0, min(B, r0 + nrg) - r0), u0, min(H, u0 + nu) - u0, nu

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def step_sync(grid, bar, ugroups, resident):
        """The step barrier: ``grid.sync()``, or with SPIN ``barrier.blocks_barrier`` among
        the blocks of this block's row group where each part has a block of its own (row
        groups share no data), else among all the blocks (the simulator's one)."""
        if SPIN:
            if resident:
                rgroup, ugroup = divmod32(cuda.blockIdx.x, ugroups)
                blocks_barrier(bar, rgroup, ugroups, ugroup == 0)
            else:
                blocks_barrier(bar, 0, cuda.gridDim.x, cuda.blockIdx.x == 0)
        else:
            grid.sync()

    @cuda.jit(device=True, **DEVICE_JIT)
    def load_slice(Ush, U, u0, nq, nu, ncol, ncol_pad, Kd, H, transpose):
        """This part's slice of U into shared memory, one row of Kd per output column c:
        forward  Ush[c*Kd + k] = U[col(c), k]   (Kd = H), the rows of U this part's units need;
        backward Ush[c*Kd + k] = U[k, col(c)]   (Kd = G), the columns (transpose);
        col(c) = (c // nu) * H + u0 + c % nu; padded or empty columns are 0."""
        e = cuda.threadIdx.x
        while e < ncol_pad * Kd:
            c, k = divmod32(e, Kd)
            gate, unit = divmod32(c, nu)
            val = ftype(0.0)
            # k < Kd always holds; said here, it let the compiler make 4% fewer instructions of
            # the whole kernel (SASS, sm_90)
            if c < ncol and unit < nq and k < Kd:
                col = gate * H + u0 + unit
                val = U[k, col] if transpose else U[col, k]
            Ush[e] = val
            e += cuda.blockDim.x

    @cuda.jit(device=True, **DEVICE_JIT)
    def team_dot(out, X, Ush, red, r0, nr, ncol, ncol_pad, nu, nq, H, u0, Kd, lengths, s, rot):
        """out[b, col(c)] = Σ_k Ush[c*Kd + k] X[b, k] for this part's columns c and its rows b
        in [r0, r0 + nr) that step at s (idle rows are not written); X in global memory.

        Teams of TEAM threads take items of ROWS rows × COLS columns, team t of round base
        item (base + t + rot) % items, rows fastest: blocks that read the same rows of
        X start at different rows (``rot``), so they do not all ask L2 for the same
        lines at once.  A team's lanes split k (consecutive k: coalesced reads of X,
        conflict-free reads of Ush), KPASS k per pass: the pass's loads of X (``loads``) are
        issued together (X was just written by other blocks: each load waits on L2).
        Then each output sums its TEAM lane partials from shared memory in lane order
        (deterministic).  Block-uniform rounds, so every thread meets every barrier."""
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        nteams = nthr // TEAM
        team, lane = divmod32(tid, TEAM)
        ngrp = ncol_pad // COLS
        nrq = (nr + ROWS - 1) // ROWS                    # groups of ROWS rows
        nitems = nrq * ngrp
        # a round's team t takes item (base + t + rot) mod nitems: with rot < nitems one
        # subtraction wraps it
        rot = divmod32(rot, nitems)[1] if nitems > 0 else 0
        rend = r0 + nr
        acc = cuda.local.array(NOUT, ftype)              # acc[r*COLS + c]: row b0 + r, column c0 + c
        xv = cuda.local.array(NX, ftype)                 # xv[kk*ROWS + r] = X[row r, k + kk TEAM]
        rows = cuda.local.array(ROWS, uint64)
        base = 0
        while base < nitems:                             # rounds: a while loop (see module doc)
            item = base + team
            for i in range(NOUT):
                acc[i] = 0.0
            if item < nitems:
                item += rot
                if item >= nitems:
                    item -= nitems
                cgroup, rgroup = divmod32(item, nrq)
                b0 = r0 + rgroup * ROWS
                c0 = cgroup * COLS
                # unsigned indices: Numba then skips the negative-index wraparound code,
                # which was most of the instructions of this loop
                for r in range(ROWS):
                    rows[r] = uint64(min(b0 + r, rend - 1))
                kd = uint64(Kd)
                w = uint64(c0 * Kd)                              # column c0's row of Ush
                k = uint64(lane)
                while PASSES and k + KLAST < kd:                 # a pass: KPASS k, all loads first
                    for kk in range(KPASS):
                        for r in range(ROWS):
                            xv[kk * ROWS + r] = X[rows[r], k + uint64(kk * TEAM)]
                    for kk in range(KPASS):
                        kq = w + k + uint64(kk * TEAM)
                        for c in range(COLS):
                            u = Ush[kq + uint64(c) * kd]
                            for r in range(ROWS):
                                acc[r * COLS + c] += u * xv[kk * ROWS + r]
                    k += KSTEP
                while k < kd:                                    # the rest, one k at a time
                    for r in range(ROWS):
                        xv[r] = X[rows[r], k]
                    for c in range(COLS):
                        u = Ush[w + k + uint64(c) * kd]
                        for r in range(ROWS):
                            acc[r * COLS + c] += u * xv[r]
                    k += TEAM1
            # partial i of lane l of team t at red[(NOUT t + i) (TEAM + 1) + l]: the padding
            # puts the outputs a warp sums below in different banks (with rows of exactly
            # TEAM they all fell in one bank: 32-way conflicts on every load)
            wr = uint64((team * NOUT) * TEAMP + lane)    # unsigned: no wraparound code (above)
            for i in range(NOUT):
                red[wr + uint64(i * TEAMP)] = acc[i]
            cuda.syncthreads()
            o = tid
            while o < nteams * NOUT:
                tm, i = divmod32(o, NOUT)                # team tm's output i: row b0 + i // COLS, column c0 + i % COLS
                item = base + tm
                if item < nitems:
                    item += rot
                    if item >= nitems:
                        item -= nitems
                    cgroup, rgroup = divmod32(item, nrq)
                    b = r0 + rgroup * ROWS + i // COLS
                    c = cgroup * COLS + i % COLS
                    gate, unit = divmod32(c, nu)         # column c: gate c // nu's unit u0 + c % nu
                    if b < rend and c < ncol and unit < nq and s < lengths[b]:
                        # the TEAM lane partials in four interleaved chains (lanes l, l+4, ...),
                        # then the chains in order: a fixed order, a quarter of the latency
                        q = uint64(o * TEAMP)
                        end = q + TEAM1
                        p0 = p1 = p2 = p3 = ftype(0.0)
                        while q < end:
                            p0 += red[q]
                            p1 += red[q + ONE]
                            p2 += red[q + TWO]
                            p3 += red[q + THREE]
                            q += FOUR
                        out[b, gate * H + u0 + unit] = (p0 + p1) + (p2 + p3)
                o += nthr
            cuda.syncthreads()
            base += nteams

    @cuda.jit(device=True, **DEVICE_JIT)
    def load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, Kd, H, transpose, hgr):
        """Part (u0, nq)'s slices of U, and with hgr of V_s and V_m, into shared memory
        (``load_slice``; V slices have one column per unit, read as rows or, in
        backward, as columns)."""
        load_slice(Ush, U, u0, nq, nu, ncol, ncol_pad, Kd, H, transpose)
        if hgr:
            nu_pad = padded(nu)
            load_slice(Vs_sh, V_s, u0, nq, nu, nu, nu_pad, H, H, transpose)
            load_slice(Vm_sh, V_m, u0, nq, nu, nu, nu_pad, H, H, transpose)

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, Kd, H,
                    transpose, hgr):
        """``load_part`` between barriers, where a block serves several parts (the slices
        of a resident block were loaded once, before the step loop)."""
        if not resident:
            cuda.syncthreads()
            load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, Kd, H, transpose, hgr)
            cuda.syncthreads()

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def shared_views(nslice, nv):
        """The dynamic shared memory of a persistent block: (U slice of nslice values, V_s and
        V_m slices of nv values each, the team partials in the rest)."""
        dyn = cuda.shared.array(0, ftype)
        x0 = nslice + 2 * nv
        return dyn[:nslice], dyn[nslice:nslice + nv], dyn[nslice + nv:x0], dyn[x0:]

    @cuda.jit(**LOOP_JIT)
    def persistent_forward(out, hbuf, c, mbuf, a, Sbuf, Z, GATES, C, CPREV, HPREV, MBLK, SBLK,
                           RBLK, hU, P, Q, lengths, n0, close_flags, bar, U, b, gamma, beta, V_s,
                           V_m, b_r, steps, K, ugroups, rgroups, psug, hgr, reverse):
        """Every step in one cooperative launch: block q owns part q, a group of rows and
        a group of hidden units (``part_span``), and keeps the units' rows of U (all
        four gates), V_s and V_m in shared memory, so a step needs one grid sync.

        Per step: U h_{t-1} for the part's rows and units (``team_dot``), then their
        cells, then a grid sync, then (on a closing step) V_s s and V_m m for them and
        their block close.  h alternates between hbuf[0] and hbuf[1] (step s reads
        hbuf[s % 2]); the block summary s between Sbuf[0] and Sbuf[1] by step; m
        between mbuf[0] and mbuf[1] by close, so a close reads every unit's old m
        while writing its own new one.  When there are more parts than blocks (the
        simulator's one block), a block loops over parts and reloads each slice.
        """
        grid = cuda.cg.this_grid()
        B, H = c.shape
        G = U.shape[0]
        nparts = ugroups * rgroups
        nu = (H + ugroups - 1) // ugroups
        ncol = (G // H) * nu
        ncol_pad = padded(ncol)
        nv = padded(nu) * H if hgr else 0
        Ush, Vs_sh, Vm_sh, red = shared_views(ncol_pad * H, nv)
        resident = nparts == cuda.gridDim.x
        if resident:
            r0, nr, u0, nq, nu = part_span(cuda.blockIdx.x, ugroups, rgroups, B, H)
            load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, H, H, False, hgr)
            cuda.syncthreads()
        closes = 0
        for s in range(steps):
            hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
            m, S = mbuf[closes % 2], Sbuf[s % 2]
            q = cuda.blockIdx.x
            while q < nparts:
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                rot = divmod32(q, ugroups)[1]
                reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                            ncol, ncol_pad, H, H, False, hgr)
                team_dot(hU, hcur, Ush, red, r0, nr, ncol, ncol_pad, nu, nq, H, u0, H,    # U h_{t-1}
                         lengths, s, rot)
                e = cuda.threadIdx.x
                while e < nr * nq:
                    row, unit = divmod32(e, nq)
                    bb, j = index32(r0 + row), index32(u0 + unit)
                    cell_forward(out, hcur, hnext, c, m, a, Z, GATES, C, CPREV, HPREV, hU,
                                 lengths, b, gamma, beta, s, psug, hgr, reverse, bb, j)
                    if hgr and closes_at(lengths, n0, s, K, bb):
                        S[bb, j] = a[bb, j] / ftype(K)                    # s = a / K (cells.close_summary_cell)
                    e += cuda.blockDim.x
                q += cuda.gridDim.x
            step_sync(grid, bar, ugroups, resident)
            if hgr and close_flags[s]:
                mnext = mbuf[(closes + 1) % 2]
                q = cuda.blockIdx.x
                while q < nparts:
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    rot = divmod32(q, ugroups)[1]
                    reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                                ncol, ncol_pad, H, H, False, hgr)
                    nu_pad = padded(nu)
                    team_dot(P, S, Vs_sh, red, r0, nr, nu, nu_pad, nu, nq, H, u0, H, lengths, s,
                             rot)                                               # V_s s
                    team_dot(Q, m, Vm_sh, red, r0, nr, nu, nu_pad, nu, nq, H, u0, H, lengths, s,
                             rot)                                               # V_m m
                    e = cuda.threadIdx.x
                    while e < nr * nq:
                        row, unit = divmod32(e, nq)
                        bb, j = index32(r0 + row), index32(u0 + unit)
                        close_forward_cell(mnext, m, a, MBLK, SBLK, RBLK, S, P[bb, j] + Q[bb, j], b_r,
                                           lengths, n0, s, K, bb, j)
                        e += cuda.blockDim.x
                    q += cuda.gridDim.x
                closes += 1
                cuda.syncthreads()

    @cuda.jit(**LOOP_JIT)
    def persistent_backward(DZ, DZbuf, SUMS, DP, DP_step, dmV, dsV, dh, dc, dm, da, dout,
                            GATES, C, CPREV, Z, MBLK, SBLK, RBLK, lengths, n0, close_flags, bar,
                            U, gamma, V_s, V_m, steps, K, ugroups, rgroups, psug, hgr, reverse):
        """BPTT of ``persistent_forward`` in one cooperative launch, steps in reverse.

        Block q owns part q's rows and units and keeps U[:, units] (and V_s,
        V_m[:, units]) in shared memory.  Per step: (on a closing step: the close rule,
        a grid sync, V^T δp for its part), the cells, a grid sync, then δh_{t-1} =
        U^T δz_t for its part.  δz_t alternates between DZbuf[0] and DZbuf[1] by step.
        A thread keeps the same (row, unit) in the close and cell loops of a step, so
        δm, δa, δc need no barrier there.
        """
        grid = cuda.cg.this_grid()
        B, H = dh.shape
        G = U.shape[0]
        nparts = ugroups * rgroups
        nu = (H + ugroups - 1) // ugroups
        ncol_pad = padded(nu)
        nv = ncol_pad * H if hgr else 0
        Ush, Vs_sh, Vm_sh, red = shared_views(ncol_pad * G, nv)
        resident = nparts == cuda.gridDim.x
        if resident:
            r0, nr, u0, nq, nu = part_span(cuda.blockIdx.x, ugroups, rgroups, B, H)
            load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, nu, ncol_pad, G, H, True, hgr)
            cuda.syncthreads()
        for s in range(steps - 1, -1, -1):
            DZs = DZbuf[s % 2]
            if hgr and close_flags[s]:                                    # the close rule first
                q = cuda.blockIdx.x
                while q < nparts:
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    e = cuda.threadIdx.x
                    while e < nr * nq:
                        row, unit = divmod32(e, nq)
                        close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s,
                                            K, index32(r0 + row), index32(u0 + unit))
                        e += cuda.blockDim.x
                    q += cuda.gridDim.x
                step_sync(grid, bar, ugroups, resident)
                q = cuda.blockIdx.x
                while q < nparts:
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    rot = divmod32(q, ugroups)[1]
                    reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                                nu, ncol_pad, G, H, True, hgr)
                    team_dot(dmV, DP_step, Vm_sh, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, H,
                             lengths, s, rot)
                    team_dot(dsV, DP_step, Vs_sh, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, H,
                             lengths, s, rot)
                    e = cuda.threadIdx.x
                    while e < nr * nq:
                        row, unit = divmod32(e, nq)
                        bb, j = index32(r0 + row), index32(u0 + unit)
                        if closes_at(lengths, n0, s, K, bb):              # V_m^T δp, V_s^T δp
                            close_backward_finish_cell(dm, da, dmV[bb, j], dsV[bb, j], K, bb, j)
                        e += cuda.blockDim.x
                    q += cuda.gridDim.x
            q = cuda.blockIdx.x
            while q < nparts:
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                e = cuda.threadIdx.x
                while e < nr * nq:
                    row, unit = divmod32(e, nq)
                    cell_backward(DZ, DZs, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma,
                                  lengths, s, psug, hgr, reverse, index32(r0 + row), index32(u0 + unit))
                    e += cuda.blockDim.x
                q += cuda.gridDim.x
            step_sync(grid, bar, ugroups, resident)
            q = cuda.blockIdx.x
            while q < nparts:
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                rot = divmod32(q, ugroups)[1]
                reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                            nu, ncol_pad, G, H, True, hgr)
                # δh_{t-1} = U^T δz_t for the rows that stepped; idle rows keep theirs
                team_dot(dh, DZs, Ush, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, G, lengths, s, rot)
                q += cuda.gridDim.x

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def gru_slice(U, B, H, ugroups, rgroups, forward):
        """The GRU loops' shared memory, and a resident block's slice of U loaded: forward, the
        rows of its units' three gates (Kd = H); backward, its units' columns (Kd = G).
        Returns (ncol, ncol_pad, Kd, Ush, red, resident)."""
        G = U.shape[0]
        nu = (H + ugroups - 1) // ugroups
        ncol, Kd = ((G // H) * nu, H) if forward else (nu, G)
        ncol_pad = padded(ncol)
        Ush, _, _, red = shared_views(ncol_pad * Kd, 0)
        resident = ugroups * rgroups == cuda.gridDim.x
        if resident:
            r0, nr, u0, nq, nu = part_span(cuda.blockIdx.x, ugroups, rgroups, B, H)
            load_slice(Ush, U, u0, nq, nu, ncol, ncol_pad, Kd, H, not forward)
            cuda.syncthreads()
        return ncol, ncol_pad, Kd, Ush, red, resident

    @cuda.jit(device=True, inline=True, **DEVICE_JIT)
    def gru_part_dot(out, X, Ush, red, U, resident, q, ugroups, rgroups, B, H, ncol, ncol_pad, Kd,
                     forward, lengths, s):
        """Part q's product with its slice of U (``team_dot``; a block that serves several
        parts loads each part's slice first): forward U h_{t-1}, backward U^T δ.  Returns
        the part's (r0, nr, u0, nq)."""
        r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
        if not resident:
            cuda.syncthreads()
            load_slice(Ush, U, u0, nq, nu, ncol, ncol_pad, Kd, H, not forward)
            cuda.syncthreads()
        team_dot(out, X, Ush, red, r0, nr, ncol, ncol_pad, nu, nq, H, u0, Kd, lengths, s,
                 divmod32(q, ugroups)[1])
        return r0, nr, u0, nq

    @cuda.jit(**LOOP_JIT)
    def persistent_gru_forward(out, hbuf, GATES, HN, HPREV, ZX, hU, lengths, bar, U, b, b_U,
                               steps, ugroups, rgroups, reverse):
        """GRU's every step in one cooperative launch: ``persistent_forward``'s parts and
        plan, without the block memory.  Block q keeps its units' rows of U (three gates)
        in shared memory; per step U h_{t-1} for its rows and units (``team_dot``), then
        their cells (``cells.gru_cell_forward``), then the step barrier.  h alternates
        between hbuf[0] and hbuf[1] (step s reads hbuf[s % 2])."""
        grid = cuda.cg.this_grid()
        B, H = hbuf.shape[1], hbuf.shape[2]
        ncol, ncol_pad, Kd, Ush, red, resident = gru_slice(U, B, H, ugroups, rgroups, True)
        for s in range(steps):
            hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
            q = cuda.blockIdx.x
            while q < ugroups * rgroups:
                r0, nr, u0, nq = gru_part_dot(hU, hcur, Ush, red, U, resident, q, ugroups, rgroups,   # U h
                                              B, H, ncol, ncol_pad, Kd, True, lengths, s)
                e = cuda.threadIdx.x
                while e < nr * nq:
                    row, unit = divmod32(e, nq)
                    gru_cell_forward(out, hcur, hnext, GATES, HN, HPREV, ZX, hU, lengths, b, b_U, s,
                                     reverse, index32(r0 + row), index32(u0 + unit))
                    e += cuda.blockDim.x
                q += cuda.gridDim.x
            step_sync(grid, bar, ugroups, resident)

    @cuda.jit(**LOOP_JIT)
    def persistent_gru_backward(DX, DHID, DHbuf, dhU, dh, dout, GATES, HN, HPREV, lengths, bar, U,
                                steps, ugroups, rgroups, reverse):
        """BPTT of ``persistent_gru_forward`` in one cooperative launch, steps in reverse.
        Block q keeps U[:, its units] (all three gates' rows) in shared memory.  Per step:
        the cells (``cells.gru_cell_backward``: δ of the pre-activations into DHbuf[s % 2],
        δh_t u into dh), the step barrier, then U^T δ for its rows and units (``team_dot``)
        added to dh.  The δ alternate between DHbuf[0] and DHbuf[1] by step, so no block
        overwrites what another still reads."""
        grid = cuda.cg.this_grid()
        B, H = dh.shape
        ncol, ncol_pad, Kd, Ush, red, resident = gru_slice(U, B, H, ugroups, rgroups, False)
        for s in range(steps - 1, -1, -1):
            DHs = DHbuf[s % 2]
            q = cuda.blockIdx.x
            while q < ugroups * rgroups:
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                e = cuda.threadIdx.x
                while e < nr * nq:
                    row, unit = divmod32(e, nq)
                    gru_cell_backward(DX, DHID, DHs, dh, dout, GATES, HN, HPREV, lengths, s, reverse,
                                      index32(r0 + row), index32(u0 + unit))
                    e += cuda.blockDim.x
                q += cuda.gridDim.x
            step_sync(grid, bar, ugroups, resident)
            q = cuda.blockIdx.x
            while q < ugroups * rgroups:
                r0, nr, u0, nq = gru_part_dot(dhU, DHs, Ush, red, U, resident, q, ugroups, rgroups,  # U^T δ
                                              B, H, ncol, ncol_pad, Kd, False, lengths, s)
                e = cuda.threadIdx.x
                while e < nr * nq:                # δh_{t-1} = δh_t u + U^T δ, the rows that stepped
                    row, unit = divmod32(e, nq)
                    bb, j = index32(r0 + row), index32(u0 + unit)
                    if s < lengths[bb]:
                        dh[bb, j] += dhU[bb, j]
                    e += cuda.blockDim.x
                q += cuda.gridDim.x

    return dict(persistent_forward=persistent_forward, persistent_backward=persistent_backward,
                persistent_gru_forward=persistent_gru_forward,
                persistent_gru_backward=persistent_gru_backward)


Plan = namedtuple("Plan", "ugroups rgroups item_rows blocks threads fwd_bytes bwd_bytes item_cols")


@lru_cache(maxsize=None)
def shared_limit():
    """Bytes of dynamic shared memory a block may have: the device's opt-in maximum
    (``opt_in_shared`` raises a kernel's limit to it), 48 KB in the simulator."""
    if SIM:
        return SHARED_BYTES
    try:
        return int(cuda.get_current_device().MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
    except (AttributeError, KeyError):               # pragma: no cover - old drivers
        return SHARED_BYTES


def persistent_plan(B, H, G, itemsize, hgr, row_groups=None, item_rows=None, item_cols=None):
    """How the persistent kernels split the rows and hidden units, or None where they
    cannot run.

    Returns a ``Plan``: parts are ``rgroups`` groups of rows times ``ugroups`` groups
    of units.  On a GPU there is one part per block and at most one block per
    multiprocessor, so every block is resident (a grid sync needs that); each part's
    slices of U (and V_s, V_m) and the team partials must fit the block's dynamic
    shared memory (``shared_limit``).  More row groups mean fewer rows of h (or δz)
    for each block to read per step, but more units, so larger slices of U.
    ``team_dot`` items of ``item_rows`` rows (1, 2 or 4): 4 halves the rounds of a step; 1
    doubles the items, so that a part with fewer items than teams keeps more of its teams
    at work.  The defaults (None) were measured on an H100 (bench/results/README.md): two
    row groups from 16 rows up (else one); with items of 4 columns, items of 4 rows where a
    group has 4 rows (else 2): at (B, T, E, H) = (64, 1024, 300, 512) that trained
    QL-LSTM 17% and LSTM 20% faster than one group and items of 2.  Narrow parts, whose
    forward has at most 4 columns (G/H x units), take items of 1 row x 4 columns: no
    padding, and one item per row.  At (32, 256, 128, 256) QL-LSTM's parts have 4 units:
    items of 2 x 8 were half padding, and 8 of them left half of the 16 teams idle; 1 x 4
    trained it 31% faster (twentieth session; narrower parts, and LSTM's of 1 unit, not
    timed).  Blocks of 512 threads (registers capped at 128, see PERSISTENT_JIT) hide more
    of the step's memory latency than 256; 256 where 512 do not fit.  The simulator runs
    one block that loops over every part (so the partition logic is tested there too).
    Items of ``item_cols`` columns (4 or 8; None: ``ITEM_COLS``, whose None is 4 for narrow
    parts, else 8), 2 rows by default with 8.  None also where B x G reaches 2**31: the
    loops' index arithmetic is 32-bit (``divmod32``, ``index32``).
    """
    if B * G >= 2 ** 31:
        return None
    rgroups = max(1, min(B, (2 if B >= 16 else 1) if row_groups is None else int(row_groups)))
    blocks = min(3, H) * rgroups if SIM else multiprocessors()
    if blocks < rgroups:
        return None
    nu = -(-H // (blocks // rgroups))
    ugroups = -(-H // nu)
    cols = ITEM_COLS if item_cols is None else int(item_cols)
    # narrow parts: the forward's columns (G/H x nu) fit in one item of 4 columns
    narrow = cols is None and (G // H) * nu <= 4
    if cols is None:
        cols = 4 if narrow else 8
    check_item_cols(cols)
    if item_rows is not None:
        rows = int(item_rows)
    elif narrow:
        rows = 1
    else:
        rows = 4 if -(-B // rgroups) >= 4 and cols == 4 else 2
    if rows not in (1, 2, 4):
        raise ValueError(f"item_rows must be 1, 2 or 4, got {item_rows!r}")
    pad = lambda n: (n + cols - 1) // cols * cols
    v = 2 * pad(nu) * H if hgr else 0
    limit = shared_limit()
    for threads in ((THREADS,) if SIM else (512, 256)):
        red = cols * rows * (threads // TEAM) * (TEAM + 1)
        fwd = (pad((G // H) * nu) * H + v + red) * itemsize
        bwd = (pad(nu) * G + v + red) * itemsize
        if max(fwd, bwd) <= limit:
            return Plan(ugroups, rgroups, rows, 1 if SIM else ugroups * rgroups, threads, fwd, bwd, cols)
    return None


_func_shared = {}          # id(compiled function) -> the dynamic shared memory it is allowed
_launch_ready = set()      # (id(dispatcher), bytes, its overload count) already checked


def opt_in_shared(dispatcher, args, nbytes):
    """Let the kernel that ``dispatcher`` runs for ``args`` have ``nbytes`` of dynamic shared
    memory: from 48 KB up a launch needs the driver's function attribute set first
    (numba-cuda 0.30 has no option for it, so it is set on the compiled function)."""
    if SIM or nbytes < SHARED_BYTES:
        return
    ready = (id(dispatcher), nbytes, len(dispatcher.overloads))   # typing 40 arguments costs
    if ready in _launch_ready:
        return
    kernel = dispatcher.compile(tuple(dispatcher.typeof_pyval(v) for v in args))
    func = kernel._codelibrary.get_cufunc()
    if _func_shared.get(id(func), 0) < nbytes:
        from numba.cuda.cudadrv import driver as drv
        binding = getattr(drv, "binding", None)
        if binding is not None and hasattr(binding, "CUfunction_attribute"):
            attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        else:                                        # pragma: no cover - ctypes binding
            from numba.cuda.cudadrv import enums
            attr = enums.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        try:
            drv.driver.cuFuncSetAttribute(func.handle, attr, int(nbytes))
        except drv.CudaAPIError:
            # numba-cuda 0.30 loads kernels as library kernels (CUkernel): take the
            # context's CUfunction of the kernel
            drv.driver.cuFuncSetAttribute(drv.driver.cuKernelGetFunction(func.handle), attr, int(nbytes))
        _func_shared[id(func)] = nbytes
    _launch_ready.add((id(dispatcher), nbytes, len(dispatcher.overloads)))


def launch_persistent(dispatcher, plan, nbytes, *args):
    """One cooperative launch of a persistent kernel with ``plan``'s grid."""
    opt_in_shared(dispatcher, args, nbytes)
    dispatcher[plan.blocks, plan.threads, 0, nbytes](*args)


def loops(dtype, plan):
    """The persistent kernels (persistent_forward, persistent_backward, and GRU's
    persistent_gru_forward, persistent_gru_backward) for ``plan``, with this module's
    TEAM_LOADS and GRID_BARRIER."""
    return persistent_kernels(np.dtype(dtype), plan.item_rows, TEAM_LOADS, plan.item_cols, GRID_BARRIER)


def barrier_slots(plan):
    """int64 values of the counters buffer (``bar``) the loops take: one counter per row
    group (``barrier.SLOT`` values each)."""
    return plan.rgroups * SLOT
