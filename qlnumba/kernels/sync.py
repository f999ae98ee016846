"""A spin barrier for the threads of one ``prange`` region (CPU).

Shapes legend
  flags (P * STRIDE,) int64, zeroed before the region: slot p (at p * STRIDE, one
  cache line of its own) holds how many barriers thread p has reached.

Each thread writes only its own slot, so no read-modify-write atomics are needed:
a release store publishes the count (and every write made before it), an acquire
load sees it.  The caller must guarantee that all P threads run at the same time
(one ``prange`` iteration per Numba thread), or the spin never ends.
"""
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..config import JIT

STRIDE = 16         # int64 slots between two threads' flags: 128 bytes


def _slot_pointer(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [index])


@intrinsic
def load_acquire(typingctx, arr, index):
    """arr[index] read with acquire ordering (never hoisted out of a loop)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return types.int64(arr, index), codegen


@intrinsic
def store_release(typingctx, arr, index, value):
    """arr[index] = value with release ordering (every earlier write is visible first)."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ptr = _slot_pointer(context, builder, sig.args[0], args[0], args[1])
        value = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(value, ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return types.none(arr, index, value), codegen


@intrinsic
def spin_pause(typingctx):
    """The x86 ``pause`` hint inside a spin loop (nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if "86" in llvm.get_process_triple():             # x86 and x86_64
            pause = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                   "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()
    return types.none(), codegen


@njit(**JIT)
def barrier(flags, p, P, count):
    """Thread p of P waits until every thread has reached barrier number ``count`` (1, 2, ...)."""
    store_release(flags, p * STRIDE, count)
    for q in range(P):
        while load_acquire(flags, q * STRIDE) < count:
            spin_pause()
