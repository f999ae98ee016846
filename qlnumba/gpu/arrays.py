"""Device arrays for the GPU path: launch shapes, zeroing, sums in a fixed order, and the
``Workspace`` that keeps a training loop's buffers between calls.

Shapes legend (device arrays, C order)
  A flat (rows * cols), read as (rows, cols) with row r at r * stride;  out (cols,)
  partial (chunks, cols): the chunk sums of a two-pass column sum
  copy_rows: flat rows of H values, in runs of nb rows;  clear_tail: A (B, T, W)
Every kernel loops over its elements with a grid stride, so any launch shape is
correct (the simulator runs few threads; a GPU runs many).  Sums run in a fixed order,
never atomics, so results are deterministic.
"""
import math
import os
import re
from functools import lru_cache

import numpy as np
from numba import float32, float64, int64, uint32

from . import get_cuda

cuda = get_cuda()
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
THREADS = 8 if SIM else 256              # threads per block for element-wise kernels
MAX_BLOCKS = 2 if SIM else 1024
# QLNUMBA_CUDA_LINEINFO=1: the persistent loops and the matrix-product tiles are built with line
# information, for a profiler (scripts/gpu-ncu.sh); ``lines_only`` is then in place
LINEINFO = os.environ.get("QLNUMBA_CUDA_LINEINFO") == "1" and not SIM
# the options of the device functions the loops call: with LINEINFO their lines too (numba-cuda
# gives an inlined device function no lines of its own otherwise)
DEVICE_JIT = {"lineinfo": True} if LINEINFO else {}
# a call of llvm.dbg.value or llvm.dbg.declare in NVVM IR text (one line)
DEBUG_VALUE_CALL = re.compile(r'\n\s*(tail )?call void @"?llvm\.dbg\.(declare|value)"?\([^\n]*')


def lines_only():
    """Have numba-cuda's NVVM compile take the variables' debug values out of the IR, keeping
    its line locations.  With lineinfo, numba-cuda 0.30.4 also emits llvm.dbg.value calls, and
    NVVM (CUDA 13) refuses two of them in persistent_backward, "Symbol name with unsupported
    characters" (the values of r0 from two of its four part_span calls, found by bisecting the
    IR; renaming the variable does not help).  A profiler needs only the lines (.loc)."""
    from numba.cuda.cudadrv import nvvm
    if getattr(nvvm.compile_ir, "lines_only", False):
        return
    original = nvvm.compile_ir

    def strip(ir):
        return DEBUG_VALUE_CALL.sub("", ir) if isinstance(ir, str) else ir

    def compile_ir(llvmir, **options):
        irs = [strip(ir) for ir in llvmir] if isinstance(llvmir, (list, tuple)) else strip(llvmir)
        return original(irs, **options)
    compile_ir.lines_only = True
    nvvm.compile_ir = compile_ir


if LINEINFO:
    lines_only()


def divmod32(a, b):
    """(a // b, a % b) for 0 <= a < 2**32 and 0 < b < 2**32, by one 32-bit unsigned division.
    Numba types integer arithmetic as 64-bit and signed: ``a // b`` and ``a % b`` compile to
    two 64-bit divisions (each with a test for a 32-bit fast path) and floor corrections, a
    few dozen instructions more, and the persistent loops divide several times a step."""
    a32, b32 = uint32(a), uint32(b)
    quotient = a32 // b32
    return int64(quotient), int64(a32 - quotient * b32)


def index32(x):
    """x, for 0 <= x < 2**32, in a form the compiler can see is such (a 32-bit unsigned
    truncation): indices built from it skip Numba's negative-index wraparound code."""
    return int64(uint32(x))


if not SIM:
    # device functions on a GPU.  The simulator keeps the plain Python functions: it runs each
    # call of a device function under a lock that swaps the module's globals, and these two
    # are called in the loops' inner rounds (as device functions they made the simulator
    # suite's persistent tests 9 times slower)
    divmod32 = cuda.jit(device=True, **DEVICE_JIT)(divmod32)
    index32 = cuda.jit(device=True, **DEVICE_JIT)(index32)


def grid_for(n):
    """(blocks, THREADS) for an element-wise launch over n elements (grid-stride loops
    cover the rest beyond MAX_BLOCKS blocks)."""
    return max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS)), THREADS


@lru_cache(maxsize=None)
def multiprocessors():
    """The device's multiprocessor count (1 in the simulator), asked once."""
    return 1 if SIM else cuda.get_current_device().MULTIPROCESSOR_COUNT


@lru_cache(maxsize=None)
def array_kernels(dtype):
    """Compile the element-wise array kernels for one float dtype."""
    ftype = float32 if np.dtype(dtype) == np.float32 else float64

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

    return dict(fill_zero=fill_zero, copy_rows=copy_rows, column_sums=column_sums,
                column_sums_partial=column_sums_partial, clear_tail=clear_tail)


def new_scratch(n, dtype):
    """A fresh flat device buffer of n values: the default ``scratch`` of the launchers
    below (``Workspace.scratch`` reuses one instead)."""
    return cuda.device_array(n, dtype)


def clear(arr):
    """arr[...] = 0 on the device (any shape; nothing is copied from the host)."""
    if arr.size:
        array_kernels(np.dtype(arr.dtype))["fill_zero"][grid_for(arr.size)](arr.reshape(arr.size))


def zeros(shape, dtype):
    """A device array of zeros, zeroed on the device (no host array is copied)."""
    arr = cuda.device_array(shape, dtype)
    clear(arr)
    return arr


def copy_rows(dst, src, nrows, nb, dst_stride, src_stride, H):
    """Row r < nrows of the flat src to row r of the flat dst, rows of H values in runs of
    nb (see the kernel)."""
    k = array_kernels(np.dtype(dst.dtype))
    k["copy_rows"][grid_for(nrows * H)](dst, src, nrows, nb, dst_stride, src_stride, H)


def _chunks(rows, cols):
    """(chunks, rows per chunk) for a two-pass column sum: about 64k first-pass threads."""
    target = 4 if SIM else 65536
    nch = max(1, min(rows, -(-target // max(cols, 1))))
    chunk = -(-rows // nch)
    return -(-rows // chunk), chunk


def column_sums(out, A, rows, cols, scratch=new_scratch):
    """out (cols,) += column sums of the flat (rows, cols) device array A, in a fixed order:
    chunk sums in parallel, then the chunks in order (deterministic)."""
    k = array_kernels(np.dtype(out.dtype))
    nch, chunk = _chunks(rows, cols)
    partial = scratch(nch * cols, out.dtype)
    k["column_sums_partial"][grid_for(nch * cols)](partial.reshape((nch, cols)), A, rows, cols, chunk)
    k["column_sums"][grid_for(cols)](out, partial, nch, cols, cols)


def sum_over_rows(out, A, rows, cols, stride):
    """out (cols,) += Σ_r A[r*stride + c] over rows r (flat device A), in row order (the
    step loops' per-row sums SUMS over the rows; split k's chunks of a product)."""
    array_kernels(np.dtype(out.dtype))["column_sums"][grid_for(cols)](out, A, rows, cols, stride)


def clear_tail(A, steps):
    """A (B, T, W)[:, steps:] = 0 where steps < T (see the kernel)."""
    B, T, W = A.shape
    if steps < T and A.size:
        array_kernels(np.dtype(A.dtype))["clear_tail"][grid_for(B * (T - steps) * W)](A, steps)


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

    def zeros_and_state(self, group, zero_shapes, state, st):
        """A call's zeroed buffers (name -> shape; one launch clears them all) and its
        state buffers (name -> (key of the host dict st, shape)): zeros too where st is
        None, else one copy of the host values (a (2, B, H) buffer holds st[key] twice)."""
        if st is None:
            return self.zeros_many(group, {**zero_shapes, **{n: shape for n, (_, shape) in state.items()}})
        views = self.zeros_many(group, zero_shapes)
        host = {n: st[key] if len(shape) == 2 else np.stack([st[key]] * shape[0])
                for n, (key, shape) in state.items()}
        return {**views, **self.put_many(group + "_state", host)}

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
