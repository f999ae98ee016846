"""A barrier for a set of blocks of one cooperative launch, written out: the persistent
loops' step barrier with ``persistent.GRID_BARRIER = "spin"``, in place of cooperative
groups' ``this_grid().sync()`` (a call into libcudadevrt, for the whole grid).

Shapes legend
  bar (slots * SLOT,) int64, zeros before a set's first barrier: the set that uses slot k
  counts at bar[k * SLOT], a 128-byte line of its own.

At each barrier thread 0 of every block in a set of n blocks adds to the set's counter
once: the set's master block adds FLIP - (n - 1), every other block 1, so each barrier
adds FLIP in all.  While some block has not arrived, the counter differs from its value
before the barrier (a multiple of FLIP) by less than FLIP, up or down, so its FLIP bit is
unchanged; the last arrival flips it.  Each block waits until the bit differs from the
bit in the value its own add returned.  Between barriers the counter is again a multiple
of FLIP, so it needs no reset, within a launch or between launches (a launch cut off
mid-barrier would leave it wrong: the buffer is cleared with every forward call).

Memory order (PTX memory model): a block's writes come before its thread 0's arrival by
the ``__syncthreads`` before it; the arrival is an atomic add with release semantics at
GPU scope, the polls are loads with acquire semantics, and a ``__syncthreads`` after the
wait orders the block's later reads after it.  So every write any block of the set made
before the barrier is visible to every thread of the set after it.  sm_70 and later.

The caller guarantees that every block of the set is resident (a cooperative launch), or
the wait never ends.  In the simulator a cooperative launch has one block, its own master:
its add flips the bit at once.
"""
from . import get_cuda
from .arrays import SIM

cuda = get_cuda()
SLOT = 16                   # int64 values between two counters: 128 bytes
FLIP = 1 << 31              # what one whole barrier adds to its counter

if SIM:
    def arrive(bar, index, value):
        """bar[index] += value; the value before (one block: no other thread adds)."""
        old = int(bar[index])
        bar[index] = old + int(value)
        return old

    def poll(bar, index):
        return int(bar[index])
else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    def _address(context, builder, arrty, arr, index):
        """The generic address of arr[index]; the asm converts it to a global one (a generic
        atomic add compiled to a test for shared memory and a compare-and-swap loop there)."""
        data = context.make_array(arrty)(context, builder, arr).data
        return builder.ptrtoint(builder.gep(data, [index]), ir.IntType(64))

    @intrinsic
    def arrive(typingctx, bar, index, value):
        """atom.add.release.gpu on bar[index] (int64, 1-d, contiguous); the value before."""
        sig = types.int64(bar, index, value)

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            addr = _address(context, builder, sig.args[0], args[0], args[1])
            add = context.cast(builder, args[2], sig.args[2], types.int64)
            asm = ir.InlineAsm(ir.FunctionType(i64, [i64, i64]),
                               "{ .reg .u64 g; cvta.to.global.u64 g, $1; "
                               "atom.release.gpu.global.add.u64 $0, [g], $2; }", "=l,l,l,~{memory}",
                               side_effect=True)
            return builder.call(asm, [addr, add])
        return sig, codegen

    @intrinsic
    def poll(typingctx, bar, index):
        """bar[index] loaded with acquire semantics at GPU scope (never hoisted out of a loop)."""
        sig = types.int64(bar, index)

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            addr = _address(context, builder, sig.args[0], args[0], args[1])
            asm = ir.InlineAsm(ir.FunctionType(i64, [i64]),
                               "{ .reg .u64 g; cvta.to.global.u64 g, $1; ld.acquire.gpu.global.u64 $0, [g]; }",
                               "=l,l,~{memory}", side_effect=True)
            return builder.call(asm, [addr])
        return sig, codegen


@cuda.jit(device=True, **({} if SIM else {"inline": True}))
def blocks_barrier(bar, slot, nblocks, master):
    """Wait until all ``nblocks`` blocks of the set counting at bar[slot * SLOT] arrive; the
    set's ``master`` (one block of it) is the one that adds FLIP - (nblocks - 1)."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        i = slot * SLOT
        old = arrive(bar, i, FLIP - (nblocks - 1) if master else 1)
        while ((poll(bar, i) ^ old) & FLIP) == 0:
            pass
    cuda.syncthreads()
