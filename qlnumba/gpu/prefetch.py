"""``prefetch_l2(array, index)``: a hint to the GPU that ``array[index]`` will be read soon.

On a GPU it is the PTX instruction ``prefetch.L2`` on the element's address
(inline PTX through ``numba.cuda.extending.intrinsic``: numba-cuda has no prefetch): the
element's line comes from device memory into the L2 cache while the thread goes on, and
nothing waits for it.  It changes no value.  The simulator has no cache: there it reads the
element and drops it (an index outside the array fails, as a test should see).

The persistent step loops use it (``PREFETCH_STEPS``) for what a thread's cell reads
at the next step that is still in device memory (x W^T in the forward; the saved gates,
cells and δout in BPTT): after each grid sync those loads would otherwise wait for device
memory, not L2.
"""
import os

from . import get_cuda

cuda = get_cuda()

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    @cuda.jit(device=True, inline=True)
    def prefetch_l2(array, index):
        """array[index] on its way into L2: the simulator's stand-in reads it."""
        array[index]
else:
    from llvmlite import ir
    from numba.cuda import cgutils, types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _prefetch(typingctx, array, index):
        if not isinstance(array, types.Array) or not isinstance(index, types.UniTuple) \
                or index.count != array.ndim or not isinstance(index.dtype, types.Integer):
            return None
        sig = types.void(array, index)

        def codegen(context, builder, sig, args):
            aty, ity = sig.args
            inds = [context.cast(builder, builder.extract_value(args[1], i), ity.dtype, types.intp)
                    for i in range(aty.ndim)]
            ptr = cgutils.get_item_pointer(context, builder, aty, context.make_array(aty)(
                context, builder, args[0]), inds)
            asm = ir.InlineAsm(ir.FunctionType(ir.VoidType(), [ir.IntType(64)]),
                               "prefetch.L2 [$0];", "l", side_effect=True)
            builder.call(asm, [builder.ptrtoint(ptr, ir.IntType(64))])
            return context.get_dummy_value()
        return sig, codegen

    @cuda.jit(device=True, inline=True)
    def prefetch_l2(array, index):
        """prefetch.L2 of array[index] (a tuple of array.ndim integers)."""
        _prefetch(array, index)
