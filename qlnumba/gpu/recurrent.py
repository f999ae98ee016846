"""QL-LSTM recurrent layer on the GPU, one direction: two step loops.

The same equations and buffers as ``qlnumba/kernels/recurrent.py`` (read that
file first).  The products before and after the step loop (x W^T, the weight
gradients) are register-blocked shared-memory launches (``matmul``, split k where
the product has few tiles; ``pick_tile`` chooses the tile): for float32 with
MATMUL_TENSOR_CORES (the default), TF32 tensor-core ones (``tensor_cores.py``).
The step loop is either

- persistent (``persistent_forward`` / ``persistent_backward``, the default):
  one cooperative launch runs every step (``persistent_kernels``).  Block q owns
  part q: a group of rows and a group of hidden units (``persistent_plan``), and
  keeps the units' slices of U (and V_s, V_m) in shared memory; its teams of
  threads make U h_{t-1} for those rows and units (``team_dot``; or its warps on
  tensor cores, ``mma_dot``, with STEP_TENSOR_CORES), then run their cells, and one
  ``cuda.cg.this_grid().sync()`` per step (two on a closing step in BPTT) publishes the
  new h.  h, s, m and δz are double-buffered so no block overwrites what another still
  reads.  The per-element bodies are the device functions ``cell_forward``,
  ``close_*_cell``, ``cell_backward`` shared with
- simple (the tested reference): a few launches per step, a tiled product
  U h_{t-1}, then one thread per (row, hidden unit).

Gradient sums over rows and steps are loops in a fixed order, never atomics, so
results are deterministic.

Shapes legend (device arrays, C order)
  B rows, T padded steps, E inputs, H hidden units, G = H (psug) or 4H, K block length,
  NB = (T + K - 1) // K
  x (B,T,E)  out (B,T,H)  state h, c, m, a (B,H)
  saved: Z (B,T,G), GATES (B,T,4,H), C, CPREV, HPREV (B,T,H), MBLK (B,NB+1,H), SBLK, RBLK (B,NB,H)
  backward scratch: DZ (B,T,G), DZ_step (B,G), DP (B,NB,H) δ of the block gates, DP_step (B,H),
    SUMS (B,NS,H) each row's sums over its steps for the bias (and PSUG's γ, β) gradients:
    NS = 4 (δb as (4,H)) or, with psug, 9 (δb, then δγ_k, then δβ_k)
  persistent double buffers: hbuf, mbuf, Sbuf (2,B,H), DZbuf (2,B,G); shared memory per
    block: U slice (ncol_pad, H) forward or (ncol_pad, G) backward (rows MMA_PAD longer with
    mma_dot), V_s and V_m slices, team partials (teams * item cols * item rows, TEAM + 1) or,
    where larger, mma_dot's (warps, 32 * 32)
Every kernel loops over its elements with a grid stride, so any launch shape is
correct (the simulator runs few threads; a GPU runs many).
"""
import math
import os
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import float32, float64, int64, uint64

from . import get_cuda
from .prefetch import prefetch_l2

cuda = get_cuda()
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# matrix product tiles: (TY, TX) threads per block, TM x TN outputs each, k-slabs of BK;
# PF = 1: the next slab is loaded into registers while the block computes on this one
# (two shared buffers, one barrier per slab); PF = S >= 2, tensor-core tiles only: S shared
# buffers, S - 1 slabs on their way by cp.async.  MMA = 1 or 3: tensor cores, float32 only
# (``tensor_cores``: TY x TX warps, each a TM x TN tile of C; TF32 inputs, one product
# per mma, or three for float32 accuracy).  MATMUL_TILE names the one ``matmul`` uses
Tile = namedtuple("Tile", "TY TX TM TN BK PF MMA", defaults=(0, 0))
TILES = ({"64x64": Tile(2, 2, 2, 2, 2), "128x128": Tile(2, 2, 4, 4, 2),
          "64x64pf": Tile(2, 2, 2, 2, 2, 1), "128x128pf": Tile(2, 2, 4, 4, 2, 1),
          "128x128tf32": Tile(2, 1, 16, 16, 16, 1, 1), "128x128tf32x3": Tile(2, 1, 16, 16, 16, 1, 3),
          "128x128tf32k8": Tile(2, 1, 16, 16, 8, 1, 1), "128x128tf32x3k8": Tile(2, 1, 16, 16, 8, 1, 3),
          "128x128tf32as": Tile(2, 1, 16, 16, 8, 4, 1), "128x128tf32x3as": Tile(2, 1, 16, 16, 8, 4, 3),
          "128x128tf32x3as16": Tile(2, 1, 16, 16, 16, 2, 3)}
         if SIM else
         {"64x64": Tile(16, 16, 4, 4, 16), "128x128": Tile(16, 16, 8, 8, 8),
          "64x64pf": Tile(16, 16, 4, 4, 16, 1), "128x128pf": Tile(16, 16, 8, 8, 8, 1),
          # 8 warps of 64 x 32.  ptxas (scripts/ptx_check.py, sm_90), since the slab moves take
          # their places from ``slab_places``: tf32 130 registers, tf32x3 172; with k-slabs of 8:
          # 160 and 168; no spills (before: 255, 255 and 52 bytes of spills, 191, 244).  On an
          # H100 the slabs of 16 made 3-8% more GFLOP/s than those of 8 (tf32x3, spills and all;
          # before its sums moved out of the tensor cores: tensor_cores.mma3_into), so "auto"
          # takes them
          "128x128tf32": Tile(2, 4, 64, 32, 16, 1, 1), "128x128tf32x3": Tile(2, 4, 64, 32, 16, 1, 3),
          "128x128tf32k8": Tile(2, 4, 64, 32, 8, 1, 1), "128x128tf32x3k8": Tile(2, 4, 64, 32, 8, 1, 3),
          # cp.async straight into shared memory, no registers on the way: k-slabs of 8, 4 buffers
          # (35 KB), 3 slabs in flight; or slabs of 16, 2 buffers.  The tiles above made 15-23
          # TFLOP/s on an H100 with one slab in flight in registers (bench/results/README.md).
          # ptxas: 167 (tf32), 240 (tf32x3) and 252 (slabs of 16) registers, no spills.  Not yet
          # timed
          "128x128tf32as": Tile(2, 4, 64, 32, 8, 4, 1), "128x128tf32x3as": Tile(2, 4, 64, 32, 8, 4, 3),
          "128x128tf32x3as16": Tile(2, 4, 64, 32, 16, 2, 3)})
MATMUL_TILE = "auto"                     # see pick_tile
MATMUL_PREFETCH = True                   # "auto" takes the pf tiles (1.1-2.8x the plain ones' GFLOP/s, H100)
# "auto" takes a tensor-core tile for float32 products: "off", "tf32" (TF32 inputs: 10
# bits of mantissa; PyTorch lets cuDNN use TF32 by default) or "tf32x3" (each input split into
# two TF32 parts, three products: float32's accuracy).  On an H100 (twelfth session) tf32x3
# trained (64, 1024, 300, 512) 2-4% faster, but LSTM's weight gradients came out 20x further
# from the CPU than with the float32 tiles (4.6e-5 of their largest value): the tensor cores'
# sums truncate.  tensor_cores.mma3_into now adds each 8 k's products outside them, and on an
# H100 (fourteenth session, two runs) tf32x3 trained QL-LSTM 1-3% and LSTM 7% faster than
# the float32 tiles, 6.6e-6 off the CPU layer (6.5e-6 with them): the default
MATMUL_TENSOR_CORES = "tf32x3"
THREADS = 8 if SIM else 256              # threads per block for element-wise kernels
TEAM = 4 if SIM else 32                  # lanes that share one team_dot item (a warp on a GPU)
MAX_BLOCKS = 2 if SIM else 1024
# loads of h (or δz) each team_dot lane issues together per pass (then it waits for them):
# 16 is what the H100 runs measured; 32 halves the passes and compiles without spills in
# the pass loop (ptxas, 128 registers), not yet timed (bench/gpu.py --team-loads 32)
TEAM_LOADS = 16
# columns of one team_dot item (4 or 8).  A step's loops read every row of h (or δz) from L2
# once per group of ITEM_COLS columns: at (64, 1024, 300, 512) LSTM's forward and backward
# each read 67 MB per step with 4, 34 MB with 8.  With 8 the items default to 2 rows (the same
# 16 accumulators per lane).  On an H100 (twelfth session, bench/results/README.md) 8 trained
# that shape 7.6% (QL-LSTM) and 11% (LSTM) faster than 4, with the same results to the bit
ITEM_COLS = 8
# the persistent forward loop issues each thread's first cell's loads of h, c, a, m and x W^T
# (``cell_inputs``: from HBM, none of them written by team_dot) before its team_dot, so that
# they are in flight while it runs, not waited for after it.  ptxas: 348 bytes of spills
# against 172 without.  On an H100 (twelfth session) 5% (QL-LSTM) and 4% (LSTM) slower: off
PRELOAD_CELLS = False
# at each step the persistent loops prefetch into L2 (``prefetch.prefetch_l2``, no registers
# held) what each thread's cell reads at the next step from device memory: x W^T (forward;
# the product before the loop wrote it long ago) and the saved gates, c_t, c_{t-1}, δout (BPTT).
# After each grid sync those loads otherwise wait for device memory.  Changes no value.  On an
# H100 (fourteenth session, bench/results/README.md) 3.5% (QL-LSTM) and 3% (LSTM) slower: off
PREFETCH_STEPS = False
# the step loops' product U h_{t-1} (forward) and U^T δz_t (BPTT) on tensor cores, float32 layers
# only (``mma_dot``: mma.sync with three TF32 products, float32's accuracy).  Why: with team_dot a
# block reads its rows of h (δz) from L2 once per group of 8 columns, and reads U from shared
# memory once per 2 rows; at (64, 1024, 300, 512) LSTM's forward reads 33.5 MB of L2 and about
# 1 MB of shared memory per block per step, and makes 0.5M FMAs per multiprocessor: by a count
# at nominal rates, 2-6 µs of a step each on an H100.  With mma_dot a block reads its rows once
# (LSTM forward: 8.7 MB per step in all) and U's slice once.  On an H100 (fourteenth session)
# training was 37% (QL-LSTM) and 31% (LSTM) slower, only LSTM's inference 11% faster: 255
# registers a thread allow half team_dot's threads per block, and each warp's partials go
# through shared memory, mostly padding for QL-LSTM's 8 units per block.  Off
STEP_TENSOR_CORES = False
MMA_PAD = 4                              # mma_dot: U's rows in shared memory, this much longer
MMA_TILES = (2, 4)                       # mma_dot: a warp's block of outputs, in mma tiles of 16 x 8
MMA_THREADS = 64                         # simulator: threads of a persistent block with mma_dot
MMA_LOADS = 32                           # mma_dot: loads of X per lane and pass
# the persistent loops first copy their part's rows of h_{t-1} (forward) or δz_t (backward)
# from global memory into shared memory, all threads at once, where they fit (persistent_plan):
# team_dot then reads them from there, instead of each team from L2 (a row is read by every
# team whose columns need it: 2 to 8 times at (64, 1024, 300, 512)).  On an H100 (twelfth
# session) 22% (QL-LSTM) and 7% (LSTM) slower: off.  ptxas at the 128-register cap
# (scripts/ptx_check.py): the staged float32 forward spills 464 bytes against 172 unstaged (the
# backward 236 against 200)
STAGE_ROWS = False
SHARED_BYTES = 48 * 1024                 # dynamic shared memory without an opt-in
TEAM1 = np.uint64(TEAM)                  # unsigned: team_dot's k loop
TEAMP = TEAM + 1                         # a padded row of team partials (see team_dot)
ONE, TWO, THREE, FOUR = (np.uint64(n) for n in (1, 2, 3, 4))
# 128 registers let a 512-thread persistent block fit one multiprocessor (ptxas: a few
# bytes of spills, against 217 registers uncapped); the simulator takes no such option.
# QLNUMBA_CUDA_LINEINFO=1 adds line information, so that a profiler (ncu) can place the
# persistent kernels' stalls on lines of this file (scripts/gpu-ncu.sh sets it)
PERSISTENT_JIT = {} if SIM else {"max_registers": 128,
                                 "lineinfo": os.environ.get("QLNUMBA_CUDA_LINEINFO") == "1"}


def block_threads(tile):
    """Threads per block of a matrix-product tile: TY x TX, or TY x TX warps."""
    return tile.TY * tile.TX * (32 if tile.MMA else 1)


def slab_shares(tile):
    """(SLAB_A, SLAB_B, NT, LA, LB): the values of a (BM, BK) slab of A and a (BK, BN) slab
    of B, the threads of a block, and how many of each slab's values each thread moves."""
    SLAB_A, SLAB_B = tile.BK * tile.TM * tile.TY, tile.BK * tile.TN * tile.TX
    NT = block_threads(tile)
    return SLAB_A, SLAB_B, NT, -(-SLAB_A // NT), -(-SLAB_B // NT)


def mod_div(D, NT):
    """A device function md(tid, r) -> ((tid + r NT) % D, (tid + r NT) // D), uint64, for
    0 <= tid < NT with NT a multiple of D or D of NT (every tile's sizes are powers of two):
    a part of tid plus a part of r, so that once the caller's loop over r is unrolled each
    value costs an add, not a signed division and remainder of its own."""
    DU, NTU = np.uint64(D), np.uint64(NT)
    if NT % D == 0:
        QU = np.uint64(NT // D)

        @cuda.jit(device=True, inline=True)
        def md(tid, r):
            t = uint64(tid)
            return t % DU, t // DU + uint64(r) * QU
    elif D % NT == 0:
        QU = np.uint64(D // NT)

        @cuda.jit(device=True, inline=True)
        def md(tid, r):
            return uint64(tid) + (uint64(r) % QU) * NTU, uint64(r) // QU
    else:
        raise ValueError(f"a slab's rows of {D} and a block's {NT} threads: neither divides the other")
    return md


@lru_cache(maxsize=None)
def slab_places(tile):
    """``place_a(tid, r, sak)`` / ``place_b(tid, r, sbn)``: (o, kk), uint64, of value r of
    this thread's share of a (BM, BK) slab of A / (BK, BN) slab of B, the value
    e = tid + r NT that ``tile_functions``' slot_a / slot_b place (the same places, with
    cheaper arithmetic: ``mod_div``)."""
    BK = tile.BK
    NT = block_threads(tile)
    a_by_k, a_by_m = mod_div(BK, NT), mod_div(tile.TM * tile.TY, NT)
    b_by_n, b_by_k = mod_div(tile.TN * tile.TX, NT), mod_div(BK, NT)

    @cuda.jit(device=True, inline=True)
    def place_a(tid, r, sak):
        if sak == 1:                                     # along k: e // BK, e % BK
            kk, mm = a_by_k(tid, r)
            return mm, kk
        return a_by_m(tid, r)                            # along m: e % BM, e // BM

    @cuda.jit(device=True, inline=True)
    def place_b(tid, r, sbn):
        if sbn == 1:                                     # along n: e % BN, e // BN
            return b_by_n(tid, r)
        kk, nn = b_by_k(tid, r)                          # along k: e // BK, e % BK
        return nn, kk

    return place_a, place_b


def check_item_cols(item_cols):
    if item_cols not in (4, 8):
        raise ValueError(f"item_cols must be 4 or 8, got {item_cols!r}")


def grid_for(n):
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS)), THREADS


@lru_cache(maxsize=None)
def sigmoid_for(dtype):
    """σ(x) = 1 / (1 + exp(-x)) as a device function, in ``dtype`` (GRU uses it too)."""
    one = np.dtype(dtype).type(1.0)

    @cuda.jit(device=True, inline=True)
    def sigmoid(x):
        return one / (one + math.exp(-x))
    return sigmoid


@lru_cache(maxsize=None)
def tile_functions(ftype, tile):
    """What both matrix-product kernels share, as inline device functions: the work
    items (tiles of C times chunks of k), where each value of a slab goes in shared
    memory, one k-slab's register-blocked products, and the tile's write (value by value:
    ``put``)."""
    TY, TX, TM, TN, BK = tile[:5]
    BM, BN = TM * TY, TN * TX
    TXU, TYU, BMU, BNU = (np.uint64(n) for n in (TX, TY, BM, BN))

    @cuda.jit(device=True, inline=True)
    def tile_count(M, N, Kd, kchunk):
        """(tiles of C in a row of tiles, tiles of C, work items: tiles x chunks of k)."""
        tiles_n = (N + BN - 1) // BN
        tiles = ((M + BM - 1) // BM) * tiles_n
        return tiles_n, tiles, tiles * ((Kd + kchunk - 1) // kchunk)

    @cuda.jit(device=True, inline=True)
    def tile_start(acc, work, tiles_n, tiles):
        """Work item ``work``'s first row and column of C and its chunk of k; acc zeroed."""
        tile, split = work % tiles, work // tiles
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0.0
        return (tile // tiles_n) * BM, (tile % tiles_n) * BN, split

    @cuda.jit(device=True, inline=True)
    def slot_a(e, sak):
        """(m, kk) of value e of a (BM, BK) slab of A: loaded along k where k is contiguous
        in A (sak == 1), else along m, so that neighbouring threads read neighbouring values."""
        if sak == 1:
            return e // BK, e % BK
        return e % BM, e // BM

    @cuda.jit(device=True, inline=True)
    def slot_b(e, sbn):
        """(n, kk) of value e of a (BK, BN) slab of B: along n where n is contiguous in B."""
        if sbn == 1:
            return e % BN, e // BN
        return e // BK, e % BK

    @cuda.jit(device=True, inline=True)
    def slab_product(acc, sA, sB, offa, offb):
        """acc[i, j] += Σ_kk sA[kk, ty + TY i] sB[kk, tx + TX j] over one slab in shared memory
        (offa, offb: the thread's first values; unsigned, so no negative-index wraparound
        code in the inner loop)."""
        for kk in range(BK):
            oa = offa
            for i in range(TM):
                av = sA[oa]
                ob = offb
                for j in range(TN):
                    acc[i, j] += av * sB[ob]               # C[ty + TY i, tx + TX j]
                    ob += TXU
                oa += TYU
            offa += BMU
            offb += BNU

    @cuda.jit(device=True, inline=True)
    def put(C, M, N, row, col, split, v, accumulate):
        """C[row, col] of chunk ``split`` of C (+)= v, inside C only."""
        if row < M and col < N:
            if accumulate:
                C[split * M * N + row * N + col] += v
            else:
                C[split * M * N + row * N + col] = v

    @cuda.jit(device=True, inline=True)
    def store_tile(C, acc, M, N, m0, n0, split, ty, tx, accumulate):
        """The thread's outputs into chunk ``split`` of C (rows m0 + ty + TY i, columns
        n0 + tx + TX j), added to C's values with ``accumulate``."""
        for i in range(TM):
            row = m0 + ty + TY * i
            for j in range(TN):
                put(C, M, N, row, n0 + tx + TX * j, split, acc[i, j], accumulate)

    return tile_count, tile_start, slot_a, slot_b, slab_product, store_tile, put


@lru_cache(maxsize=None)
def matmul_kernel(dtype, tile):
    """The register-blocked matrix-product kernel for one float dtype and one ``Tile``
    (its sizes are compile-time constants: shared slabs and register blocks need them)."""
    ftype = float32 if np.dtype(dtype) == np.float32 else float64
    TY, TX, TM, TN, BK = tile[:5]
    BM, BN = TM * TY, TN * TX                    # the (BM, BN) tile of C one block makes
    SLAB_A, SLAB_B = BK * BM, BK * BN
    if tile.MMA:
        if ftype is not float32:
            raise ValueError(f"tensor-core tiles take float32 only, not {np.dtype(dtype)}")
        from .tensor_cores import tensor_core_matmul_kernel
        return tensor_core_matmul_kernel(tile)
    if tile.PF > 1:
        raise ValueError(f"cp.async slabs (PF > 1) are for tensor-core tiles only: {tile}")
    if tile.PF:
        return prefetch_matmul_kernel(ftype, tile)
    tile_count, tile_start, slot_a, slot_b, slab_product, store_tile, _ = tile_functions(ftype, tile)

    @cuda.jit
    def matmul(C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate, kchunk):
        """C (M,N) [+]= A B, A and B flat with strides: A[m,k] = A[m*sam + k*sak].

        Register-blocked: a block of (TY, TX) threads makes a (TM*TY) x (TN*TX) tile of C,
        each thread TM x TN outputs (rows ty + TY*i, columns tx + TX*j), from k-slabs of
        A and B staged in shared memory (loaded along whichever index is contiguous).
        Split k: with kchunk < Kd, chunk p of k writes its product to C[p*M*N:], the
        caller sums the chunks in order (the weight gradients have k = B*T and few tiles)."""
        sA = cuda.shared.array(SLAB_A, ftype)               # sA[kk*BM + m]: the slab of A, k-major
        sB = cuda.shared.array(SLAB_B, ftype)               # sB[kk*BN + n]
        acc = cuda.local.array((TM, TN), ftype)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * TX + tx
        tiles_n, tiles, items = tile_count(M, N, Kd, kchunk)
        for work in range(cuda.blockIdx.x, items, cuda.gridDim.x):
            m0, n0, split = tile_start(acc, work, tiles_n, tiles)
            k_end = min(Kd, (split + 1) * kchunk)
            for k0 in range(split * kchunk, k_end, BK):
                for e in range(tid, BM * BK, TX * TY):
                    mm, kk = slot_a(e, sak)
                    row, k = m0 + mm, k0 + kk
                    sA[kk * BM + mm] = A[row * sam + k * sak] if row < M and k < k_end else ftype(0.0)
                for e in range(tid, BN * BK, TX * TY):
                    nn, kk = slot_b(e, sbn)
                    col, k = n0 + nn, k0 + kk
                    sB[kk * BN + nn] = Bm[k * sbk + col * sbn] if col < N and k < k_end else ftype(0.0)
                cuda.syncthreads()
                slab_product(acc, sA, sB, uint64(ty), uint64(tx))
                cuda.syncthreads()
            store_tile(C, acc, M, N, m0, n0, split, ty, tx, accumulate)

    return matmul


@lru_cache(maxsize=None)
def slab_loaders(ftype, tile, lda, ldb):
    """The prefetching kernels' slab moves, as inline device functions: ``load_a`` /
    ``load_b`` put this thread's share of the next (BM, BK) slab of A / (BK, BN) slab of B
    into registers (0 outside the matrix or the chunk of k); ``store`` puts them into
    shared buffer ``buf``: sA[buf*BK*lda + kk*lda + m], sB[buf*BK*ldb + kk*ldb + n].  lda,
    ldb: the shared rows' lengths (BM, BN, or padded: ``tensor_cores``)."""
    BK = tile.BK
    SLAB_A, SLAB_B, NT, LA, LB = slab_shares(tile)
    place_a, place_b = slab_places(tile)
    BKU, LDA, LDB = np.uint64(BK), np.uint64(lda), np.uint64(ldb)

    # indices unsigned (uint64, every operand converted: uint64 with int64 would be float64 in
    # Numba's typing), so no negative-index wraparound code per value
    @cuda.jit(device=True, inline=True)
    def load_a(ra, A, M, sam, sak, m0, k0, k_end, tid):
        """This thread's values of the (BM, BK) slab of A at k0 (0 outside A or the chunk)."""
        for r in range(LA):
            mm, kk = place_a(tid, r, sak)
            row, k = m0 + int64(mm), k0 + int64(kk)
            inside = tid + r * NT < SLAB_A and row < M and k < k_end
            ra[r] = A[uint64(row) * uint64(sam) + uint64(k) * uint64(sak)] if inside else ftype(0.0)

    @cuda.jit(device=True, inline=True)
    def load_b(rb, Bm, N, sbk, sbn, n0, k0, k_end, tid):
        for r in range(LB):
            nn, kk = place_b(tid, r, sbn)
            col, k = n0 + int64(nn), k0 + int64(kk)
            inside = tid + r * NT < SLAB_B and col < N and k < k_end
            rb[r] = Bm[uint64(k) * uint64(sbk) + uint64(col) * uint64(sbn)] if inside else ftype(0.0)

    @cuda.jit(device=True, inline=True)
    def store(sA, sB, ra, rb, buf, sak, sbn, tid):
        """The registers into shared buffer ``buf``."""
        for r in range(LA):
            if tid + r * NT < SLAB_A:
                mm, kk = place_a(tid, r, sak)
                sA[uint64(buf) * BKU * LDA + kk * LDA + mm] = ra[r]
        for r in range(LB):
            if tid + r * NT < SLAB_B:
                nn, kk = place_b(tid, r, sbn)
                sB[uint64(buf) * BKU * LDB + kk * LDB + nn] = rb[r]

    return LA, LB, load_a, load_b, store


@lru_cache(maxsize=None)
def slab_pipeline(ftype, tile, lda, ldb, compute):
    """The prefetching kernels' loop over one chunk of k, as an inline device function
    ``run(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k_begin, k_end, tid,
    a0, b0, extra)``: slab 0 into shared buffer 0, then per slab the next one into
    registers (``slab_loaders``), ``compute(acc, sA, sB, off_a, off_b, extra)`` on the one in
    shared memory (off_a = buf*BK*lda + a0, off_b likewise: unsigned), the next one into
    the other buffer, one barrier.  ``extra``: what compute needs besides (a tuple)."""
    BK = tile.BK
    _, _, load_a, load_b, store = slab_loaders(ftype, tile, lda, ldb)

    @cuda.jit(device=True, inline=True)
    def run(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k_begin, k_end, tid,
            a0, b0, extra):
        load_a(ra, A, M, sam, sak, m0, k_begin, k_end, tid)
        load_b(rb, Bm, N, sbk, sbn, n0, k_begin, k_end, tid)
        store(sA, sB, ra, rb, 0, sak, sbn, tid)
        cuda.syncthreads()
        buf = 0
        for k0 in range(k_begin, k_end, BK):
            more = k0 + BK < k_end
            if more:                                     # slab s+1 into registers
                load_a(ra, A, M, sam, sak, m0, k0 + BK, k_end, tid)
                load_b(rb, Bm, N, sbk, sbn, n0, k0 + BK, k_end, tid)
            compute(acc, sA, sB, uint64(buf * BK * lda + a0), uint64(buf * BK * ldb + b0), extra)
            if more:                                     # the other buffer: its last
                store(sA, sB, ra, rb, 1 - buf, sak, sbn, tid)   # reads were before the
            cuda.syncthreads()                           # previous barrier
            buf = 1 - buf

    return run


def prefetch_matmul_kernel(ftype, tile):
    """``matmul_kernel``'s product (same arguments, same sums in the same order) with the
    global loads of slab s+1 in flight while the block computes on slab s.

    The plain kernel waits for each slab's loads from global memory with every warp of
    the block stopped at the barrier.  Here each thread first loads its share of the
    next slab into registers (``ra``, ``rb``), then runs the slab already in shared
    memory, then stores its share into the other shared buffer: one barrier per slab."""
    TY, TX, TM, TN, BK = tile[:5]
    BM, BN = TM * TY, TN * TX
    SLAB_A, SLAB_B = BK * BM, BK * BN
    SHARED_A, SHARED_B = 2 * SLAB_A, 2 * SLAB_B  # two buffers each (shapes must be constants)
    tile_count, tile_start, _, _, slab_product, store_tile, _ = tile_functions(ftype, tile)
    LA, LB, _, _, _ = slab_loaders(ftype, tile, BM, BN)

    @cuda.jit(device=True, inline=True)
    def compute(acc, sA, sB, offa, offb, extra):
        slab_product(acc, sA, sB, offa, offb)

    run_chunk = slab_pipeline(ftype, tile, BM, BN, compute)

    @cuda.jit
    def matmul(C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate, kchunk):
        sA = cuda.shared.array(SHARED_A, ftype)             # two buffers: this slab and the next
        sB = cuda.shared.array(SHARED_B, ftype)
        ra = cuda.local.array(LA, ftype)                     # the next slab, on its way
        rb = cuda.local.array(LB, ftype)
        acc = cuda.local.array((TM, TN), ftype)
        ty, tx = cuda.threadIdx.y, cuda.threadIdx.x
        tid = ty * TX + tx
        tiles_n, tiles, items = tile_count(M, N, Kd, kchunk)
        for work in range(cuda.blockIdx.x, items, cuda.gridDim.x):
            m0, n0, split = tile_start(acc, work, tiles_n, tiles)
            run_chunk(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, split * kchunk,
                      min(Kd, (split + 1) * kchunk), tid, ty, tx, ())
            store_tile(C, acc, M, N, m0, n0, split, ty, tx, accumulate)

    return matmul


@lru_cache(maxsize=None)
def kernels(dtype):
    """Compile the kernels for one float dtype (shared-memory tiles need it fixed)."""
    ftype = float32 if np.dtype(dtype) == np.float32 else float64
    one = np.dtype(dtype).type(1.0)
    sigmoid = sigmoid_for(np.dtype(dtype))

    @cuda.jit
    def fill_zero(A):
        for i in range(cuda.grid(1), A.shape[0], cuda.gridsize(1)):
            A[i] = 0.0

    @cuda.jit
    def copy_rows(dst, src, nrows, nb, dst_stride, src_stride, H):
        """Row r < nrows of src to row r of dst (flat, rows of H), where row r of an array of
        stride S is (r // nb) * S + r % nb: copies runs of nb rows between layouts with
        S rows per run (MBLK (B,NB+1,H) <-> (B*NB, H), m (B,H) -> MBLK[:, 0])."""
        for idx in range(cuda.grid(1), nrows * H, cuda.gridsize(1)):
            r, k = idx // H, idx % H
            q, i = r // nb, r % nb
            dst[(q * dst_stride + i) * H + k] = src[(q * src_stride + i) * H + k]

    @cuda.jit(device=True)
    def cell_inputs(hcur, c, m, a, Z, lengths, s, psug, hgr, reverse, bb, j):
        """What step s of row bb, unit j reads besides U h and the parameters: (active,
        pos, h_{t-1}, c_{t-1}, a, m, the step's 1 (PSUG) or 4 values of x W^T).  No team_dot
        writes any of it, so the persistent loop can issue these loads before its team_dot
        (``PRELOAD_CELLS``); idle rows (s >= length) read h alone."""
        H = c.shape[1]
        zero = ftype(0.0)
        L = lengths[bb]
        if s >= L:                                   # idle: pos = s, a padding step
            return False, s, hcur[bb, j], zero, zero, zero, zero, zero, zero, zero
        pos = L - 1 - s if reverse else s
        hprev, cprev = hcur[bb, j], c[bb, j]
        a_old = a[bb, j] if hgr else zero
        m_old = m[bb, j] if hgr else zero
        z0 = Z[bb, pos, j]
        z1 = Z[bb, pos, H + j] if not psug else zero
        z2 = Z[bb, pos, 2 * H + j] if not psug else zero
        z3 = Z[bb, pos, 3 * H + j] if not psug else zero
        return True, pos, hprev, cprev, a_old, m_old, z0, z1, z2, z3

    @cuda.jit(device=True, inline=True)
    def no_cell_inputs():
        """``cell_inputs``' type, nothing read (where no load is issued early)."""
        zero = ftype(0.0)
        return False, 0, zero, zero, zero, zero, zero, zero, zero, zero

    @cuda.jit(device=True)
    def cell_update(out, hnext, c, a, Z, GATES, C, CPREV, HPREV, hU, b, gamma, beta, psug, hgr,
                    bb, j, inputs):
        """Step s of row bb, unit j from its ``cell_inputs``: writes h_t to hnext.

        Every load comes before the first store.  As far as the compiler knows the
        arrays may alias, so it cannot move a load above a store, and loads separated by
        stores each wait for their own round trip to memory; issued together, they wait
        once.  The persistent loop pays this wait on every step (3-5% of an H100 step)."""
        active, pos, hprev, cprev, a_old, m_old, z0, z1, z2, z3 = inputs
        if not active:
            hnext[bb, j] = hprev                                          # idle rows keep h
            out[bb, pos, j] = 0.0           # padding step pos = s: zeros (nothing clears the buffers)
            HPREV[bb, pos, j] = 0.0
            return
        H = c.shape[1]
        if psug:
            z = z0 + hU[bb, j] + b[j]                                     # z_t = W x + U h + b
            pi = gamma[0, j] * z + beta[0, j]
            pf = gamma[1, j] * z + beta[1, j]
            pg = gamma[2, j] * z + beta[2, j]
            po = gamma[3, j] * z + beta[3, j]
            Z[bb, pos, j] = z
        else:
            pi = z0 + (hU[bb, j] + b[j])                                  # z_k = W_k x + (U_k h + b_k)
            pf = z1 + (hU[bb, H + j] + b[H + j])
            pg = z2 + (hU[bb, 2 * H + j] + b[2 * H + j])
            po = z3 + (hU[bb, 3 * H + j] + b[3 * H + j])
            Z[bb, pos, j] = pi
            Z[bb, pos, H + j] = pf
            Z[bb, pos, 2 * H + j] = pg
            Z[bb, pos, 3 * H + j] = po
        HPREV[bb, pos, j] = hprev
        CPREV[bb, pos, j] = cprev
        ig, fg, gg, og = sigmoid(pi), sigmoid(pf), math.tanh(pg), sigmoid(po)
        GATES[bb, pos, 0, j] = ig
        GATES[bb, pos, 1, j] = fg
        GATES[bb, pos, 2, j] = gg
        GATES[bb, pos, 3, j] = og
        ct = fg * cprev + ig * gg                                         # c_t = f c + i g
        c[bb, j] = ct
        C[bb, pos, j] = ct
        hhat = og * math.tanh(ct)                                         # ĥ_t = o tanh(c_t)
        if hgr:
            a[bb, j] = a_old + hhat                                       # a += ĥ_t
            hhat += m_old                                                 # h_t = ĥ_t + m
        hnext[bb, j] = hhat
        out[bb, pos, j] = hhat

    @cuda.jit(device=True)
    def cell_forward(out, hcur, hnext, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma,
                     beta, s, psug, hgr, reverse, bb, j):
        """Step s of row bb, unit j: reads h_{t-1} from hcur, writes h_t to hnext (may be
        hcur): ``cell_inputs``, then ``cell_update``."""
        cell_update(out, hnext, c, a, Z, GATES, C, CPREV, HPREV, hU, b, gamma, beta, psug, hgr,
                    bb, j, cell_inputs(hcur, c, m, a, Z, lengths, s, psug, hgr, reverse, bb, j))

    @cuda.jit
    def step_forward(out, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma, beta,
                     s, psug, hgr, reverse):
        B, H = h.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_forward(out, h, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, lengths, b, gamma,
                         beta, s, psug, hgr, reverse, idx // H, idx % H)

    @cuda.jit(device=True)
    def closes_at(lengths, n0, s, K, bb):
        """Whether row bb closes a block at step s (from its initial n, no saved flags)."""
        return s < lengths[bb] and (n0[bb] + s + 1) % K == 0

    @cuda.jit(device=True)
    def close_summary_cell(S, a, lengths, n0, s, K, bb, j):
        S[bb, j] = a[bb, j] / K if closes_at(lengths, n0, s, K, bb) else ftype(0.0)

    @cuda.jit(device=True)
    def close_forward_cell(mnext, m, a, MBLK, SBLK, RBLK, S, pq, b_r, lengths, n0, s, K, bb, j):
        """The block close of row bb, unit j, given pq = (V_s s + V_m m)[bb, j]; mnext may be m.
        Rows that do not close copy m into mnext."""
        if not closes_at(lengths, n0, s, K, bb):
            mnext[bb, j] = m[bb, j]
            return
        jb = (n0[bb] + s + 1) // K - 1
        r = sigmoid(pq + b_r[j])                                          # r = σ(V_s s + V_m m + b_r)
        mj = r * m[bb, j] + (one - r) * S[bb, j]                          # m = r m + (1-r) s
        SBLK[bb, jb, j] = S[bb, j]
        RBLK[bb, jb, j] = r
        MBLK[bb, jb + 1, j] = mj
        mnext[bb, j] = mj
        a[bb, j] = 0.0

    @cuda.jit(device=True)
    def close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K, bb, j):
        if not closes_at(lengths, n0, s, K, bb):
            DP_step[bb, j] = 0.0
            return
        jb = (n0[bb] + s + 1) // K - 1
        r = RBLK[bb, jb, j]
        dm_after = dm[bb, j]                                          # δm' of m' = r m + (1-r) s
        dp = dm_after * (MBLK[bb, jb, j] - SBLK[bb, jb, j]) * r * (one - r)
        DP[bb, jb, j] = dp
        DP_step[bb, j] = dp
        dm[bb, j] = dm_after * r
        da[bb, j] = dm_after * (one - r)

    @cuda.jit(device=True)
    def close_backward_finish_cell(dm, da, dmv, dsv, K, bb, j):
        """dmv, dsv: (V_m^T δp)[bb, j], (V_s^T δp)[bb, j] of a closing row."""
        dm[bb, j] += dmv                                              # δm += V_m^T δp
        da[bb, j] = (da[bb, j] + dsv) / K                             # δa = (δs + V_s^T δp) / K

    @cuda.jit
    def close_summary(S, a, lengths, n0, s, K):
        """S = a / K for the rows that close a block at step s, 0 elsewhere."""
        B, H = a.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            close_summary_cell(S, a, lengths, n0, s, K, idx // H, idx % H)

    @cuda.jit
    def close_forward(m, a, MBLK, SBLK, RBLK, S, P, Q, b_r, lengths, n0, s, K):
        """r = σ(V_s s + V_m m + b_r); m = r m + (1-r) s; a = 0, for the closing rows."""
        B, H = a.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            close_forward_cell(m, m, a, MBLK, SBLK, RBLK, S, P[bb, j] + Q[bb, j], b_r, lengths, n0,
                               s, K, bb, j)

    @cuda.jit
    def close_backward(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K):
        """The block-close rule, before the V^T δp products (done by matmul)."""
        B, H = dm.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s, K,
                                idx // H, idx % H)

    @cuda.jit
    def close_backward_finish(dm, da, dmV, dsV, lengths, n0, s, K):
        """δm += V_m^T δp;  δa = (δs + V_s^T δp) / K, for the closing rows."""
        B, H = dm.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            if closes_at(lengths, n0, s, K, bb):
                close_backward_finish_cell(dm, da, dmV[bb, j], dsV[bb, j], K, bb, j)

    @cuda.jit(device=True)
    def cell_backward(DZ, DZ_step, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma, lengths,
                      s, psug, hgr, reverse, bb, j):
        """BPTT of ``cell_forward`` at step s, row bb, unit j.  Every load comes before the
        first store, as there.  Adds the step's terms of the bias gradient (and PSUG's
        δγ_k = Σ δp_k z, δβ_k = Σ δp_k) to row bb's sums in SUMS (one thread owns each
        (bb, j): no atomics; the sums over rows come after the loop, ``sum_over_rows``)."""
        H = dh.shape[1]
        L = lengths[bb]
        if s >= L:                                  # padding step s: δz = 0 (DZ is not cleared)
            DZ_step[bb, j] = 0.0
            DZ[bb, s, j] = 0.0
            if not psug:
                for k in range(1, 4):
                    DZ_step[bb, k * H + j] = 0.0
                    DZ[bb, s, k * H + j] = 0.0
            return
        pos = L - 1 - s if reverse else s
        dht = dout[bb, pos, j] + dh[bb, j]                            # δh_t = δout + U^T δz_{t+1}
        dm_old = dm[bb, j] if hgr else ftype(0.0)
        dhhat = dht + da[bb, j] if hgr else dht                       # h_t = ĥ_t + m; a += ĥ_t
        ig, fg = GATES[bb, pos, 0, j], GATES[bb, pos, 1, j]
        gg, og = GATES[bb, pos, 2, j], GATES[bb, pos, 3, j]
        tc = math.tanh(C[bb, pos, j])
        dc_old, cprev = dc[bb, j], CPREV[bb, pos, j]
        # the row's sums so far: δb (4 gates, or PSUG's one), then PSUG's δγ_k, δβ_k
        s0, s1, s2, s3 = SUMS[bb, 0, j], SUMS[bb, 1, j], SUMS[bb, 2, j], SUMS[bb, 3, j]
        if psug:
            z = Z[bb, pos, j]
            s4, s5, s6 = SUMS[bb, 4, j], SUMS[bb, 5, j], SUMS[bb, 6, j]
            s7, s8 = SUMS[bb, 7, j], SUMS[bb, 8, j]
            g0, g1, g2, g3 = gamma[0, j], gamma[1, j], gamma[2, j], gamma[3, j]
        else:
            z = s4 = s5 = s6 = s7 = s8 = ftype(0.0)
            g0 = g1 = g2 = g3 = ftype(0.0)
        if hgr:
            dm[bb, j] = dm_old + dht                                  # h_t = ĥ_t + m
        dpo = dhhat * tc * og * (one - og)                            # ĥ = o tanh(c)
        dct = dc_old + dhhat * og * (one - tc * tc)
        dpi = dct * gg * ig * (one - ig)                              # c = f c_prev + i g
        dpf = dct * cprev * fg * (one - fg)
        dpg = dct * ig * (one - gg * gg)
        dc[bb, j] = dct * fg
        if psug:                                                      # gate_k = act(γ_k z + β_k)
            dz = g0 * dpi + g1 * dpf + g2 * dpg + g3 * dpo
            DZ_step[bb, j] = dz
            DZ[bb, pos, j] = dz
            SUMS[bb, 0, j] = s0 + dz                                  # δb = Σ δz
            SUMS[bb, 1, j] = s1 + dpi * z                             # δγ_k = Σ δp_k z
            SUMS[bb, 2, j] = s2 + dpf * z
            SUMS[bb, 3, j] = s3 + dpg * z
            SUMS[bb, 4, j] = s4 + dpo * z
            SUMS[bb, 5, j] = s5 + dpi                                 # δβ_k = Σ δp_k
            SUMS[bb, 6, j] = s6 + dpf
            SUMS[bb, 7, j] = s7 + dpg
            SUMS[bb, 8, j] = s8 + dpo
        else:
            DZ_step[bb, j] = dpi
            DZ_step[bb, H + j] = dpf
            DZ_step[bb, 2 * H + j] = dpg
            DZ_step[bb, 3 * H + j] = dpo
            DZ[bb, pos, j] = dpi
            DZ[bb, pos, H + j] = dpf
            DZ[bb, pos, 2 * H + j] = dpg
            DZ[bb, pos, 3 * H + j] = dpo
            SUMS[bb, 0, j] = s0 + dpi                                 # δb_k = Σ δz_k
            SUMS[bb, 1, j] = s1 + dpf
            SUMS[bb, 2, j] = s2 + dpg
            SUMS[bb, 3, j] = s3 + dpo

    @cuda.jit
    def step_backward(DZ, DZ_step, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma, lengths,
                      s, psug, hgr, reverse):
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            cell_backward(DZ, DZ_step, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma,
                          lengths, s, psug, hgr, reverse, idx // H, idx % H)

    @cuda.jit
    def carry_dh(dh, dhU, lengths, s, accumulate):
        """δh_{t-1} = U^T δz_t (or += it, where dh already holds a direct term, as in the
        GRU) for the rows that stepped; idle rows keep theirs."""
        B, H = dh.shape
        for idx in range(cuda.grid(1), B * H, cuda.gridsize(1)):
            bb, j = idx // H, idx % H
            if s < lengths[bb]:
                dh[bb, j] = dh[bb, j] + dhU[bb, j] if accumulate else dhU[bb, j]

    @cuda.jit
    def column_sums(out, A, rows, cols, stride):
        """out[c] += Σ_r A[r*stride + c] for c < cols, summed in row order (deterministic)."""
        for col in range(cuda.grid(1), cols, cuda.gridsize(1)):
            acc = ftype(0.0)
            for r in range(rows):
                acc += A[r * stride + col]
            out[col] += acc

    @cuda.jit
    def column_sums_partial(partial, A, rows, cols, chunk):
        """partial[p, c] = Σ A[r*cols + c] over the rows r of chunk p, in row order: the first
        pass of a two-pass column sum (one thread per column alone is latency-bound)."""
        nch = partial.shape[0]
        for idx in range(cuda.grid(1), nch * cols, cuda.gridsize(1)):
            p, col = idx // cols, idx % cols
            acc = ftype(0.0)
            for r in range(p * chunk, min(rows, (p + 1) * chunk)):
                acc += A[r * cols + col]
            partial[p, col] = acc

    @cuda.jit
    def clear_tail(A, steps):
        """A[:, steps:] = 0 for A (B, T, W): the padding steps that no step loop reaches
        (the loops write zeros at a row's other padding steps)."""
        B, T, W = A.shape
        n = (T - steps) * W
        for idx in range(cuda.grid(1), B * n, cuda.gridsize(1)):
            bb, i = idx // n, idx % n
            A[bb, steps + i // W, i % W] = 0.0

    return dict(step_forward=step_forward, close_summary=close_summary,
                close_forward=close_forward, close_backward=close_backward,
                close_backward_finish=close_backward_finish, step_backward=step_backward,
                carry_dh=carry_dh, column_sums=column_sums, column_sums_partial=column_sums_partial,
                clear_tail=clear_tail, fill_zero=fill_zero, copy_rows=copy_rows,
                # DEVICE_FUNCTIONS: the persistent kernels call them
                cell_forward=cell_forward, cell_inputs=cell_inputs, no_cell_inputs=no_cell_inputs,
                cell_update=cell_update, cell_backward=cell_backward, closes_at=closes_at,
                close_forward_cell=close_forward_cell, close_backward_cell=close_backward_cell,
                close_backward_finish_cell=close_backward_finish_cell)


DEVICE_FUNCTIONS = ("cell_forward", "cell_inputs", "no_cell_inputs", "cell_update",
                    "cell_backward", "closes_at", "close_forward_cell",
                    "close_backward_cell", "close_backward_finish_cell")


@lru_cache(maxsize=None)
def persistent_kernels(dtype, item_rows, loads, stage, item_cols, preload=False, prefetch=False,
                       mma=False):
    """The persistent step loops (and their device functions) for one float dtype,
    ``team_dot`` items of ``item_rows`` rows x ``item_cols`` columns, ``loads`` loads of h
    in flight per lane and pass, with ``stage`` the rows team_dot reads staged in shared
    memory (``stage_rows``), with ``preload`` each thread's first forward cell's
    ``cell_inputs`` loaded before team_dot (``PRELOAD_CELLS``), with ``prefetch`` the
    next step's cell inputs prefetched into L2 (``PREFETCH_STEPS``), and with ``mma`` the
    step's product U h (U^T δz) on tensor cores (``mma_dot``, float32, items of 8 columns,
    not staged; ``STEP_TENSOR_CORES``; compile-time constants: the register blocks need
    them, and the loops without an option compile as if it did not exist)."""
    if loads % item_rows or loads < item_rows:
        raise ValueError(f"team_dot's loads per pass ({loads}) must be a multiple of its "
                         f"item rows ({item_rows})")
    check_item_cols(item_cols)
    if mma and (np.dtype(dtype) != np.float32 or item_cols != 8 or stage):
        raise ValueError("tensor-core step products are float32, with items of 8 columns, "
                         "not staged")
    ftype = float32 if np.dtype(dtype) == np.float32 else float64
    k = kernels(np.dtype(dtype))
    cell_forward, cell_backward, closes_at = k["cell_forward"], k["cell_backward"], k["closes_at"]
    cell_inputs, no_cell_inputs, cell_update = k["cell_inputs"], k["no_cell_inputs"], k["cell_update"]
    close_forward_cell, close_backward_cell = k["close_forward_cell"], k["close_backward_cell"]
    close_backward_finish_cell = k["close_backward_finish_cell"]
    ROWS, COLS = item_rows, item_cols
    NOUT = COLS * ROWS                                  # outputs of one item
    KPASS = loads // ROWS                               # k per pass: `loads` loads of X in flight
    NX = KPASS * ROWS                                   # (local array sizes must be constants)
    KSTEP, KLAST = np.uint64(KPASS * TEAM), np.uint64((KPASS - 1) * TEAM)
    # mma_dot: a warp's block of outputs is MB x NB mma tiles (16 rows x 8 columns each), KP
    # k-steps of 8 per pass (MMA_LOADS loads of X per lane); U's rows in shared memory are SPAD
    # longer than k, so that the 8 columns of a B fragment fall in different banks
    MB, NB = MMA_TILES
    KP = max(1, MMA_LOADS // (4 * MB))
    BM, BN = 16 * MB, 8 * NB
    ACC, NXA, NFA, NFB = (MB, NB, 4), KP * MB * 4, MB * 4, NB * 2
    SPAD = MMA_PAD if mma else 0
    # with mma_dot, blocks of 256 threads and up to 255 registers (persistent_plan): capped at
    # 128, ptxas spilled 600 bytes
    jit_options = dict(PERSISTENT_JIT, max_registers=255) if mma and not SIM else PERSISTENT_JIT
    if mma:
        from .tensor_cores import MMA_XCH, mma3_into, tf32_splitter
        split = tf32_splitter(3)
        XCH = (MMA_THREADS // 32) * MMA_XCH if SIM else 1
    else:
        XCH = 1

    @cuda.jit(device=True, inline=True)
    def padded(n):
        """n columns rounded up to whole items of COLS (slices of U, V_s, V_m in shared memory)."""
        return (n + COLS - 1) // COLS * COLS

    @cuda.jit(device=True)
    def part_span(q, ugroups, rgroups, B, H):
        """Part q's rows [r0, r0 + nr) and hidden units [u0, u0 + nq): unit group q % ugroups
        (nu = ceil(H / ugroups) units each), row group q // ugroups (ceil(B / rgroups) rows
        each; nr may be 0).  Returns (r0, nr, u0, nq, nu)."""
        nu = (H + ugroups - 1) // ugroups
        u0 = (q % ugroups) * nu
        nrg = (B + rgroups - 1) // rgroups
        r0 = (q // ugroups) * nrg
        return r0, max(0, min(B, r0 + nrg) - r0), u0, min(H, u0 + nu) - u0, nu

    @cuda.jit(device=True)
    def load_slice(Ush, U, u0, nq, nu, ncol, ncol_pad, Kd, ld, H, transpose):
        """This part's slice of U into shared memory, one row of ld >= Kd per output column c:
        forward  Ush[c*ld + k] = U[col(c), k]   (k < H), the rows of U this part's units need;
        backward Ush[c*ld + k] = U[k, col(c)]   (k < G), the columns (transpose);
        col(c) = (c // nu) * H + u0 + c % nu; padded or empty columns, and k >= Kd, are 0."""
        for e in range(cuda.threadIdx.x, ncol_pad * ld, cuda.blockDim.x):
            c, k = e // ld, e % ld
            val = ftype(0.0)
            if c < ncol and c % nu < nq and k < Kd:
                col = (c // nu) * H + u0 + c % nu
                val = U[k, col] if transpose else U[col, k]
            Ush[e] = val

    @cuda.jit(device=True)
    def team_dot(out, X, xoff, Ush, red, r0, nr, ncol, ncol_pad, nu, nq, H, u0, Kd, lengths, s, rot):
        """out[b, col(c)] = Σ_k Ush[c*Kd + k] X[b - xoff, k] for this part's columns c and its
        rows b in [r0, r0 + nr) that step at s (idle rows are not written).  X is the whole
        array in global memory (xoff = 0) or the part's rows staged in shared memory
        (``stage_rows``, xoff = r0): the same sums in the same order.

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
        team, lane = tid // TEAM, tid % TEAM
        ngrp = ncol_pad // COLS
        nrq = (nr + ROWS - 1) // ROWS                    # groups of ROWS rows
        nitems = nrq * ngrp
        rend = r0 + nr
        acc = cuda.local.array(NOUT, ftype)              # acc[r*COLS + c]: row b0 + r, column c0 + c
        xv = cuda.local.array(NX, ftype)                 # xv[kk*ROWS + r] = X[row r, k + kk TEAM]
        rows = cuda.local.array(ROWS, uint64)
        for base in range(0, nitems, nteams):
            item = base + team
            for i in range(NOUT):
                acc[i] = 0.0
            if item < nitems:
                item = (item + rot) % nitems
                b0 = r0 + (item % nrq) * ROWS
                c0 = (item // nrq) * COLS
                # unsigned indices: Numba then skips the negative-index wraparound code,
                # which was most of the instructions of this loop
                for r in range(ROWS):
                    rows[r] = uint64(min(b0 + r, rend - 1) - xoff)
                kd = uint64(Kd)
                w = uint64(c0 * Kd)                              # column c0's row of Ush
                k = uint64(lane)
                while k + KLAST < kd:                            # a pass: KPASS k, all loads first
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
            wr = (team * NOUT) * TEAMP + lane
            for i in range(NOUT):
                red[wr + i * TEAMP] = acc[i]
            cuda.syncthreads()
            for o in range(tid, nteams * NOUT, nthr):
                tm, i = o // NOUT, o % NOUT              # team tm's output i: row b0 + i // COLS, column c0 + i % COLS
                item = base + tm
                if item < nitems:
                    item = (item + rot) % nitems
                    b = r0 + (item % nrq) * ROWS + i // COLS
                    c = (item // nrq) * COLS + i % COLS
                    if b < rend and c < ncol and c % nu < nq and s < lengths[b]:
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
                        out[b, (c // nu) * H + u0 + c % nu] = (p0 + p1) + (p2 + p3)
            cuda.syncthreads()

    @cuda.jit(device=True)
    def mma_dot(out, X, Ush, red, xch, r0, nr, ncol, ncol_pad, nu, nq, H, u0, Kd, lengths, s):
        """``team_dot``'s sums (X in global memory) on tensor cores, float32 to float32's
        accuracy: D = X U_slice^T by ``mma.sync`` m16n8k8 with three TF32 products per 8 k
        (``tensor_cores.mma3_into``).

        The block's warps split k: warp w takes the k-steps of 8 w, w + W, w + 2W, ...
        (W warps) for a block of outputs of BM rows x BN columns, loading KP k-steps of X
        per pass before it computes on them.  A fragment is X[b, k] (rows b of the part,
        clamped to its last row), B is Ush[c*(Kd + SPAD) + k]; k >= Kd reads as 0.  Each
        warp leaves its partial D in ``red`` in its fragments' order (lane fastest: no bank
        conflicts), and each output sums the W partials in warp order (deterministic).
        Every warp makes the same mma calls (block-uniform loops), as ``mma.sync`` and the
        simulator's stand-in need.  Compared with team_dot, a block reads each of its rows
        of X from L2 once, not once per group of 8 columns, and the products take no FMA
        units and no shared-memory reads of U per row."""
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        nwarps = nthr // 32
        warp, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        ld = Kd + SPAD
        per = ((Kd + 7) // 8 + nwarps - 1) // nwarps      # k-steps of each warp
        rend = r0 + nr
        acc = cuda.local.array(ACC, float32)              # acc[i, j]: mma tile (i, j)'s D
        xa = cuda.local.array(NXA, float32)               # a pass's A fragments, as loaded
        ahi = cuda.local.array(NFA, float32)              # A[i] at 4i .. 4i+3, split in TF32
        alo = cuda.local.array(NFA, float32)
        bhi = cuda.local.array(NFB, float32)              # B[j] at 2j, 2j+1
        blo = cuda.local.array(NFB, float32)
        for m0 in range(0, nr, BM):
            for n0 in range(0, ncol_pad, BN):
                for i in range(MB):
                    for j in range(NB):
                        for q in range(4):
                            acc[i, j, q] = 0.0
                for p in range(0, per, KP):
                    for kp in range(KP):                  # the pass's loads of X, all first
                        k = ((p + kp) * nwarps + warp) * 8 + t
                        for i in range(MB):
                            b = min(r0 + m0 + i * 16 + g, rend - 1)
                            b8 = min(b + 8, rend - 1)
                            x = (kp * MB + i) * 4
                            xa[x] = X[b, k] if k < Kd else float32(0.0)                # A[g, t]
                            xa[x + 1] = X[b8, k] if k < Kd else float32(0.0)           # A[g + 8, t]
                            xa[x + 2] = X[b, k + 4] if k + 4 < Kd else float32(0.0)    # A[g, t + 4]
                            xa[x + 3] = X[b8, k + 4] if k + 4 < Kd else float32(0.0)   # A[g + 8, t + 4]
                    for kp in range(KP):
                        if p + kp < per:
                            k = ((p + kp) * nwarps + warp) * 8 + t
                            for e in range(4 * MB):                 # x = hi + lo in TF32
                                split(xa[kp * MB * 4 + e], ahi, alo, e)
                            for j in range(NB):                     # B[t, g], B[t + 4, g]
                                c = n0 + j * 8 + g
                                v0 = Ush[c * ld + k] if k < Kd and c < ncol_pad else float32(0.0)
                                v1 = Ush[c * ld + k + 4] if k + 4 < Kd and c < ncol_pad else float32(0.0)
                                split(v0, bhi, blo, 2 * j)
                                split(v1, bhi, blo, 2 * j + 1)
                            for i in range(MB):
                                if m0 + i * 16 < nr:
                                    for j in range(NB):
                                        if n0 + j * 8 < ncol_pad:
                                            mma3_into(acc, i, j, xch, warp, lane, ahi, alo, bhi, blo)
                # partial (i, j, q) of lane l of warp w at red[w*BM*BN + ((i*NB + j)*4 + q)*32 + l]
                for i in range(MB):
                    for j in range(NB):
                        for q in range(4):
                            red[warp * (BM * BN) + ((i * NB + j) * 4 + q) * 32 + lane] = acc[i, j, q]
                cuda.syncthreads()
                for o in range(tid, BM * BN, nthr):
                    i, j, q, ll = o // (NB * 128), (o // 128) % NB, (o // 32) % 4, o % 32
                    b = r0 + m0 + i * 16 + ll // 4 + (q // 2) * 8      # D[g (+8), 2t (+1)]
                    c = n0 + j * 8 + 2 * (ll % 4) + q % 2
                    if b < rend and c < ncol and c % nu < nq and s < lengths[b]:
                        v = float32(0.0)
                        for w in range(nwarps):
                            v += red[w * (BM * BN) + o]
                        out[b, (c // nu) * H + u0 + c % nu] = v
                cuda.syncthreads()

    @cuda.jit(device=True, inline=True)
    def prefetch_forward(Z, lengths, s, psug, reverse, H, bb, j):
        """x W^T of step s, row bb, unit j (1 value, or 4 with !psug) on its way to L2
        (nothing where the row does not step at s)."""
        L = lengths[bb]
        if s < L:
            pos = L - 1 - s if reverse else s
            prefetch_l2(Z, (bb, pos, j))
            if not psug:
                for k in range(1, 4):
                    prefetch_l2(Z, (bb, pos, k * H + j))

    @cuda.jit(device=True, inline=True)
    def prefetch_backward(dout, GATES, C, CPREV, Z, lengths, s, psug, reverse, bb, j):
        """What ``cell_backward`` reads of step s (s >= 0), row bb, unit j from the saved
        forward and δout, on its way to L2."""
        L = lengths[bb]
        if 0 <= s < L:
            pos = L - 1 - s if reverse else s
            prefetch_l2(dout, (bb, pos, j))
            for k in range(4):
                prefetch_l2(GATES, (bb, pos, k, j))
            prefetch_l2(C, (bb, pos, j))
            prefetch_l2(CPREV, (bb, pos, j))
            if psug:
                prefetch_l2(Z, (bb, pos, j))

    @cuda.jit(device=True)
    def stage_rows(Xs, X, r0, nr, Kd):
        """Rows r0 .. r0 + nr - 1 of X (.., Kd) into Xs[0 .. nr - 1], then a barrier.  Each
        thread takes columns k (consecutive threads, consecutive k: coalesced) and issues
        ``loads`` loads of a column's rows before it stores any of them."""
        xv = cuda.local.array(NX, ftype)
        for k in range(cuda.threadIdx.x, Kd, cuda.blockDim.x):
            for q0 in range(0, nr, NX):
                for i in range(NX):
                    xv[i] = X[r0 + min(q0 + i, nr - 1), k]
                for i in range(NX):
                    if q0 + i < nr:
                        Xs[q0 + i, k] = xv[i]
        cuda.syncthreads()

    @cuda.jit(device=True)
    def load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, Kd, H, transpose, hgr):
        """Part (u0, nq)'s slices of U, and with hgr of V_s and V_m, into shared memory
        (``load_slice``; V slices have one column per unit, read as rows or, in
        backward, as columns).  U's rows are SPAD values longer than Kd (``mma_dot``)."""
        load_slice(Ush, U, u0, nq, nu, ncol, ncol_pad, Kd, Kd + SPAD, H, transpose)
        if hgr:
            nu_pad = padded(nu)
            load_slice(Vs_sh, V_s, u0, nq, nu, nu, nu_pad, H, H, H, transpose)
            load_slice(Vm_sh, V_m, u0, nq, nu, nu, nu_pad, H, H, H, transpose)

    @cuda.jit(device=True, inline=True)
    def reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, Kd, H,
                    transpose, hgr):
        """``load_part`` between barriers, where a block serves several parts (the slices
        of a resident block were loaded once, before the step loop)."""
        if not resident:
            cuda.syncthreads()
            load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, Kd, H, transpose, hgr)
            cuda.syncthreads()

    @cuda.jit(device=True, inline=True)
    def shared_views(nslice, nv, nx):
        """The dynamic shared memory of a persistent block: (U slice of nslice values, V_s and
        V_m slices of nv values each, nx values of staged rows (``stage_rows``), the team
        partials in the rest)."""
        dyn = cuda.shared.array(0, ftype)
        x0 = nslice + 2 * nv
        return (dyn[:nslice], dyn[nslice:nslice + nv], dyn[nslice + nv:x0], dyn[x0:x0 + nx],
                dyn[x0 + nx:])

    @cuda.jit(**jit_options)
    def persistent_forward(out, hbuf, c, mbuf, a, Sbuf, Z, GATES, C, CPREV, HPREV, MBLK, SBLK,
                           RBLK, hU, P, Q, lengths, n0, close_flags, U, b, gamma, beta, V_s, V_m,
                           b_r, steps, K, ugroups, rgroups, nstage, psug, hgr, reverse):
        """Every step in one cooperative launch: block q owns part q, a group of rows and
        a group of hidden units (``part_span``), and keeps the units' rows of U (all
        four gates), V_s and V_m in shared memory, so a step needs one grid sync.

        Per step: U h_{t-1} for the part's rows and units (``team_dot``), then their
        cells, then a grid sync, then (on a closing step) V_s s and V_m m for them and
        their block close.  h alternates between hbuf[0] and hbuf[1] (step s reads
        hbuf[s % 2]); the block summary s between Sbuf[0] and Sbuf[1] by step; m
        between mbuf[0] and mbuf[1] by close, so a close reads every unit's old m
        while writing its own new one.  When there are more parts than blocks (the
        simulator's one block), a block loops over parts and reloads each slice.  With
        ``stage``, a part's rows of h_{t-1} go to shared memory first (``stage_rows``;
        nstage >= its rows: the rows a part may have).
        """
        grid = cuda.cg.this_grid()
        xch = cuda.shared.array(XCH, float32)              # the simulator's mma stand-in
        B, H = c.shape
        G = U.shape[0]
        nparts = ugroups * rgroups
        nu = (H + ugroups - 1) // ugroups
        ncol = (G // H) * nu
        ncol_pad = padded(ncol)
        nv = padded(nu) * H if hgr else 0
        Ush, Vs_sh, Vm_sh, Xflat, red = shared_views(ncol_pad * (H + SPAD), nv, nstage * H)
        resident = nparts == cuda.gridDim.x
        if resident:
            r0, nr, u0, nq, nu = part_span(cuda.blockIdx.x, ugroups, rgroups, B, H)
            load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, ncol, ncol_pad, H, H, False, hgr)
            cuda.syncthreads()
        closes = 0
        for s in range(steps):
            hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
            m, S = mbuf[closes % 2], Sbuf[s % 2]
            for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                rot = q % ugroups
                reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                            ncol, ncol_pad, H, H, False, hgr)
                first = no_cell_inputs()
                if preload and cuda.threadIdx.x < nr * nq:     # in flight during team_dot
                    first = cell_inputs(hcur, c, m, a, Z, lengths, s, psug, hgr, reverse,
                                        r0 + cuda.threadIdx.x // nq, u0 + cuda.threadIdx.x % nq)
                if stage:                                                       # U h_{t-1}
                    # a view of the part's rows made here, not once before the loop (ptxas
                    # spills: 340 bytes against 464 when written; since cell_inputs, 464 either
                    # way, and 344 against 432 with 8-column items; the backward keeps one view)
                    Xs = Xflat[:nr * H].reshape((nr, H))
                    stage_rows(Xs, hcur, r0, nr, H)
                    team_dot(hU, Xs, r0, Ush, red, r0, nr, ncol, ncol_pad, nu, nq, H, u0, H,
                             lengths, s, rot)
                elif mma:
                    mma_dot(hU, hcur, Ush, red, xch, r0, nr, ncol, ncol_pad, nu, nq, H, u0, H,
                            lengths, s)
                else:
                    team_dot(hU, hcur, 0, Ush, red, r0, nr, ncol, ncol_pad, nu, nq, H, u0, H,
                             lengths, s, rot)
                for e in range(cuda.threadIdx.x, nr * nq, cuda.blockDim.x):
                    bb, j = r0 + e // nq, u0 + e % nq
                    if preload and e == cuda.threadIdx.x:
                        cell_update(out, hnext, c, a, Z, GATES, C, CPREV, HPREV, hU, b, gamma,
                                    beta, psug, hgr, bb, j, first)
                    else:
                        cell_forward(out, hcur, hnext, c, m, a, Z, GATES, C, CPREV, HPREV, hU,
                                     lengths, b, gamma, beta, s, psug, hgr, reverse, bb, j)
                    if hgr and closes_at(lengths, n0, s, K, bb):
                        S[bb, j] = a[bb, j] / K                           # s = a / K
                    if prefetch:            # step s + 1's x W^T into L2 (after team_dot: fewer spills)
                        prefetch_forward(Z, lengths, s + 1, psug, reverse, H, bb, j)
            grid.sync()
            if hgr and close_flags[s]:
                mnext = mbuf[(closes + 1) % 2]
                for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    rot = q % ugroups
                    reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                                ncol, ncol_pad, H, H, False, hgr)
                    nu_pad = padded(nu)
                    team_dot(P, S, 0, Vs_sh, red, r0, nr, nu, nu_pad, nu, nq, H, u0, H, lengths, s,
                             rot)                                               # V_s s
                    team_dot(Q, m, 0, Vm_sh, red, r0, nr, nu, nu_pad, nu, nq, H, u0, H, lengths, s,
                             rot)                                               # V_m m
                    for e in range(cuda.threadIdx.x, nr * nq, cuda.blockDim.x):
                        bb, j = r0 + e // nq, u0 + e % nq
                        close_forward_cell(mnext, m, a, MBLK, SBLK, RBLK, S, P[bb, j] + Q[bb, j], b_r,
                                           lengths, n0, s, K, bb, j)
                closes += 1
                cuda.syncthreads()

    @cuda.jit(**jit_options)
    def persistent_backward(DZ, DZbuf, SUMS, DP, DP_step, dmV, dsV, dh, dc, dm, da, dout,
                            GATES, C, CPREV, Z, MBLK, SBLK, RBLK, lengths, n0, close_flags,
                            U, gamma, V_s, V_m, steps, K, ugroups, rgroups, nstage, psug, hgr,
                            reverse):
        """BPTT of ``persistent_forward`` in one cooperative launch, steps in reverse.

        Block q owns part q's rows and units and keeps U[:, units] (and V_s,
        V_m[:, units]) in shared memory.  Per step: (on a closing step: the close rule,
        a grid sync, V^T δp for its part), the cells, a grid sync, then δh_{t-1} =
        U^T δz_t for its part.  δz_t alternates between DZbuf[0] and DZbuf[1] by step.
        A thread keeps the same (row, unit) in the close and cell loops of a step, so
        δm, δa, δc need no barrier there.  With ``stage``, a part's rows of δz_t go to
        shared memory first (``stage_rows``, nstage of them at most).
        """
        grid = cuda.cg.this_grid()
        xch = cuda.shared.array(XCH, float32)              # the simulator's mma stand-in
        B, H = dh.shape
        G = U.shape[0]
        nparts = ugroups * rgroups
        nu = (H + ugroups - 1) // ugroups
        ncol_pad = padded(nu)
        nv = ncol_pad * H if hgr else 0
        Ush, Vs_sh, Vm_sh, Xflat, red = shared_views(ncol_pad * (G + SPAD), nv, nstage * G)
        # the staged rows (nstage, G), made once (here ptxas spills 236 bytes against 324 for a
        # view made per part, as in persistent_forward); without staging a stand-in of the
        # same type, never read
        Xs = Xflat.reshape((nstage, G)) if stage else DZbuf[0]
        resident = nparts == cuda.gridDim.x
        if resident:
            r0, nr, u0, nq, nu = part_span(cuda.blockIdx.x, ugroups, rgroups, B, H)
            load_part(Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu, nu, ncol_pad, G, H, True, hgr)
            cuda.syncthreads()
        for s in range(steps - 1, -1, -1):
            DZs = DZbuf[s % 2]
            if prefetch:                                  # step s - 1's saved values, into L2
                for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    for e in range(cuda.threadIdx.x, nr * nq, cuda.blockDim.x):
                        prefetch_backward(dout, GATES, C, CPREV, Z, lengths, s - 1, psug, reverse,
                                          r0 + e // nq, u0 + e % nq)
            if hgr and close_flags[s]:                                    # the close rule first
                for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    for e in range(cuda.threadIdx.x, nr * nq, cuda.blockDim.x):
                        close_backward_cell(dm, da, DP, DP_step, MBLK, SBLK, RBLK, lengths, n0, s,
                                            K, r0 + e // nq, u0 + e % nq)
                grid.sync()
                for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                    r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                    rot = q % ugroups
                    reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                                nu, ncol_pad, G, H, True, hgr)
                    team_dot(dmV, DP_step, 0, Vm_sh, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, H,
                             lengths, s, rot)
                    team_dot(dsV, DP_step, 0, Vs_sh, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, H,
                             lengths, s, rot)
                    for e in range(cuda.threadIdx.x, nr * nq, cuda.blockDim.x):
                        bb, j = r0 + e // nq, u0 + e % nq
                        if closes_at(lengths, n0, s, K, bb):              # V_m^T δp, V_s^T δp
                            close_backward_finish_cell(dm, da, dmV[bb, j], dsV[bb, j], K, bb, j)
            for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                for e in range(cuda.threadIdx.x, nr * nq, cuda.blockDim.x):
                    cell_backward(DZ, DZs, SUMS, dh, dc, dm, da, dout, GATES, C, CPREV, Z, gamma,
                                  lengths, s, psug, hgr, reverse, r0 + e // nq, u0 + e % nq)
            grid.sync()
            for q in range(cuda.blockIdx.x, nparts, cuda.gridDim.x):
                r0, nr, u0, nq, nu = part_span(q, ugroups, rgroups, B, H)
                rot = q % ugroups
                reload_part(resident, Ush, Vs_sh, Vm_sh, U, V_s, V_m, u0, nq, nu,
                            nu, ncol_pad, G, H, True, hgr)
                # δh_{t-1} = U^T δz_t for the rows that stepped; idle rows keep theirs
                if stage:
                    stage_rows(Xs, DZs, r0, nr, G)
                    team_dot(dh, Xs, r0, Ush, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, G, lengths,
                             s, rot)
                elif mma:
                    mma_dot(dh, DZs, Ush, red, xch, r0, nr, nu, ncol_pad, nu, nq, H, u0, G, lengths,
                            s)
                else:
                    team_dot(dh, DZs, 0, Ush, red, r0, nr, nu, ncol_pad, nu, nq, H, u0, G, lengths,
                             s, rot)

    return dict(persistent_forward=persistent_forward, persistent_backward=persistent_backward)


def new_scratch(n, dtype):
    """A fresh flat device buffer of n values: the default ``scratch`` of the launchers
    below (``Workspace.scratch`` reuses one instead)."""
    return cuda.device_array(n, dtype)


def split_k(tile, M, N, Kd):
    """(tiles of C, chunks of k, chunk length) for one product with ``tile``: k is split
    until there are about 512 blocks (64 in the simulator), in chunks of at least 8 slabs."""
    BM, BN = tile.TM * tile.TY, tile.TN * tile.TX
    tiles = ((M + BM - 1) // BM) * ((N + BN - 1) // BN)
    want, min_k = (64, 2 * tile.BK) if SIM else (512, 8 * tile.BK)   # blocks wanted; shortest chunk
    nsplit = max(1, min(want // tiles, Kd // min_k))
    kchunk = -(-Kd // nsplit) if nsplit > 1 else max(Kd, 1)
    return tiles, (-(-Kd // kchunk) if Kd else 1), kchunk


@lru_cache(maxsize=None)
def multiprocessors():
    """The device's multiprocessor count (1 in the simulator), asked once."""
    return 1 if SIM else cuda.get_current_device().MULTIPROCESSOR_COUNT


def pick_tile(M, N, Kd, dtype=np.float32):
    """``TILES[MATMUL_TILE]``; for "auto" the 128 x 128 tile where its blocks still fill
    every multiprocessor twice (it makes 1.5-1.7x the 64 x 64 tile's GFLOP/s on an H100,
    but a product of few tiles would leave most of the GPU idle), else the 64 x 64; their
    prefetching variants with MATMUL_PREFETCH (the default: on an H100 the prefetching
    tiles made 1.1-2.8x the plain ones' GFLOP/s on the large shape's products, most on
    the weight gradients).  float32 with MATMUL_TENSOR_CORES: the tensor-core tile (k
    split until it fills the GPU); float64 never takes one: it gets the "auto" tile, or
    the 128 x 128 prefetching tile where MATMUL_TILE names a tensor-core tile."""
    name = MATMUL_TILE
    if name == "auto" and MATMUL_TENSOR_CORES != "off" and np.dtype(dtype) == np.float32:
        name = {"tf32": "128x128tf32", "tf32x3": "128x128tf32x3"}[MATMUL_TENSOR_CORES]
    if name == "auto":
        tiles, nsplit, _ = split_k(TILES["128x128"], M, N, Kd)
        name = "128x128" if tiles * nsplit >= 2 * multiprocessors() else "64x64"
        name += "pf" if MATMUL_PREFETCH else ""
    if TILES[name].MMA and np.dtype(dtype) != np.float32:
        name = "128x128pf"
    return TILES[name]


def matmul(k, C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate=False, scratch=new_scratch):
    """C (M,N) [+]= A (M,K) B (K,N) with A, B given as flat arrays and element strides.

    Where the tiles of C are too few to fill the GPU and k is long (the weight
    gradients: k = B*T), k is split into chunks whose products are summed in chunk
    order afterwards (deterministic, no atomics), through ``scratch(n, dtype)``."""
    tile = pick_tile(M, N, Kd, C.dtype)
    tiles, nsplit, kchunk = split_k(tile, M, N, Kd)
    threads = block_threads(tile) if tile.MMA else (tile.TX, tile.TY)
    launch = matmul_kernel(np.dtype(C.dtype), tile)[min(tiles * nsplit, 4 * MAX_BLOCKS), threads]
    if nsplit == 1:
        launch(C.reshape(C.size), A.reshape(A.size), Bm.reshape(Bm.size), M, N, Kd, sam, sak, sbk, sbn,
               accumulate, kchunk)
        return
    partial = scratch(nsplit * M * N, C.dtype)
    launch(partial, A.reshape(A.size), Bm.reshape(Bm.size), M, N, Kd, sam, sak, sbk, sbn, False, kchunk)
    if not accumulate:
        clear(C)
    k["column_sums"][grid_for(M * N)](C.reshape(C.size), partial, nsplit, M * N, M * N)   # chunks in order


def clear(arr):
    """arr[...] = 0 on the device (any shape; nothing is copied from the host)."""
    if arr.size:
        kernels(np.dtype(arr.dtype))["fill_zero"][grid_for(arr.size)](arr.reshape(arr.size))


def zeros(shape, dtype):
    """A device array of zeros, zeroed on the device (no host array is copied)."""
    arr = cuda.device_array(shape, dtype)
    clear(arr)
    return arr


def _chunks(rows, cols):
    """(chunks, rows per chunk) for a two-pass column sum: about 64k first-pass threads."""
    target = 4 if SIM else 65536
    nch = max(1, min(rows, -(-target // max(cols, 1))))
    chunk = -(-rows // nch)
    return -(-rows // chunk), chunk


def column_sums(k, out, A, rows, cols, scratch=new_scratch):
    """out (cols,) += column sums of the flat (rows, cols) device array A, in a fixed order:
    chunk sums in parallel, then the chunks in order (deterministic)."""
    nch, chunk = _chunks(rows, cols)
    partial = scratch(nch * cols, out.dtype)
    k["column_sums_partial"][grid_for(nch * cols)](partial.reshape((nch, cols)), A, rows, cols, chunk)
    k["column_sums"][grid_for(cols)](out, partial, nch, cols, cols)


def sum_over_rows(k, out, A, rows, cols, stride):
    """out (cols,) += Σ_r A[r*stride + c] over rows r (flat device A), in row order: the
    step loops' per-row sums (SUMS) summed over the rows."""
    k["column_sums"][grid_for(cols)](out, A, rows, cols, stride)


def clear_tail(k, A, steps):
    """A (B, T, W)[:, steps:] = 0 where steps < T (see the kernel)."""
    B, T, W = A.shape
    if steps < T and A.size:
        k["clear_tail"][grid_for(B * (T - steps) * W)](A, steps)


def closing_steps(lengths, n0, K, steps):
    """(steps,) int8, 1 where at least one row closes a block (host side, from the initial n).

    Row r closes after step s where s < lengths[r] and (n0[r] + s + 1) % K == 0: every K-th
    step from (K - 1 - n0[r]) % K.  Rows with the same first closing step close together up
    to the longest of them, so one slice per distinct first step does it (no (B, steps) mask)."""
    closes = np.zeros(steps, np.int8)
    first = (K - 1 - np.asarray(n0)) % K
    for f in np.unique(first):
        closes[f:min(steps, int(lengths[first == f].max())):K] = 1
    return closes


Plan = namedtuple("Plan", "ugroups rgroups item_rows blocks threads fwd_bytes bwd_bytes fwd_stage bwd_stage "
                         "item_cols mma")


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


def persistent_plan(B, H, G, itemsize, hgr, row_groups=None, item_rows=None, stage=None,
                    item_cols=None, mma=None):
    """How the persistent kernels split the rows and hidden units, or None where they
    cannot run.

    Returns a ``Plan``: parts are ``rgroups`` groups of rows times ``ugroups`` groups
    of units.  On a GPU there is one part per block and at most one block per
    multiprocessor, so every block is resident (a grid sync needs that); each part's
    slices of U (and V_s, V_m) and the team partials must fit the block's dynamic
    shared memory (``shared_limit``).  More row groups mean fewer rows of h (or δz)
    for each block to read per step, but more units, so larger slices of U.
    ``team_dot`` items of ``item_rows`` rows (2 or 4): 4 halves the rounds of a step.
    The defaults (None) were measured on an H100 (bench/results/README.md): two row
    groups from 16 rows up (else one); with items of 4 columns, items of 4 rows where a
    group has 4 rows (else 2): at (B, T, E, H) = (64, 1024, 300, 512) that trained
    QL-LSTM 17% and LSTM 20% faster than one group and items of 2.  Blocks of 512
    threads (registers capped at 128, see PERSISTENT_JIT) hide more of the step's memory
    latency than 256; 256 where 512 do not fit.  The simulator runs one block that loops
    over every part (so the partition logic is tested there too).  With ``stage`` (None:
    ``STAGE_ROWS``) a loop stages its part's rows of h (forward) or δz (backward) in
    shared memory where they fit besides the rest: ``fwd_stage`` / ``bwd_stage`` rows (0:
    not staged).  Items of ``item_cols`` columns (None: ``ITEM_COLS``, 8; or 4), 2 rows by
    default with 8.  ``mma`` (None: ``STEP_TENSOR_CORES``; float32 only, itemsize 4): the
    step's product on tensor cores (``mma_dot``: needs items of 8 columns, never staged;
    blocks of MMA_THREADS in the simulator, whole warps).
    """
    rgroups = max(1, min(B, (2 if B >= 16 else 1) if row_groups is None else int(row_groups)))
    cols = ITEM_COLS if item_cols is None else int(item_cols)
    check_item_cols(cols)
    mma = bool(STEP_TENSOR_CORES if mma is None else mma) and itemsize == 4
    if mma and cols != 8:
        raise ValueError(f"tensor-core step products (STEP_TENSOR_CORES) need items of 8 columns, "
                         f"got {cols}")
    rows = (4 if -(-B // rgroups) >= 4 and cols == 4 else 2) if item_rows is None else int(item_rows)
    if rows not in (2, 4):
        raise ValueError(f"item_rows must be 2 or 4, got {item_rows!r}")
    blocks = min(3, H) * rgroups if SIM else multiprocessors()
    if blocks < rgroups:
        return None
    nu = -(-H // (blocks // rgroups))
    ugroups = -(-H // nu)
    pad = lambda n: (n + cols - 1) // cols * cols
    v = 2 * pad(nu) * H if hgr else 0
    stage = (STAGE_ROWS if stage is None else stage) and not mma
    nrg = -(-B // rgroups)                       # rows a part may have
    limit = shared_limit()
    spad = MMA_PAD if mma else 0
    for threads in (((MMA_THREADS if mma else THREADS),) if SIM else ((256,) if mma else (512, 256))):
        red = cols * rows * (threads // TEAM) * (TEAM + 1)
        if mma:                                  # mma_dot's partials: a block of outputs per warp
            red = max(red, threads // 32 * (16 * MMA_TILES[0]) * (8 * MMA_TILES[1]))
        fwd = (pad((G // H) * nu) * (H + spad) + v + red) * itemsize
        bwd = (pad(nu) * (G + spad) + v + red) * itemsize
        if max(fwd, bwd) <= limit:
            fwd_stage = nrg if stage and fwd + nrg * H * itemsize <= limit else 0
            bwd_stage = nrg if stage and bwd + nrg * G * itemsize <= limit else 0
            return Plan(ugroups, rgroups, rows, 1 if SIM else ugroups * rgroups, threads,
                        fwd + fwd_stage * H * itemsize, bwd + bwd_stage * G * itemsize,
                        fwd_stage, bwd_stage, cols, mma)
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


class Workspace:
    """Device buffers kept between calls, by name: a training loop calls every step, and
    a device allocation (or a free, which waits for the device) costs more than the
    kernels of a small step.  A buffer only grows: a call with fewer values (batches
    padded to different lengths, a different number of distinct ids) gets a view of
    the front of it, shaped as asked, so that after the largest batch nothing is
    allocated any more.  ``zeros`` clears the view on the device."""

    ALIGN = 32                                           # values between two carved views' starts

    def __init__(self, dtype):
        self.dtype, self.bufs, self.views, self.carvings = np.dtype(dtype), {}, {}, {}

    def empty(self, name, shape, dtype=None):
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        view = self.views.get(name)
        if view is not None and view.shape == shape and view.dtype == dtype:
            return view                                  # same as last time (no new view object)
        n = math.prod(shape)
        buf = self.bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = self.bufs[name] = cuda.device_array(max(n, 1), dtype)
        view = self.views[name] = buf[:n].reshape(shape)
        return view

    def zeros(self, name, shape):
        buf = self.empty(name, shape)
        clear(buf)
        return buf

    def carve(self, group, shapes, dtype=None):
        """(flat, views, starts): the buffer ``group``, a dict of views of it, one per name
        of ``shapes`` (name -> shape), and where each starts in it (multiples of ALIGN)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        shapes = {name: tuple(int(n) for n in shape) for name, shape in shapes.items()}
        key = (dtype.str, tuple(shapes.items()))
        hit = self.carvings.get(group)
        if hit is not None and hit[0] == key and hit[1] is self.views.get(group):
            return hit[1:]                               # same shapes, same buffer: same views
        starts, total = [], 0
        for shape in shapes.values():
            starts.append(total)
            total += -(-math.prod(shape) // self.ALIGN) * self.ALIGN
        flat = self.empty(group, (total,), dtype)
        views = {name: flat[o:o + math.prod(shape)].reshape(shape)
                 for (name, shape), o in zip(shapes.items(), starts)}
        self.carvings[group] = (key, flat, views, starts)
        return flat, views, starts

    def zeros_many(self, group, shapes):
        """Zeroed buffers, name -> shape: views of one buffer cleared by one launch."""
        flat, views, _ = self.carve(group, shapes)
        clear(flat)
        return views

    def put_many(self, group, arrays, dtype=None):
        """The host arrays (name -> array) on the device in one copy, as views of one
        buffer of ``dtype`` (the workspace's float dtype by default)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        flat, views, starts = self.carve(group, {name: np.shape(v) for name, v in arrays.items()}, dtype)
        host = np.zeros(flat.shape, dtype)
        for value, view, start in zip(arrays.values(), views.values(), starts):
            host[start:start + view.size] = np.asarray(value).reshape(-1)
        if host.size:
            flat.copy_to_device(host)
        return views

    def scratch(self, n, dtype=None):
        """A flat buffer of n values, a view of one buffer per dtype that grows as needed:
        for partial sums that one launch writes and the next reads (launches run in
        order on the stream, so the next user cannot overtake them)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        key = ("scratch", dtype.str)
        buf = self.bufs.get(key)
        if buf is None or buf.size < n:
            buf = self.bufs[key] = cuda.device_array(max(int(n), 1), dtype)
        return buf[:n]

    def put(self, name, host):
        """The host array's values in the buffer ``name`` (its own dtype for integers)."""
        host = np.ascontiguousarray(host if np.dtype(host.dtype).kind in "iub" else host.astype(self.dtype))
        buf = self.empty(name, host.shape, host.dtype)
        if buf.size:
            buf.copy_to_device(host)
        return buf


PATHS = ("persistent", "simple")
PARAM_NDIM = dict(W=2, U=2, b=1, gamma=2, beta=2, V_s=2, V_m=2, b_r=1)   # a cell's parameters
PARAM_NAMES = tuple(PARAM_NDIM)


class CudaQLCell:
    """One direction of one QL-LSTM layer on the GPU; the interface of ``layers._QLCell``.

    Two interfaces:

    - ``forward`` / ``backward``: host arrays in and out (the layer API); the
      parameters are copied to the device on each call.
    - ``forward_device`` / ``backward_device``: device arrays in and out, with
      the parameters and gradient accumulators given as dicts of device arrays
      (short names: W, U, b, gamma, beta, V_s, V_m, b_r); only the small per-row
      state (h, c, m, a, n) crosses to the host, and not even that with a state of
      None (zeros in, the final state left on the device).  This is the training-loop
      path.

    ``path`` picks the step loop: "persistent" (default: one cooperative launch
    for all steps) or "simple" (a few launches per step, the reference the
    persistent path is tested against; also used where a part's slice of U does
    not fit in shared memory, see ``persistent_plan``).
    """

    def __init__(self, cpu_cell, path="persistent"):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.path = path
        self.row_groups = None                 # persistent_plan's options (None: its defaults)
        self.item_rows = None
        self.item_cols = None                  # None: ITEM_COLS
        self.stage_rows = None                 # None: STAGE_ROWS
        self.cpu = cpu_cell
        self.prefix, self.H, self.psug, self.hgr = cpu_cell.prefix, cpu_cell.H, cpu_cell.psug, cpu_cell.hgr
        self.K, self.reverse, self.dtype = cpu_cell.K, cpu_cell.reverse, cpu_cell.dtype
        self.cache = None
        self.workspace = Workspace(self.dtype)
        self.final_state = self.initial_state_grads = None   # device views (see forward_device)

    def device_params(self):
        """The cell's parameters as device arrays (copied from the host arrays now)."""
        return {name: cuda.to_device(np.ascontiguousarray(self.cpu._p(name, PARAM_NDIM[name])))
                for name in PARAM_NAMES}

    def device_grads(self):
        """Zeroed device gradient accumulators shaped like ``device_params``."""
        return {name: zeros(self.cpu._p(name, PARAM_NDIM[name]).shape, self.dtype)
                for name in PARAM_NAMES}

    def _plan(self, B, G):
        if self.path != "persistent":
            return None
        return persistent_plan(B, self.H, G, np.dtype(self.dtype).itemsize, self.hgr, self.row_groups,
                               self.item_rows, self.stage_rows, self.item_cols)

    def forward(self, x, lengths, st, need_grad=True):
        out = self.forward_device(cuda.to_device(x), lengths, st, self.device_params(), need_grad)
        return out.copy_to_host()

    def backward(self, dx, grads, dout, dst):
        """Accumulate into host ``dx`` and ``grads``; ``dst`` goes from d(final) to d(initial)."""
        dgrads = self.device_grads()
        d_dx = self.backward_device(cuda.to_device(dout), dgrads, dst)
        dx += d_dx.copy_to_host()
        for name, g in dgrads.items():
            if self.prefix + name in grads:
                grads[self.prefix + name] += g.copy_to_host()

    def _buffers(self, group, zero_shapes, state, st):
        """The call's zeroed buffers (name -> shape; one launch clears them all) and its
        state buffers (name -> (key of st, shape)): zeros too where st is None, else one
        copy of the host values (a (2, B, H) buffer holds st[key] twice)."""
        ws = self.workspace
        if st is None:
            return ws.zeros_many(group, {**zero_shapes, **{n: shape for n, (_, shape) in state.items()}})
        views = ws.zeros_many(group, zero_shapes)
        host = {n: st[key] if len(shape) == 2 else np.stack([st[key]] * shape[0])
                for n, (key, shape) in state.items()}
        return {**views, **ws.put_many(group + "_state", host)}

    def forward_device(self, d_x, lengths, st, P, need_grad=True):
        """Device x (B,T,E) in, device out (B,T,H) back; host ``lengths`` and state ``st``
        (updated in place), or st = None: start from zeros and download nothing (the final
        state stays on the device, ``final_state``); P: device parameters.  Saves what
        ``backward_device`` needs.  ``out`` and ``final_state`` are buffers of this cell's
        workspace: valid until its next forward_device."""
        k = kernels(np.dtype(self.dtype))
        B, T, E = d_x.shape
        H, K = self.H, self.K
        G = P["U"].shape[0]
        NB = (T + K - 1) // K if self.hgr else 0
        ws = self.workspace
        n0 = np.zeros(B, np.int64) if st is None else st["n"].copy()
        steps = int(lengths.max())
        closes = closing_steps(lengths, n0, K, steps) if self.hgr else np.zeros(steps, np.int8)
        ints = ws.put_many("ints", dict(lengths=lengths, n0=n0, closes=closes), np.int64)   # one copy
        d_len, d_n0, d_closes = ints["lengths"], ints["n0"], ints["closes"]
        plan = self._plan(B, G)
        state = dict(c=("c", (B, H)), a=("a", (B, H)))
        if self.hgr:
            state["m0"] = ("m", (B, H))
        state.update(dict(hbuf=("h", (2, B, H)), mbuf=("m", (2, B, H))) if plan is not None else
                     dict(h=("h", (B, H)), m=("m", (B, H))))
        bufs = self._buffers("forward", dict(
            MBLK=(B, NB + 1 if self.hgr else 0, H), SBLK=(B, NB, H), RBLK=(B, NB, H), hU=(B, G),
            S=((2, B, H) if plan is not None else (B, H)), P=(B, H), Q=(B, H)), state, st)
        MBLK, SBLK, RBLK, hU = (bufs[n] for n in ("MBLK", "SBLK", "RBLK", "hU"))
        c, a, Pv, Q = bufs["c"], bufs["a"], bufs["P"], bufs["Q"]
        # out and HPREV are not cleared: the step loops write zeros at a row's padding steps
        # up to the longest row, clear_tail after it
        out, HPREV = ws.empty("out", (B, T, H)), ws.empty("HPREV", (B, T, H))
        clear_tail(k, out, steps)
        clear_tail(k, HPREV, steps)
        GATES, Z = ws.empty("GATES", (B, T, 4, H)), ws.empty("Z", (B, T, G))
        C, CPREV = ws.empty("C", (B, T, H)), ws.empty("CPREV", (B, T, H))
        if self.hgr:                                                       # MBLK[:, 0] = initial m
            k["copy_rows"][grid_for(B * H)](MBLK.reshape(MBLK.size), bufs["m0"].reshape(B * H), B, 1,
                                            NB + 1, 1, H)
        matmul(k, Z, d_x, P["W"], B * T, G, E, E, 1, 1, E)                 # Z = x W^T
        if plan is not None:
            hbuf, mbuf, Sbuf = bufs["hbuf"], bufs["mbuf"], bufs["S"]
            launch_persistent(
                persistent_kernels(np.dtype(self.dtype), plan.item_rows, TEAM_LOADS,
                                   plan.fwd_stage > 0, plan.item_cols,
                                   PRELOAD_CELLS, PREFETCH_STEPS, plan.mma)["persistent_forward"],
                plan, plan.fwd_bytes,
                out, hbuf, c, mbuf, a, Sbuf, Z, GATES, C, CPREV, HPREV, MBLK, SBLK, RBLK, hU, Pv, Q,
                d_len, d_n0, d_closes, P["U"], P["b"], P["gamma"], P["beta"], P["V_s"], P["V_m"],
                P["b_r"], steps, K, plan.ugroups, plan.rgroups, plan.fwd_stage, self.psug, self.hgr,
                self.reverse)
            h, m = hbuf[steps % 2], mbuf[int(closes.sum()) % 2]
        else:
            h, m, S = bufs["h"], bufs["m"], bufs["S"]
            grid = grid_for(B * H)
            for s in range(steps):
                matmul(k, hU, h, P["U"], B, G, H, H, 1, 1, H)               # U h_{t-1}
                k["step_forward"][grid](out, h, c, m, a, Z, GATES, C, CPREV, HPREV, hU, d_len,
                                        P["b"], P["gamma"], P["beta"], s, self.psug, self.hgr,
                                        self.reverse)
                if closes[s]:
                    k["close_summary"][grid](S, a, d_len, d_n0, s, K)
                    matmul(k, Pv, S, P["V_s"], B, H, H, H, 1, 1, H)         # V_s s
                    matmul(k, Q, m, P["V_m"], B, H, H, H, 1, 1, H)          # V_m m
                    k["close_forward"][grid](m, a, MBLK, SBLK, RBLK, S, Pv, Q, P["b_r"], d_len,
                                             d_n0, s, K)
        self.final_state = dict(h=h, c=c, m=m, a=a)
        if st is not None:
            for key, arr in self.final_state.items():
                st[key][...] = arr.copy_to_host()
            if self.hgr:
                st["n"][...] = (n0 + lengths) % K
        self.cache = dict(x=d_x, lengths=lengths, d_len=d_len, d_n0=d_n0, closes=closes,
                          d_closes=d_closes, Z=Z, GATES=GATES, C=C, CPREV=CPREV, HPREV=HPREV,
                          MBLK=MBLK, SBLK=SBLK, RBLK=RBLK, P=P, NB=NB) if need_grad else None
        return out

    def backward_device(self, d_dout, grads, dst):
        """Device δout (B,T,H) in, device δx (B,T,E) back (a workspace buffer, valid until
        the next backward_device); accumulates into the device ``grads`` (short names);
        host ``dst`` goes from d(final) to d(initial), or dst = None: zero gradients of the
        final state, and those of the initial state stay on the device (``initial_state_grads``)."""
        if self.cache is None:
            raise ValueError("backward called before forward() (or after forward(..., need_grad=False))")
        k = kernels(np.dtype(self.dtype))
        cc = self.cache
        x, lengths, d_len, d_n0, P = cc["x"], cc["lengths"], cc["d_len"], cc["d_n0"], cc["P"]
        B, T, E = x.shape
        H, K, NB = self.H, self.K, cc["NB"]
        G = P["U"].shape[0]
        ws = self.workspace
        steps = int(lengths.max())
        plan = self._plan(B, G)
        NS = 9 if self.psug else 4
        bufs = self._buffers("backward", dict(
            SUMS=(B, NS, H), DP=(B, NB, H), DP_step=(B, H), dmV=(B, H), dsV=(B, H), DZbuf=(2, B, G),
            dhU=(B, H)), {"d" + key: (key, (B, H)) for key in "hcma"}, dst)
        dh, dc, dm, da = (bufs["d" + key] for key in "hcma")
        SUMS, DP, DP_step, dmV, dsV = (bufs[n] for n in ("SUMS", "DP", "DP_step", "dmV", "dsV"))
        DZ = ws.empty("DZ", (B, T, G))                     # not cleared: as out in forward_device
        clear_tail(k, DZ, steps)
        if plan is not None:
            DZbuf = bufs["DZbuf"]
            launch_persistent(
                persistent_kernels(np.dtype(self.dtype), plan.item_rows, TEAM_LOADS,
                                   plan.bwd_stage > 0, plan.item_cols,
                                   prefetch=PREFETCH_STEPS, mma=plan.mma)["persistent_backward"],
                plan, plan.bwd_bytes,
                DZ, DZbuf, SUMS, DP, DP_step, dmV, dsV, dh, dc, dm, da, d_dout,
                cc["GATES"], cc["C"], cc["CPREV"], cc["Z"], cc["MBLK"], cc["SBLK"], cc["RBLK"],
                d_len, d_n0, cc["d_closes"], P["U"], P["gamma"], P["V_s"], P["V_m"],
                steps, K, plan.ugroups, plan.rgroups, plan.bwd_stage, self.psug, self.hgr, self.reverse)
        else:
            DZ_step, dhU = bufs["DZbuf"][0], bufs["dhU"]
            grid = grid_for(B * H)
            for s in range(steps - 1, -1, -1):
                if cc["closes"][s]:                                        # the close rule first
                    k["close_backward"][grid](dm, da, DP, DP_step, cc["MBLK"], cc["SBLK"],
                                              cc["RBLK"], d_len, d_n0, s, K)
                    matmul(k, dmV, DP_step, P["V_m"], B, H, H, H, 1, H, 1)  # V_m^T δp
                    matmul(k, dsV, DP_step, P["V_s"], B, H, H, H, 1, H, 1)  # V_s^T δp
                    k["close_backward_finish"][grid](dm, da, dmV, dsV, d_len, d_n0, s, K)
                k["step_backward"][grid](DZ, DZ_step, SUMS, dh, dc, dm, da, d_dout, cc["GATES"],
                                         cc["C"], cc["CPREV"], cc["Z"], P["gamma"], d_len, s,
                                         self.psug, self.hgr, self.reverse)
                matmul(k, dhU, DZ_step, P["U"], B, H, G, G, 1, H, 1)        # U^T δz_t
                k["carry_dh"][grid](dh, dhU, d_len, s, False)
        BT = B * T
        sc = ws.scratch
        d_dx = ws.empty("dx", (B, T, E))
        acc = dict(accumulate=True, scratch=sc)
        matmul(k, grads["W"], DZ, x, G, E, BT, 1, G, E, 1, **acc)                 # Σ δz x^T
        matmul(k, grads["U"], DZ, cc["HPREV"], G, H, BT, 1, G, H, 1, **acc)       # Σ δz h_{t-1}^T
        matmul(k, d_dx, DZ, P["W"], BT, E, G, G, 1, E, 1, scratch=sc)             # W^T δz
        sums = SUMS.reshape(B * NS * H)                    # each row's sums, over the rows:
        sum_over_rows(k, grads["b"], sums, B, G, NS * H)                                # Σ δz
        if self.psug:
            sum_over_rows(k, grads["gamma"].reshape(4 * H), sums[H:], B, 4 * H, NS * H)  # Σ δp_k z
            sum_over_rows(k, grads["beta"].reshape(4 * H), sums[5 * H:], B, 4 * H, NS * H)  # Σ δp_k
        if self.hgr:
            matmul(k, grads["V_s"], DP, cc["SBLK"], H, H, B * NB, 1, H, H, 1, **acc)  # Σ δp s^T
            MPRE = ws.empty("MPRE", (B * NB, H))                           # m before each close
            k["copy_rows"][grid_for(B * NB * H)](MPRE.reshape(B * NB * H),
                                                  cc["MBLK"].reshape(B * (NB + 1) * H), B * NB, NB,
                                                  NB, NB + 1, H)
            matmul(k, grads["V_m"], DP, MPRE, H, H, B * NB, 1, H, H, 1, **acc)   # Σ δp m^T
            column_sums(k, grads["b_r"], DP.reshape(B * NB * H), B * NB, H, sc)
        self.initial_state_grads = dict(h=dh, c=dc, m=dm, a=da)
        if dst is not None:
            for key, arr in self.initial_state_grads.items():
                dst[key][...] = arr.copy_to_host()
        return d_dx
