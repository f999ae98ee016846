"""The per-step matrix product of the recurrence, C = A X, on register tiles (CPU).

Every step of the unit-major kernels multiplies the same weights A (U's rows for
a thread's units, or U^T's in BPTT) by a thin matrix X (h_{t-1} or δz_t, one
column per sequence: 16 to 64 of them).  BLAS is built for large products: it
copies both operands into its own layout on every call, and at these thin shapes
it runs at 55-70% of what it reaches on large ones (table below).  Here A is
packed once per kernel call (``pack_panels``) and each step runs ``panel_gemm``:
a loop over tiles of mr rows x NV vectors of columns, each tile's sums held in
registers for the whole of k (``_tile_kernel``, LLVM vector code: the same loops
written in plain Numba ran at 15-23 GFLOP/s, as LLVM kept the sums in memory).
Columns past n are masked off (masked loads and stores), rows past m are zero in
the packed A and never stored.

The B-major kernels (``recurrent.py``, ``gru.py``) keep one row per sequence, so
their product is h_{t-1} U^T (δz U in BPTT): there A is the thin matrix, packed
again each step into the same panels (a copy of B rows), and X is the fixed weight
matrix, n = G columns wide.  X is packed once per call too, into blocks of NV vectors
of columns (``blocks_of``), and ``rows_gemm`` runs block by block: each block is read
from memory once per step and its rows lie next to each other.  Read in place, one
tile row of X is 128 bytes every ld_x bytes, and where X outgrows L2 (U^T at H = 512
is 3 MB) the tiles waited on memory: on one core, (32, 1536) x (1536, 512) ran at
49 GFLOP/s in place and 118 from blocks (OpenBLAS 127); (32, 512) x (512, 1536) at 82
and 126 (OpenBLAS 134); (32, 768) x (768, 256) at 124 and 151 (OpenBLAS 135).

Measured on one core of the CI machine kind's Xeon (float32, 256 steps of one product,
OpenBLAS 0.3.31, whose large products reach 177 GFLOP/s there):

  A x X                 tiles (AVX-512)   OpenBLAS   tiles (AVX2)   OpenBLAS (its AVX2 kernels)
  (512, 256) (256, 32)  180 GFLOP/s       121        110            93
  (1024, 256) (256, 16) 171               100        105            78
  (2048, 512) (512, 64) 162               124         88            98

The tile fits the host's vector registers: 64-byte vectors with AVX-512 (mr = MR = 8
rows x 2 vectors: 16 accumulators of the 32 registers), 32-byte with AVX2 (MR =
6: 12 of 16).  When the columns fit one vector, a tile of 2 mr rows x 1 vector
keeps as many accumulators busy.  Every panel of A reads all of X again; where X
is larger than L1 (``X_L1_BYTES``: h_{t-1} at H = 512 and 64 columns is 128 KB) it
comes from L2, and the weights' panels get MRW = 12 rows with AVX-512 (24
accumulators), a third fewer passes over X (``panel_rows``).  On one core,
(1024, 512) x (512, 64) ran at 132-155 GFLOP/s with 8 rows and 150-155 with 12,
(2048, 512) x (512, 64) at 131-152 and 145-157; with X in L1 the two were level,
and the spare rows of a last 12-row panel cost more (QL-LSTM's 128 rows a thread at
(B, H) = (32, 256): 132).  The B-major kernels' A (16 to 32 rows a thread) keeps
MR-row panels (``pack_rows``).  Sums run in k order with fused multiply-adds
(``llvm.fmuladd``), so the result may differ from BLAS's in the last bits, as two
BLAS builds do.

Shapes legend
  A (m, K)              the weights (unit-major kernels) or the rows of h, δz (B-major);
                        K the length of the sums (H, or G in BPTT)
  Apk (npan, K, mr)     A packed: Apk[p, k, r] = A[p*mr + r, k], zero for rows past m;
                        npan = ceil(m / mr) rounded up to even (a narrow tile spans two panels);
                        mr = MR or MRW rows
  X (K, n)              the thin operand, rows contiguous (any row stride)
  Xpk (nblk, K, NV*VW)  X packed by ``blocks_of``: Xpk[q, k, j] = X[k, q*NV*VW + j], zero
                        for columns past n; VW = VBYTES // itemsize lanes of a vector
  C (m, n)              the output, rows contiguous (any row stride: a block of columns)
"""
import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic

from ..config import JIT
from .blas import gemm


def _vector_bytes():
    """Bytes of the widest vector register Numba compiles for on this host: read from the
    features Numba itself compiles with (NUMBA_CPU_FEATURES, none for NUMBA_CPU_NAME=generic,
    else the host's; numba.core.codegen.JITCPUCodegen._get_host_cpu_features)."""
    features = numba_config.CPU_FEATURES
    if features is None:
        try:
            features = llvm.get_host_cpu_features().flatten()
        except RuntimeError:              # llvmlite cannot read this host's features
            return 16
    if "+avx512f" in features:
        return 64
    return 32 if "+avx2" in features else 16


VBYTES = _vector_bytes()
MR = 6 if VBYTES == 32 else 8        # rows of a panel (and of a wide tile)
MRW = 6 if VBYTES == 32 else 12      # ... where X outgrows L1 (``pack_panels``)
X_L1_BYTES = 48 * 1024               # X larger than this: panels of MRW rows
NV = 2                               # vectors of columns in a wide tile
# Tiles where they were measured faster than OpenBLAS: with AVX-512, and with AVX2 against
# OpenBLAS's AVX2 kernels (OPENBLAS_CORETYPE=Haswell).  With 16-byte vectors the masked
# loads and stores become one branch per lane: 5-6x slower than BLAS, which is kept there.
TILES = VBYTES >= 32


def _splat(builder, value, vty):
    """A vector of ``vty`` with every lane ``value``."""
    lanes = vty.count
    first = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _tile_kernel(panels, nvec, accumulate, mr):
    """An intrinsic for one tile: ``panels`` * mr rows x ``nvec`` vectors of columns, from
    panels of ``mr`` rows.

    tile(C, row0, col0, Apk, panel, X, xcol, ncols, nrows) does, for r < min(nrows,
    panels*mr) and j < min(ncols, nvec*VW):

        C[row0 + r, col0 + j] (+)= sum over k of Apk[panel + r // mr, k, r % mr] * X[k, xcol + j]
    """
    @intrinsic
    def tile(typingctx, C, row0, col0, Apk, panel, X, xcol, ncols, nrows):
        sig = types.void(C, row0, col0, Apk, panel, X, xcol, ncols, nrows)

        def codegen(context, builder, sig, args):
            c_arg, row0, col0, a_arg, panel, x_arg, xcol, ncols, nrows = args
            c = context.make_array(sig.args[0])(context, builder, c_arg)
            a = context.make_array(sig.args[3])(context, builder, a_arg)
            x = context.make_array(sig.args[5])(context, builder, x_arg)
            dtype = sig.args[0].dtype
            fty = context.get_value_type(dtype)
            item = dtype.bitwidth // 8
            VW = VBYTES // item
            vty, mty = ir.VectorType(fty, VW), ir.VectorType(ir.IntType(1), VW)
            i64, i32 = ir.IntType(64), ir.IntType(32)
            vptr = vty.as_pointer()
            name = f"v{VW}f{dtype.bitwidth}"
            module = builder.module
            mload = cgutils.get_or_insert_function(
                module, ir.FunctionType(vty, [vptr, i32, mty, vty]), f"llvm.masked.load.{name}.p0{name}")
            mstore = cgutils.get_or_insert_function(
                module, ir.FunctionType(ir.VoidType(), [vty, vptr, i32, mty]), f"llvm.masked.store.{name}.p0{name}")
            fma = cgutils.get_or_insert_function(module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fmuladd.{name}")
            align, zero = ir.Constant(i32, item), ir.Constant(vty, [0.0] * VW)

            def const(v):
                return ir.Constant(i64, v)

            def address(base, offset):                  # base: an integer address; offset: bytes
                return builder.add(base, offset)

            # lane j of vector v is live when v*VW + j < ncols
            lanes = ir.Constant(ir.VectorType(i64, VW), list(range(VW)))
            masks = [builder.icmp_signed("<", lanes, _splat(builder, builder.sub(ncols, const(v * VW)),
                                                            ir.VectorType(i64, VW)))
                     for v in range(nvec)]
            rows = panels * mr
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nvec)] for _ in range(rows)]
            ld_x = builder.extract_value(x.strides, 0)
            ld_c = builder.extract_value(c.strides, 0)
            a_panel, a_k = builder.extract_value(a.strides, 0), builder.extract_value(a.strides, 1)
            K = builder.extract_value(x.shape, 0)
            x0 = address(builder.ptrtoint(x.data, i64), builder.mul(xcol, const(item)))
            a0 = address(builder.ptrtoint(a.data, i64), builder.mul(panel, a_panel))
            with cgutils.for_range(builder, K) as loop:   # the sums, one k at a time
                k = loop.index
                xk = address(x0, builder.mul(k, ld_x))
                xv = [builder.call(mload, [builder.inttoptr(address(xk, const(v * VW * item)), vptr),
                                           align, masks[v], zero]) for v in range(nvec)]
                ak = address(a0, builder.mul(k, a_k))
                for r in range(rows):                   # acc[r] += A[r, k] X[k, cols]
                    ar = address(ak, builder.add(builder.mul(const(r // mr), a_panel), const(r % mr * item)))
                    av = _splat(builder, builder.load(builder.inttoptr(ar, fty.as_pointer())), vty)
                    for v in range(nvec):
                        builder.store(builder.call(fma, [av, xv[v], builder.load(acc[r][v])]), acc[r][v])
            c0 = address(builder.ptrtoint(c.data, i64),
                         builder.add(builder.mul(row0, ld_c), builder.mul(col0, const(item))))
            for r in range(rows):                       # C rows (+)= acc, rows < nrows only
                with builder.if_then(builder.icmp_signed("<", const(r), nrows), likely=True):
                    cr = address(c0, builder.mul(const(r), ld_c))
                    for v in range(nvec):
                        ptr = builder.inttoptr(address(cr, const(v * VW * item)), vptr)
                        value = builder.load(acc[r][v])
                        if accumulate:
                            value = builder.fadd(builder.call(mload, [ptr, align, masks[v], zero]), value)
                        builder.call(mstore, [value, ptr, align, masks[v]])
            return context.get_dummy_value()
        return sig, codegen
    return tile


# tiles of mr rows x NV vectors (wide) or 2 mr rows x 1 vector (narrow), mr = MR or MRW
_wide_set, _wide_add = _tile_kernel(1, NV, False, MR), _tile_kernel(1, NV, True, MR)
_narrow_set, _narrow_add = _tile_kernel(2, 1, False, MR), _tile_kernel(2, 1, True, MR)
_tall_set, _tall_add = _tile_kernel(1, NV, False, MRW), _tile_kernel(1, NV, True, MRW)
_tall_narrow_set, _tall_narrow_add = _tile_kernel(2, 1, False, MRW), _tile_kernel(2, 1, True, MRW)


@njit(**JIT)
def pack_into(Apk, A):
    """Write A (m, K) into the panels Apk (made for an A of this shape: rows past m stay zero;
    panels of Apk.shape[2] rows).  Kernels whose A changes every step (the B-major ones: A =
    h_{t-1} or δ) repack it so; without TILES Apk has no panels and nothing is written."""
    m, K = A.shape
    mr = Apk.shape[2]
    for p in range(Apk.shape[0]):
        for r in range(min(mr, m - p * mr)):
            for k in range(K):
                Apk[p, k, r] = A[p * mr + r, k]


@njit(**JIT)
def panels_of(A, mr=MR):
    """A (m, K) as panels of ``mr`` rows, (npan, K, mr), rows past m zero; npan even."""
    m, K = A.shape
    npan = (m + mr - 1) // mr
    npan += npan % 2
    Apk = np.zeros((npan, K, mr), dtype=A.dtype)
    pack_into(Apk, A)
    return Apk


@njit(**JIT)
def panel_rows(K, n, itemsize):
    """Rows of a panel of the weights for ``panel_gemm`` by an X of K x n: MRW where X is
    larger than L1, else MR (X is read again for every panel; see the module's doc)."""
    return MRW if K * n * itemsize > X_L1_BYTES else MR


@njit(**JIT)
def _packed(A, mr):
    """``panels_of(A, mr)``; without TILES an empty array (BLAS takes A itself)."""
    return panels_of(A, mr) if TILES else np.zeros((0, A.shape[1], mr), dtype=A.dtype)


@njit(**JIT)
def pack_panels(A, n):
    """The weights A (m, K) as panels for ``panel_gemm`` by an X of n columns (rows per
    panel: ``panel_rows``); without TILES an empty array."""
    return _packed(A, panel_rows(A.shape[1], n, A.itemsize))


@njit(**JIT)
def pack_rows(A):
    """Panels of MR rows for ``rows_gemm``, which packs its A (rows of h_{t-1} or δz) into
    them every step; without TILES an empty array."""
    return _packed(A, MR)


def _panels_gemm(wide_set, wide_add, narrow_set, narrow_add, mr):
    """tiles_gemm for panels of ``mr`` rows, on these tiles (one compiled function each)."""
    @njit(**JIT)
    def run(C, Apk, X, m, accumulate):
        n = X.shape[1]
        VW = VBYTES // X.itemsize
        i64 = np.int64
        if n <= VW:                               # one vector of columns: tiles of 2 panels
            for p in range(0, (m + mr - 1) // mr, 2):
                if accumulate:
                    narrow_add(C, i64(p * mr), i64(0), Apk, i64(p), X, i64(0), i64(n), i64(m - p * mr))
                else:
                    narrow_set(C, i64(p * mr), i64(0), Apk, i64(p), X, i64(0), i64(n), i64(m - p * mr))
            return
        for p in range((m + mr - 1) // mr):       # panel by panel: each panel of A is read once
            for j0 in range(0, n, NV * VW):
                if accumulate:
                    wide_add(C, i64(p * mr), i64(j0), Apk, i64(p), X, i64(j0), i64(n - j0), i64(m - p * mr))
                else:
                    wide_set(C, i64(p * mr), i64(j0), Apk, i64(p), X, i64(j0), i64(n - j0), i64(m - p * mr))
    return run


_gemm_short = _panels_gemm(_wide_set, _wide_add, _narrow_set, _narrow_add, MR)
_gemm_tall = _panels_gemm(_tall_set, _tall_add, _tall_narrow_set, _tall_narrow_add, MRW)


@njit(**JIT)
def tiles_gemm(C, Apk, X, m, accumulate):
    """C[:m] = A X, or C[:m] += A X with ``accumulate``, A (m, K) packed by ``panels_of``
    into panels of MR or MRW rows (any host; fast where TILES)."""
    if Apk.shape[2] == MRW and MRW != MR:
        _gemm_tall(C, Apk, X, m, accumulate)
    else:
        _gemm_short(C, Apk, X, m, accumulate)


@njit(**JIT)
def blocks_of(X):
    """X (K, n) as blocks of NV vectors of columns, (nblk, K, NV*VW), columns past n zero;
    without TILES an empty array (BLAS takes X itself)."""
    K, n = X.shape
    width = NV * (VBYTES // X.itemsize)
    nblk = (n + width - 1) // width if TILES else 0
    Xpk = np.zeros((nblk, K, width), dtype=X.dtype)
    for q in range(nblk):
        for k in range(K):
            for j in range(min(width, n - q * width)):
                Xpk[q, k, j] = X[k, q * width + j]
    return Xpk


@njit(**JIT)
def rows_gemm(C, Apk, A, Xpk, X):
    """C = A X for the B-major kernels: A (the rows of h_{t-1} or δz) changes every step and
    is packed again into Apk (made once by ``pack_rows(A)``); X, the weights, was packed
    once into Xpk = ``blocks_of(X)``.  Without TILES, BLAS multiplies A and X."""
    if not TILES:
        gemm(C, A, X, False, False, False)
        return
    pack_into(Apk, A)
    m, n = A.shape[0], X.shape[1]
    width = Xpk.shape[2]
    i64 = np.int64
    for q in range(Xpk.shape[0]):                # block by block: each block of X is read once
        Xq = Xpk[q]
        for p in range((m + MR - 1) // MR):
            _wide_set(C, i64(p * MR), i64(q * width), Apk, i64(p), Xq, i64(0), i64(n - q * width),
                      i64(m - p * MR))


@njit(**JIT)
def panel_gemm(C, Apk, A, X, accumulate):
    """C = A X, or C += A X with ``accumulate``: on register tiles from Apk =
    ``pack_panels(A, n)`` where the host has AVX2 or AVX-512 (TILES), else through BLAS."""
    if TILES:
        tiles_gemm(C, Apk, X, A.shape[0], accumulate)
    else:
        gemm(C, A, X, False, False, accumulate)
