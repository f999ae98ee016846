"""Matrix products on tensor cores, float32 only: ``mma.sync`` m16n8k8 with TF32 inputs.

numba-cuda has no tensor-core API, so two instructions come in as inline PTX
(``numba.cuda.extending.intrinsic``): ``to_tf32`` (cvt.rn.tf32.f32 on sm_90 and later,
else cvt.rna: round a float32 to TF32, 10 bits of mantissa, to nearest, ties to even or
away from zero: ``tf32_ties``) and ``mma_tf32`` (one warp:
D (16,8) = A (16,8) B (8,8) + C, float32 sums).  The simulator cannot run PTX: there,
``to_tf32`` rounds the bits with numpy and ``mma_tf32`` is a warp-level stand-in that
gathers the fragments in shared memory (see ``mma_tf32`` for the layout both follow).

The kernel takes ``matmul.matmul``'s arguments and makes the same product, with
the prefetching kernel's loop over k (``matmul.slab_pipeline``: slab s+1 on its way in
registers while the warps compute on slab s), or for tiles with PF = S >= 2
``async_pipeline``: ``cp.async`` copies S - 1 slabs straight into shared memory while the
warps compute on one (inline PTX too; the simulator's stand-in lands each copy as late as
the hardware may).  MMA = 1: one product of the rounded inputs (TF32: relative errors
near 1e-3, as cuDNN's TF32 math).  MMA = 3: each input
x = hi + lo, hi = tf32(x), lo = tf32(x - hi), and the sum lo_a hi_b + hi_a lo_b +
hi_a hi_b (lo_a lo_b is below float32's last bit), summed from zero on the tensor cores
for each 8 k and added to C outside them (``mma3_into``): float32's accuracy from three
tensor-core products.

Shapes legend
  C (M, N) [+]= A (M, K) B (K, N), flat, A[m, k] = A[m*sam + k*sak], B[k, n] = B[k*sbk + n*sbn]
  a block: TY x TX warps, a (BM, BN) = (TY*TM, TX*TN) tile of C, k-slabs of BK
  a warp: a (TM, TN) tile = MI x NI mma tiles of (16, 8); lane = 4 g + t (g < 8, t < 4)
  shared: sA[buf, kk, m] rows of BM + 8, sB[buf, kk, n] rows of BN + 8, buf < max(2, PF)
    (the padding puts the 32 lanes' fragment reads (kk = t, t + 4; m = g, g + 8) in 32
    different banks)
"""
from functools import lru_cache

import numpy as np
from numba import float32, int64, uint64

from . import get_cuda
from .arrays import SIM
from .matmul import slab_fit, slab_pipeline, slab_places, slab_shares, tile_functions, tile_jit

cuda = get_cuda()
PAD = 8
MMA_XCH = 16 * 8 + 8 * 8                 # simulator: one warp's A and B of an mma
F32_MAX = float(np.finfo(np.float32).max)


def tf32_ties():
    """How the kernels round float32 to TF32: to nearest, ties to "even" (cvt.rn.tf32.f32,
    one instruction on sm_90 and later, and the simulator's) or "away" from zero
    (cvt.rna.tf32.f32, which sm_80 has, and which sm_90 runs as four instructions)."""
    return "even" if SIM or cuda.get_current_device().compute_capability >= (9, 0) else "away"


@lru_cache(maxsize=None)
def tf32_splitter(passes):
    """The device function split(x, hi, lo, i): hi[i] = tf32(x), and for three passes
    lo[i] = tf32(x - hi[i]) (x = hi + lo to float32's accuracy: ``mma3_into``'s inputs),
    rounded as ``tf32_ties`` says."""
    to_tf32 = _rounder(tf32_ties())

    @cuda.jit(device=True, inline=True)
    def split(x, hi, lo, i):
        h = to_tf32(x)
        hi[i] = h
        if passes == 3:
            lo[i] = to_tf32(x - h)
    return split


if SIM:
    @lru_cache(maxsize=None)
    def _rounder(ties):
        @cuda.jit(device=True)
        def to_tf32(x):
            """x rounded to TF32 (10 bits of mantissa) to nearest, ties to even or away
            from zero: half of the dropped 13 bits' range (less one for ties to even with
            the kept last bit 0) added to the magnitude, then cut."""
            bits = int(np.float32(x).view(np.uint32))
            half = 0x1000 if ties == "away" else 0xFFF + ((bits >> 13) & 1)
            return np.uint32(((bits + half) & 0xFFFFE000) & 0xFFFFFFFF).view(np.float32)
        return to_tf32

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
            exact = float(d[q])          # products of TF32 values are exact in float64
            for k in range(8):
                exact += float(A[r * 8 + k]) * float(Bf[k * 8 + n])
            d[q] = toward_zero(exact)
        cuda.syncthreads()
        return d[0], d[1], d[2], d[3]

    _in_flight = {}          # (block, thread) -> its committed groups of copies, the open one last

    @cuda.jit(device=True)
    def _groups():
        key = (cuda.blockIdx.x, cuda.threadIdx.x)
        if key not in _in_flight:
            _in_flight[key] = [[]]
        return _in_flight[key]

    @cuda.jit(device=True)
    def copy_async(dst, di, src, si, nbytes):
        """The stand-in for ``cp.async`` (4 bytes; zeros where nbytes is 0): the copy lands
        only at a wait for its group, as late as the hardware may land it, so that a read
        of shared memory before its wait reads stale values here too."""
        _groups()[-1].append((dst, di, src[si] if nbytes else np.float32(0.0)))

    @cuda.jit(device=True)
    def commit_copies():
        _groups().append([])

    @lru_cache(maxsize=None)
    def copies_waiter(n):
        """A device function that waits until at most n committed groups are in flight."""
        @cuda.jit(device=True)
        def wait_copies():
            groups = _groups()
            while len(groups) - 1 > n:
                for dst, di, value in groups.pop(0):
                    dst[di] = value
        return wait_copies

    def toward_zero(x):
        """x rounded to float32 toward zero: the stand-in's model of the tensor cores'
        float32 sums, which truncate (Fasi et al. 2021, "Numerical behavior of NVIDIA
        tensor cores"; Ootomo and Yokota 2022).  The stand-in rounds each mma's exact sum
        once; the hardware may also round partial sums."""
        if abs(x) > F32_MAX and abs(x) != np.inf:          # finite: never rounded up to inf
            return np.float32(np.copysign(F32_MAX, x))
        f = np.float32(x)
        return np.nextafter(f, np.float32(0)) if abs(float(f)) > abs(x) else f
else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    @lru_cache(maxsize=None)
    def _rounder(ties):
        text = "cvt.rn.tf32.f32 $0, $1;" if ties == "even" else "cvt.rna.tf32.f32 $0, $1;"

        @intrinsic
        def cvt_tf32(typingctx, x):
            sig = types.float32(types.float32)

            def codegen(context, builder, sig, args):
                cvt = ir.InlineAsm(ir.FunctionType(ir.IntType(32), [ir.FloatType()]), text, "=r,f")
                return builder.bitcast(builder.call(cvt, [args[0]]), ir.FloatType())
            return sig, codegen

        @cuda.jit(device=True, inline=True)
        def to_tf32(x):
            return cvt_tf32(x)
        return to_tf32

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

    @intrinsic
    def _cp_async(typingctx, dst, di, src, si, nbytes):
        sig = types.void(dst, di, src, si, nbytes)

        def codegen(context, builder, sig, args):
            i64, i32 = ir.IntType(64), ir.IntType(32)
            ptrs = [builder.ptrtoint(builder.gep(context.make_array(aty)(context, builder, ary).data,
                                                 [idx]), i64)
                    for ary, aty, idx in ((args[0], sig.args[0], args[1]), (args[2], sig.args[2], args[3]))]
            n = context.cast(builder, args[4], sig.args[4], types.int32)
            asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [i64, i64, i32]),
                               "{ .reg .u64 t; .reg .u32 s; cvta.to.shared.u64 t, $0; cvt.u32.u64 s, t; "
                               "cp.async.ca.shared.global [s], [$1], 4, $2; }", "l,l,r", side_effect=True)
            builder.call(asm, ptrs + [n])
            return context.get_dummy_value()
        return sig, codegen

    def _asm_statement(text):
        @intrinsic
        def statement(typingctx):
            def codegen(context, builder, sig, args):
                builder.call(ir.InlineAsm(ir.FunctionType(ir.VoidType(), []), text, "", side_effect=True), [])
                return context.get_dummy_value()
            return types.void(), codegen
        return statement

    _commit = _asm_statement("cp.async.commit_group;")

    @cuda.jit(device=True, inline=True)
    def copy_async(dst, di, src, si, nbytes):
        """cp.async: dst[di] (shared) = src[si] (global), 4 bytes, on its way while the
        thread goes on; nbytes 0 writes zeros instead (src[si] must still be an address)."""
        _cp_async(dst, di, src, si, nbytes)

    @cuda.jit(device=True, inline=True)
    def commit_copies():
        """cp.async.commit_group: the copies issued since the last commit form a group."""
        _commit()

    @lru_cache(maxsize=None)
    def copies_waiter(n):
        """A device function for cp.async.wait_group n: this thread waits until at most n
        committed groups are in flight (then a barrier makes the copies seen by all)."""
        wait = _asm_statement(f"cp.async.wait_group {n};")

        @cuda.jit(device=True, inline=True)
        def wait_copies():
            wait()
        return wait_copies

    @cuda.jit(device=True, inline=True)
    def mma_tf32(xch, warp, lane, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        """One warp's D = A B + C (layout: the simulator's stand-in above); xch, warp and
        lane are the stand-in's and unused here."""
        return _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)


@cuda.jit(device=True, inline=True)
def mma3_into(acc, i, j, xch, warp, lane, ahi, alo, bhi, blo):
    """acc[i, j] += lo_a hi_b + hi_a lo_b + hi_a hi_b (small terms first) over these 8 k.
    The three products sum from zero on the tensor cores, and that sum is added to acc
    by an ordinary float32 add, which rounds to nearest.  The tensor cores' own sums
    truncate (``toward_zero``): acc summed by them over all of k drifts toward zero by
    up to an ulp of acc per mma.  On an H100, with acc in the mma, LSTM's weight
    gradients (chunks of k of 8192) came out 20x further from the CPU than with the
    float32 tiles; Ootomo and Yokota 2022 describe this drift and this remedy."""
    zero = float32(0.0)
    d0, d1, d2, d3 = mma_tf32(xch, warp, lane, alo[4 * i], alo[4 * i + 1], alo[4 * i + 2],
                              alo[4 * i + 3], bhi[2 * j], bhi[2 * j + 1], zero, zero, zero, zero)
    d0, d1, d2, d3 = mma_tf32(xch, warp, lane, ahi[4 * i], ahi[4 * i + 1], ahi[4 * i + 2],
                              ahi[4 * i + 3], blo[2 * j], blo[2 * j + 1], d0, d1, d2, d3)
    d0, d1, d2, d3 = mma_tf32(xch, warp, lane, ahi[4 * i], ahi[4 * i + 1], ahi[4 * i + 2],
                              ahi[4 * i + 3], bhi[2 * j], bhi[2 * j + 1], d0, d1, d2, d3)
    acc[i, j, 0] += d0
    acc[i, j, 1] += d1
    acc[i, j, 2] += d2
    acc[i, j, 3] += d3


@lru_cache(maxsize=None)
def async_pipeline(tile, lda, ldb, compute):
    """The loop over one chunk of k for tiles with PF = S >= 2, as an inline device
    function with ``slab_pipeline``'s arguments (ra, rb unused): ``cp.async`` copies each
    slab from global memory straight into one of S shared buffers, no registers on the
    way, so S - 1 slabs are in flight while the warps compute on one.  First slabs 0 .. S-2
    are issued; then per slab s: wait for its copies (cp.async.wait_group S-2: the S-2
    newer groups may still be in flight) and a barrier (every thread's copies have landed,
    and every warp is done with slab s-1), issue slab s+S-1 into slab s-1's buffer,
    ``compute`` on slab s.  A closing barrier: the next work item's first copies must not
    land in a buffer that a warp still reads."""
    BK, S = tile.BK, tile.PF
    SLAB_A, SLAB_B, NT, LA, LB = slab_shares(tile)
    place_a, place_b = slab_places(tile)
    wait_copies = copies_waiter(S - 2)
    BKU = np.uint64(BK)

    def slab_copier(count, slab, place, ld):
        """A device function for this thread's copies of one operand's slab at k0 into
        buffer buf: value r < count of the thread's share (e = tid + r NT of the slab) sits
        at (o, kk) = place(tid, r, layout), goes to sX[buf*BK*ld + kk*ld + o]
        (``matmul.slab_mover``'s places) from X[(o0 + o) s_outer + k s_k], k = k0 + kk, or is 0
        where o0 + o >= limit or k >= k_end.  Unsigned indices, as there."""
        LD = np.uint64(ld)
        inside_slab, FULL = slab_fit(tile, slab)

        @cuda.jit(device=True, inline=True)
        def copy_slab(sX, X, layout, s_outer, s_k, o0, limit, k0, k_end, buf, tid):
            if inside_slab(o0, limit, k0, k_end):                 # no test per value
                base = uint64(o0) * uint64(s_outer) + uint64(k0) * uint64(s_k)
                for r in range(count):
                    if FULL or tid + r * NT < slab:
                        o, kk = place(tid, r, layout)
                        copy_async(sX, uint64(buf) * BKU * LD + kk * LD + o, X,
                                   base + o * uint64(s_outer) + kk * uint64(s_k), 4)
                return
            for r in range(count):
                if FULL or tid + r * NT < slab:
                    o, kk = place(tid, r, layout)
                    outer, k = o0 + int64(o), k0 + int64(kk)
                    inside = outer < limit and k < k_end
                    src = uint64(outer) * uint64(s_outer) + uint64(k) * uint64(s_k) if inside else uint64(0)
                    copy_async(sX, uint64(buf) * BKU * LD + kk * LD + o, X, src, 4 if inside else 0)
        return copy_slab

    copy_a, copy_b = slab_copier(LA, SLAB_A, place_a, lda), slab_copier(LB, SLAB_B, place_b, ldb)

    @cuda.jit(device=True, inline=True)
    def issue(sA, sB, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k0, k_end, buf, tid):
        """This thread's copies of the (BM, BK) slab of A and the (BK, BN) slab of B at k0
        into buffer buf (zeros outside A, B or the chunk), committed as one group."""
        copy_a(sA, A, sak, sam, sak, m0, M, k0, k_end, buf, tid)      # A[m, k] = A[m sam + k sak]
        copy_b(sB, Bm, sbn, sbn, sbk, n0, N, k0, k_end, buf, tid)     # B[k, n] = B[n sbn + k sbk]
        commit_copies()

    @cuda.jit(device=True, inline=True)
    def run(acc, sA, sB, ra, rb, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k_begin, k_end, tid,
            a0, b0, extra):
        for s in range(S - 1):
            k0 = k_begin + s * BK
            if k0 < k_end:
                issue(sA, sB, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, k0, k_end, s, tid)
            else:
                commit_copies()                  # an empty group: the waits count groups
        buf = 0
        for k0 in range(k_begin, k_end, BK):
            wait_copies()                        # this slab's copies (this thread's) ...
            cuda.syncthreads()                   # ... and everyone's; slab s-1 read by all
            ahead = k0 + (S - 1) * BK
            if ahead < k_end:
                issue(sA, sB, A, Bm, M, N, sam, sak, sbk, sbn, m0, n0, ahead, k_end,
                      (buf + S - 1) % S, tid)
            else:
                commit_copies()
            compute(acc, sA, sB, uint64(buf * BK * lda + a0), uint64(buf * BK * ldb + b0), extra)
            buf = (buf + 1) % S
        cuda.syncthreads()
    return run


@lru_cache(maxsize=None)
def tensor_core_matmul_kernel(tile):
    """The tensor-core product kernel for one ``matmul.Tile`` with MMA = 1 or 3."""
    TY, TX, TM, TN, BK = tile[:5]
    PASSES = tile.MMA
    if TM % 16 or TN % 8 or BK % 8 or PASSES not in (1, 3):
        raise ValueError(f"not a tensor-core tile: {tile}")
    MI, NI = TM // 16, TN // 8                           # mma tiles per warp
    BM, BN = TM * TY, TN * TX
    LDA, LDB = BM + PAD, BN + PAD                        # shared rows, padded
    ASYNC = tile.PF >= 2                                 # slabs moved by cp.async (else via registers)
    STAGES = tile.PF if ASYNC else 2                     # shared buffers
    SHARED_A, SHARED_B = STAGES * BK * LDA, STAGES * BK * LDB
    ACC, NFA, NFB = (MI, NI, 4), 4 * MI, 2 * NI          # (array shapes must be plain names)
    XCH = TY * TX * MMA_XCH if SIM else 1
    # unsigned offsets (uint64 with int64 would be float64 in Numba's typing)
    A4, A8, B4, B8, EIGHT = (np.uint64(n) for n in (4 * LDA, 8 * LDA, 4 * LDB, 8 * LDB, 8))
    tile_count, _, _, _, _, _, put = tile_functions(float32, tile)
    LA, LB = (1, 1) if ASYNC else slab_shares(tile)[3:]  # the next slab, in registers
    split = tf32_splitter(PASSES)

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
                    if PASSES == 3:
                        mma3_into(acc, i, j, xch, warp, lane, ahi, alo, bhi, blo)
                    else:
                        mma_into(acc, i, j, xch, warp, lane, ahi, bhi)
            offa += A8
            offb += B8

    if ASYNC:
        run_chunk = async_pipeline(tile, LDA, LDB, slab_mma)
    else:
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

    @cuda.jit(**tile_jit(tile))
    def matmul(C, A, Bm, M, N, Kd, sam, sak, sbk, sbn, accumulate, kchunk):
        """C (M,N) [+]= A B on tensor cores (``matmul.matmul``'s arguments and split k)."""
        sA = cuda.shared.array(SHARED_A, float32)
        sB = cuda.shared.array(SHARED_B, float32)
        xch = cuda.shared.array(XCH, float32)               # the simulator's mma stand-in
        ra = cuda.local.array(LA, float32)                   # the next slab, on its way (PF 1)
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
