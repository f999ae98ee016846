"""Matrix products on the GPU: register-blocked shared-memory tiles (numba-cuda has no BLAS).

The layers' products before and after their step loops (x W^T, W^T δz, the weight
gradients Σ δz x^T) and the simple path's per-step ones all go through ``matmul``:
C (M,N) [+]= A (M,K) B (K,N), A and B flat with element strides, so a transpose is a
choice of strides, not a copy.  ``pick_tile`` chooses the ``Tile``: for float32 with
MATMUL_TENSOR_CORES (the default) a TF32 tensor-core one (``tensor_cores.py``).  Where C
has too few tiles to fill the GPU and k is long (the weight gradients: k = B*T), k is split
into chunks whose products are summed afterwards in chunk order (``split_k``): no atomics,
the same result every run.

Shapes legend (flat device arrays)
  C (M,N); A[m, k] = A[m*sam + k*sak]; B[k, n] = Bm[k*sbk + n*sbn]
  a block makes a (BM, BN) tile of C, BM = TM*TY, BN = TN*TX, from k-slabs of BK:
    sA[kk*BM + m] (BK, BM) and sB[kk*BN + n] (BK, BN) in shared memory
  split k: chunk p's product at C[p*M*N:] (a scratch buffer), then summed into C
"""
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import float32, float64, int64, uint64

from . import get_cuda
from .arrays import LINEINFO, MAX_BLOCKS, SIM, clear, multiprocessors, new_scratch, sum_over_rows

cuda = get_cuda()
# matrix product tiles: (TY, TX) threads per block, TM x TN outputs each, k-slabs of BK;
# PF = 1: the next slab is loaded into registers while the block computes on this one
# (two shared buffers, one barrier per slab); PF = S >= 2, tensor-core tiles only: S shared
# buffers, S - 1 slabs on their way by cp.async.  MMA = 1 or 3: tensor cores, float32 only
# (``tensor_cores``: TY x TX warps, each a TM x TN tile of C; TF32 inputs, one product
# per mma, or three for float32 accuracy).  REG: a cap on registers per thread (on a GPU;
# 0: none), so that more warps fit a multiprocessor's 64k registers.  FAST = 1 (prefetching
# and cp.async tiles): a slab wholly inside A or B and the chunk of k loads without a test per
# value (``slab_mover``); 0: every slab is tested (the "...tested" twin, to time against).
# MATMUL_TILE names the one ``matmul`` uses
Tile = namedtuple("Tile", "TY TX TM TN BK PF MMA REG FAST", defaults=(0, 0, 0, 1))
TILES = ({"64x64": Tile(2, 2, 2, 2, 2), "128x128": Tile(2, 2, 4, 4, 2),
          "64x64pf": Tile(2, 2, 2, 2, 2, 1), "128x128pf": Tile(2, 2, 4, 4, 2, 1),
          "128x128tf32": Tile(2, 1, 16, 16, 16, 1, 1), "128x128tf32x3": Tile(2, 1, 16, 16, 16, 1, 3),
          "128x128tf32k8": Tile(2, 1, 16, 16, 8, 1, 1), "128x128tf32x3k8": Tile(2, 1, 16, 16, 8, 1, 3),
          "128x128tf32as": Tile(2, 1, 16, 16, 8, 4, 1), "128x128tf32x3as": Tile(2, 1, 16, 16, 8, 4, 3),
          "128x128tf32x3as16": Tile(2, 1, 16, 16, 16, 2, 3),
          "128x128tf32x3r128": Tile(2, 1, 16, 16, 16, 1, 3, 128, 0),
          "128x128tf32x3tested": Tile(2, 1, 16, 16, 16, 1, 3, 0, 0),
          "128x128tf32x3w16": Tile(2, 2, 16, 8, 16, 1, 3, 128, 0),
          "64x128tf32x3r128": Tile(1, 2, 16, 8, 16, 1, 3, 128)}
         if SIM else
         {"64x64": Tile(16, 16, 4, 4, 16), "128x128": Tile(16, 16, 8, 8, 8),
          "64x64pf": Tile(16, 16, 4, 4, 16, 1), "128x128pf": Tile(16, 16, 8, 8, 8, 1),
          # 8 warps of 64 x 32.  ptxas (scripts/ptx_check.py, sm_90), since the slab moves take
          # their places from ``slab_places``: tf32 130 registers, tf32x3 172; with k-slabs of 8:
          # 160 and 168; no spills (before: 255, 255 and 52 bytes of spills, 191, 244); with the
          # untested loads of slabs inside (FAST): 160, 172, 158 and 172.  On an H100 the slabs of
          # 16 made 3-8% more GFLOP/s than those of 8 (tf32x3, spills and all; before its sums
          # moved out of the tensor cores: tensor_cores.mma3_into), so "auto" takes them
          "128x128tf32": Tile(2, 4, 64, 32, 16, 1, 1), "128x128tf32x3": Tile(2, 4, 64, 32, 16, 1, 3),
          # the default tile with every slab's loads tested for the edges, each address computed
          # in full (as until the sixteenth session, less the thread test that FULL drops from
          # both).  ptxas: 168 registers (the default: 172), the 8 loads of a slab of A from
          # about 130 instructions (the default, for a slab inside A and the chunk: about 25; the
          # slabs of a product are almost all inside).  Not yet timed
          "128x128tf32x3tested": Tile(2, 4, 64, 32, 16, 1, 3, 0, 0),
          "128x128tf32k8": Tile(2, 4, 64, 32, 8, 1, 1), "128x128tf32x3k8": Tile(2, 4, 64, 32, 8, 1, 3),
          # cp.async straight into shared memory, no registers on the way: k-slabs of 8, 4 buffers
          # (35 KB), 3 slabs in flight; or slabs of 16, 2 buffers.  The tiles above made 15-23
          # TFLOP/s on an H100 with one slab in flight in registers (bench/results/README.md).
          # ptxas: 190 (tf32), 244 (tf32x3) and 254 (slabs of 16) registers, no spills.  Not yet
          # timed
          "128x128tf32as": Tile(2, 4, 64, 32, 8, 4, 1), "128x128tf32x3as": Tile(2, 4, 64, 32, 8, 4, 3),
          "128x128tf32x3as16": Tile(2, 4, 64, 32, 16, 2, 3),
          # more warps per multiprocessor (the tiles above: 8, one block of 172 registers a thread;
          # their tensor cores are not what limits them: tf32 made only 1.16-1.29x tf32x3's rate
          # with a third of the mmas).  ptxas, capped at 128 registers: the same tile, two blocks
          # (16 warps), 236 bytes of spills; 16 warps of 32 x 32 in one block, 16 bytes (134
          # registers uncapped: too many for 512 threads); 8 warps of 32 x 32, a 64 x 128 tile,
          # two blocks, 32 bytes.  The first two test every slab (FAST = 0): untested, ptxas
          # spilled 464 and 76 bytes, the addresses kept for the loads.  Not yet timed
          "128x128tf32x3r128": Tile(2, 4, 64, 32, 16, 1, 3, 128, 0),
          "128x128tf32x3w16": Tile(4, 4, 32, 32, 16, 1, 3, 128, 0),
          "64x128tf32x3r128": Tile(2, 4, 32, 32, 16, 1, 3, 128)})
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


def tile_jit(tile):
    """A tile kernel's ``cuda.jit`` options: its register cap (REG), on a GPU; line information
    with QLNUMBA_CUDA_LINEINFO=1 (``arrays.LINEINFO``)."""
    options = {"max_registers": tile.REG} if tile.REG and not SIM else {}
    return dict(options, lineinfo=True) if LINEINFO else options


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

    @cuda.jit(**tile_jit(tile))
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
def slab_fit(tile, slab):
    """(inside, FULL) for one operand's slab of ``slab`` values, (EXTENT, BK): the inline
    device function ``inside(o0, limit, k0, k_end)``, whether the slab at (o0, k0) lies wholly
    inside the operand's ``limit`` rows and the chunk of k, so that its values load with no
    test each (always False where tile.FAST is 0: every slab tested); and FULL, whether every
    thread of the block moves the same number of its values (no test of tid + r NT < slab).
    ``slab_mover`` and the cp.async tiles' copier both take them."""
    BK, FAST, EXTENT = tile.BK, tile.FAST, slab // tile.BK

    @cuda.jit(device=True, inline=True)
    def inside(o0, limit, k0, k_end):
        if FAST:
            return o0 + EXTENT <= limit and k0 + BK <= k_end
        return False
    return inside, slab % block_threads(tile) == 0


@lru_cache(maxsize=None)
def slab_mover(ftype, tile, count, slab, place, ld):
    """One operand's slab moves in the prefetching kernels, as inline device functions
    ``load(regs, X, layout, s_outer, s_k, o0, limit, k0, k_end, tid)`` and
    ``store(sX, regs, buf, layout, tid)``.  Value r < count of this thread's share (value
    e = tid + r NT of the slab's ``slab`` values) sits at (o, kk) = place(tid, r, layout):
    load puts X[(o0 + o) s_outer + k s_k], k = k0 + kk, into regs[r] (0 where o0 + o >= limit
    or k >= k_end), store puts regs[r] into shared sX[buf*BK*ld + kk*ld + o].  ld: the shared
    rows' length (BM or BN, or padded: ``tensor_cores``, whose cp.async copies take the same
    places)."""
    NT = block_threads(tile)
    inside_slab, FULL = slab_fit(tile, slab)
    BKU, LD = np.uint64(tile.BK), np.uint64(ld)

    # indices unsigned (uint64, every operand converted: uint64 with int64 would be float64 in
    # Numba's typing), so no negative-index wraparound code per value.  With tile.FAST a slab
    # wholly inside X and the chunk (every slab but those at a product's edges) loads without
    # a test per value, each value's offset added to one base (ptxas, sm_90, the default tile:
    # 8 loads from about 25 instructions, against about 130 with the tests)
    @cuda.jit(device=True, inline=True)
    def load(regs, X, layout, s_outer, s_k, o0, limit, k0, k_end, tid):
        if inside_slab(o0, limit, k0, k_end):
            base = uint64(o0) * uint64(s_outer) + uint64(k0) * uint64(s_k)
            for r in range(count):
                if FULL or tid + r * NT < slab:
                    o, kk = place(tid, r, layout)
                    regs[r] = X[base + o * uint64(s_outer) + kk * uint64(s_k)]
            return
        for r in range(count):
            o, kk = place(tid, r, layout)
            outer, k = o0 + int64(o), k0 + int64(kk)
            inside = (FULL or tid + r * NT < slab) and outer < limit and k < k_end
            regs[r] = X[uint64(outer) * uint64(s_outer) + uint64(k) * uint64(s_k)] if inside else ftype(0.0)

    @cuda.jit(device=True, inline=True)
    def store(sX, regs, buf, layout, tid):
        for r in range(count):
            if FULL or tid + r * NT < slab:
                o, kk = place(tid, r, layout)
                sX[uint64(buf) * BKU * LD + kk * LD + o] = regs[r]

    return load, store


@lru_cache(maxsize=None)
def slab_pipeline(ftype, tile, lda, ldb, compute):
    """The prefetching kernels' loop over one chunk of k, as an inline device function
    ``run(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k_begin, k_end, tid,
    a0, b0, extra)``: slab 0 into shared buffer 0, then per slab the next one into
    registers (``slab_mover``), ``compute(acc, sA, sB, off_a, off_b, extra)`` on the one in
    shared memory (off_a = buf*BK*lda + a0, off_b likewise: unsigned), the next one into
    the other buffer, one barrier.  ``extra``: what compute needs besides (a tuple)."""
    BK = tile.BK
    SLAB_A, SLAB_B, _, LA, LB = slab_shares(tile)
    place_a, place_b = slab_places(tile)
    load_a, store_a = slab_mover(ftype, tile, LA, SLAB_A, place_a, lda)
    load_b, store_b = slab_mover(ftype, tile, LB, SLAB_B, place_b, ldb)

    @cuda.jit(device=True, inline=True)
    def load(ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k0, k_end, tid):
        """This thread's share of the slabs of A and B at k0 into registers."""
        load_a(ra, A, sak, sam, sak, m0, M, k0, k_end, tid)          # A[m, k] = A[m sam + k sak]
        load_b(rb, Bm, sbn, sbn, sbk, n0, N, k0, k_end, tid)         # B[k, n] = B[n sbn + k sbk]

    @cuda.jit(device=True, inline=True)
    def store(sA, sB, ra, rb, buf, sak, sbn, tid):
        """The registers into shared buffer ``buf``."""
        store_a(sA, ra, buf, sak, tid)
        store_b(sB, rb, buf, sbn, tid)

    @cuda.jit(device=True, inline=True)
    def run(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k_begin, k_end, tid,
            a0, b0, extra):
        load(ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k_begin, k_end, tid)
        store(sA, sB, ra, rb, 0, sak, sbn, tid)
        cuda.syncthreads()
        buf = 0
        for k0 in range(k_begin, k_end, BK):
            more = k0 + BK < k_end
            if more:                                     # slab s+1 into registers
                load(ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k0 + BK, k_end, tid)
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
    _, _, _, LA, LB = slab_shares(tile)

    @cuda.jit(device=True, inline=True)
    def compute(acc, sA, sB, offa, offb, extra):
        slab_product(acc, sA, sB, offa, offb)

    run_chunk = slab_pipeline(ftype, tile, BM, BN, compute)

    @cuda.jit(**tile_jit(tile))
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


def shortest_chunk(tile):
    """The fewest values of k that ``split_k`` puts in a chunk: 8 slabs (2 in the simulator)."""
    return (2 if SIM else 8) * tile.BK


def split_k(tile, M, N, Kd):
    """(tiles of C, chunks of k, chunk length) for one product with ``tile``: k is split
    until there are about 512 blocks (64 in the simulator), in chunks of at least 8 slabs."""
    BM, BN = tile.TM * tile.TY, tile.TN * tile.TX
    tiles = ((M + BM - 1) // BM) * ((N + BN - 1) // BN)
    want = 64 if SIM else 512                                         # blocks wanted
    nsplit = max(1, min(want // tiles, Kd // shortest_chunk(tile)))
    kchunk = -(-Kd // nsplit) if nsplit > 1 else max(Kd, 1)
    return tiles, (-(-Kd // kchunk) if Kd else 1), kchunk


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


def matmul(C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate=False, scratch=new_scratch):
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
    sum_over_rows(C.reshape(C.size), partial, nsplit, M * N, M * N)      # the chunks, in order
