"""Matrix products on tensor cores, float32 only: ``mma.sync`` m16n8k8 with TF32 inputs.

numba-cuda has no tensor-core API, so two instructions come in as inline PTX
(``numba.cuda.extending.intrinsic``): ``to_tf32`` (cvt.rna.tf32.f32: round a float32 to
TF32, 10 bits of mantissa, to nearest, ties away from zero) and ``mma_tf32`` (one warp:
D (16,8) = A (16,8) B (8,8) + C, float32 sums).  The simulator cannot run PTX: there,
``to_tf32`` rounds the bits with numpy and ``mma_tf32`` is a warp-level stand-in that
gathers the fragments in shared memory (see ``mma_tf32`` for the layout both follow).

The kernel takes ``recurrent.matmul``'s arguments and makes the same product, with
the prefetching kernel's loop over k (``recurrent.slab_pipeline``: slab s+1 on its way in
registers while the warps compute on slab s).  MMA = 1: one product of the rounded
inputs (TF32: relative errors near 1e-3, as cuDNN's TF32 math).  MMA = 3: each input
x = hi + lo, hi = tf32(x), lo = tf32(x - hi), and the sum lo_a hi_b + hi_a lo_b +
hi_a hi_b (lo_a lo_b is below float32's last bit): float32's accuracy from three
tensor-core products.

Shapes legend
  C (M, N) [+]= A (M, K) B (K, N), flat, A[m, k] = A[m*sam + k*sak], B[k, n] = B[k*sbk + n*sbn]
  a block: TY x TX warps, a (BM, BN) = (TY*TM, TX*TN) tile of C, k-slabs of BK
  a warp: a (TM, TN) tile = MI x NI mma tiles of (16, 8); lane = 4 g + t (g < 8, t < 4)
  shared: sA[buf, kk, m] rows of BM + 8, sB[buf, kk, n] rows of BN + 8 (the padding puts
    the 32 lanes' fragment reads (kk = t, t + 4; m = g, g + 8) in 32 different banks)
"""
from functools import lru_cache

import numpy as np
from numba import float32, uint64

from . import get_cuda
from .recurrent import SIM, slab_loaders, slab_pipeline, tile_functions

cuda = get_cuda()
PAD = 8
MMA_XCH = 16 * 8 + 8 * 8                 # simulator: one warp's A and B of an mma


if SIM:
    @cuda.jit(device=True)
    def to_tf32(x):
        """x rounded to TF32 (cvt.rna: to nearest, ties away from zero), as a float32."""
        bits = int(np.float32(x).view(np.uint32))
        return np.uint32(((bits + 0x1000) & 0xFFFFE000) & 0xFFFFFFFF).view(np.float32)

    @cuda.jit(device=True)
    def mma_tf32(xch, warp, lane, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """The simulator's stand-in for ``mma.sync.aligned.m16n8k8.row.col.f32.tf32``,
        with the instruction's fragment layout (PTX ISA, "mma.m16n8k8", .tf32): lane
        4 g + t holds A[g, t], A[g + 8, t], A[g, t + 4], A[g + 8, t + 4] (a0..a3),
        B[t, g], B[t + 4, g] (b0, b1), and C and D at [g, 2t], [g, 2t + 1],
        [g + 8, 2t], [g + 8, 2t + 1] (c0..c3, the four returned).  Every thread of
        the block calls it together (it meets two barriers)."""
        g, t = lane // 4, lane % 4
        A, Bf = xch[warp * MMA_XCH:], xch[warp * MMA_XCH + 128:]   # A[r*8 + k], Bf[k*8 + n]
        A[g * 8 + t], A[(g + 8) * 8 + t], A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4] = a0, a1, a2, a3
        Bf[t * 8 + g], Bf[(t + 4) * 8 + g] = b0, b1
        cuda.syncthreads()
        d = [c0, c1, c2, c3]
        for q in range(4):
            r, n = g + (q // 2) * 8, 2 * t + q % 2
            for k in range(8):
                d[q] = np.float32(d[q] + A[r * 8 + k] * Bf[k * 8 + n])
        cuda.syncthreads()
        return d[0], d[1], d[2], d[3]
else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _cvt_tf32(typingctx, x):
        sig = types.float32(types.float32)

        def codegen(context, builder, sig, args):
            cvt = ir.InlineAsm(ir.FunctionType(ir.IntType(32), [ir.FloatType()]),
                               "cvt.rna.tf32.f32 $0, $1;", "=r,f")
            return builder.bitcast(builder.call(cvt, [args[0]]), ir.FloatType())
        return sig, codegen

    @intrinsic
    def _mma(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        sig = types.UniTuple(types.float32, 4)(*([types.float32] * 10))

        def codegen(context, builder, sig, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            ins = [builder.bitcast(v, i32) for v in args[:6]] + list(args[6:])
            fn = ir.FunctionType(ir.LiteralStructType([f32] * 4), [i32] * 6 + [f32] * 4)
            mma = ir.InlineAsm(fn, "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                               "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                               "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", side_effect=True)
            d = builder.call(mma, ins)
            return context.make_tuple(builder, sig.return_type,
                                      [builder.extract_value(d, i) for i in range(4)])
        return sig, codegen

    @cuda.jit(device=True, inline=True)
    def to_tf32(x):
        return _cvt_tf32(x)

    @cuda.jit(device=True, inline=True)
    def mma_tf32(xch, warp, lane, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """One warp's D = A B + C (layout: the simulator's stand-in above); xch, warp and
        lane are the stand-in's and unused here."""
        return _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


@lru_cache(maxsize=None)
def tensor_core_matmul_kernel(tile):
    """The tensor-core product kernel for one ``recurrent.Tile`` with MMA = 1 or 3."""
    TY, TX, TM, TN, BK = tile[:5]
    PASSES = tile.MMA
    if TM % 16 or TN % 8 or BK % 8 or PASSES not in (1, 3):
        raise ValueError(f"not a tensor-core tile: {tile}")
    MI, NI = TM // 16, TN // 8                           # mma tiles per warp
    BM, BN = TM * TY, TN * TX
    LDA, LDB = BM + PAD, BN + PAD                        # shared rows, padded
    SHARED_A, SHARED_B = 2 * BK * LDA, 2 * BK * LDB      # two buffers each
    ACC, NFA, NFB = (MI, NI, 4), 4 * MI, 2 * NI          # (array shapes must be plain names)
    XCH = TY * TX * MMA_XCH if SIM else 1
    # unsigned offsets (uint64 with int64 would be float64 in Numba's typing)
    A4, A8, B4, B8, EIGHT = (np.uint64(n) for n in (4 * LDA, 8 * LDA, 4 * LDB, 8 * LDB, 8))
    tile_count, _, _, _, _, _, put = tile_functions(float32, tile)
    LA, LB, _, _, _ = slab_loaders(float32, tile, LDA, LDB)

    @cuda.jit(device=True, inline=True)
    def split(x, hi, lo, i):
        """hi[i] = tf32(x), and for three passes lo[i] = tf32(x - hi[i])."""
        h = to_tf32(x)
        hi[i] = h
        if PASSES == 3:
            lo[i] = to_tf32(x - h)

    @cuda.jit(device=True, inline=True)
    def mma_into(acc, i, j, xch, warp, lane, af, bf):
        """acc[i, j] += A fragment af[4i .. 4i+3] times B fragment bf[2j, 2j+1]."""
        acc[i, j, 0], acc[i, j, 1], acc[i, j, 2], acc[i, j, 3] = mma_tf32(
            xch, warp, lane, af[4 * i], af[4 * i + 1], af[4 * i + 2], af[4 * i + 3],
            bf[2 * j], bf[2 * j + 1], acc[i, j, 0], acc[i, j, 1], acc[i, j, 2], acc[i, j, 3])

    @cuda.jit(device=True, inline=True)
    def slab_mma(acc, sA, sB, offa, offb, extra):
        """acc += this warp's (TM, BK) rows of the slab in sA times its (BK, TN) columns
        in sB, 8 k at a time (offa = buffer + t*LDA + the warp's first row + g, offb
        likewise): per 8 k, the fragments (split into TF32 parts), then MI x NI mmas."""
        xch, warp, lane, ahi, alo, bhi, blo = extra
        for ks in range(BK // 8):
            for i in range(MI):
                e = offa + uint64(i * 16)
                split(sA[e], ahi, alo, 4 * i)                     # A[g, t]
                split(sA[e + EIGHT], ahi, alo, 4 * i + 1)         # A[g + 8, t]
                split(sA[e + A4], ahi, alo, 4 * i + 2)            # A[g, t + 4]
                split(sA[e + A4 + EIGHT], ahi, alo, 4 * i + 3)    # A[g + 8, t + 4]
            for j in range(NI):
                e = offb + uint64(j * 8)
                split(sB[e], bhi, blo, 2 * j)                     # B[t, g]
                split(sB[e + B4], bhi, blo, 2 * j + 1)            # B[t + 4, g]
            for i in range(MI):
                for j in range(NI):
                    if PASSES == 3:       # the small terms first, the big one last
                        mma_into(acc, i, j, xch, warp, lane, alo, bhi)
                        mma_into(acc, i, j, xch, warp, lane, ahi, blo)
                    mma_into(acc, i, j, xch, warp, lane, ahi, bhi)
            offa += A8
            offb += B8

    run_chunk = slab_pipeline(float32, tile, LDA, LDB, slab_mma)

    @cuda.jit(device=True, inline=True)
    def store_warp_tile(C, acc, M, N, r0, c0, split_at, g, t, accumulate):
        """acc into chunk ``split_at`` of C: mma tile (i, j)'s D at rows r0 + 16 i + g (+ 8),
        columns c0 + 8 j + 2 t (+ 1).  (q written out: as a loop, Numba's loops were not
        all unrolled and acc went to local memory.)"""
        for i in range(MI):
            row = r0 + i * 16 + g
            for j in range(NI):
                col = c0 + j * 8 + 2 * t
                put(C, M, N, row, col, split_at, acc[i, j, 0], accumulate)
                put(C, M, N, row, col + 1, split_at, acc[i, j, 1], accumulate)
                put(C, M, N, row + 8, col, split_at, acc[i, j, 2], accumulate)
                put(C, M, N, row + 8, col + 1, split_at, acc[i, j, 3], accumulate)

    @cuda.jit
    def matmul(C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate, kchunk):
        """C (M,N) [+]= A B on tensor cores (``recurrent.matmul``'s arguments and split k)."""
        sA = cuda.shared.array(SHARED_A, float32)
        sB = cuda.shared.array(SHARED_B, float32)
        xch = cuda.shared.array(XCH, float32)               # the simulator's mma stand-in
        ra = cuda.local.array(LA, float32)                   # the next slab, on its way
        rb = cuda.local.array(LB, float32)
        acc = cuda.local.array(ACC, float32)                 # acc[i, j]: mma tile (i, j)'s D
        ahi = cuda.local.array(NFA, float32)                 # fragments: A[i] at 4i .. 4i+3
        alo = cuda.local.array(NFA, float32)
        bhi = cuda.local.array(NFB, float32)                 # B[j] at 2j, 2j+1
        blo = cuda.local.array(NFB, float32)
        tid = cuda.threadIdx.x
        warp, lane = tid // 32, tid % 32
        g, t = lane // 4, lane % 4
        wr, wc = (warp // TX) * TM, (warp % TX) * TN         # the warp's tile in the block's
        tiles_n, tiles, items = tile_count(M, N, Kd, kchunk)
        for work in range(cuda.blockIdx.x, items, cuda.gridDim.x):
            tile_at, split_at = work % tiles, work // tiles
            m0, n0 = (tile_at // tiles_n) * BM, (tile_at % tiles_n) * BN
            for i in range(MI):
                for j in range(NI):
                    acc[i, j, 0] = acc[i, j, 1] = acc[i, j, 2] = acc[i, j, 3] = 0.0
            run_chunk(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0,
                      split_at * kchunk, min(Kd, (split_at + 1) * kchunk), tid,
                      t * LDA + wr + g, t * LDB + wc + g, (xch, warp, lane, ahi, alo, bhi, blo))
            store_warp_tile(C, acc, M, N, m0 + wr, n0 + wc, split_at, g, t, accumulate)

    return matmul
