"""Compile every GPU kernel to PTX (and, with ptxas, to sm_90 machine code) on a machine with no GPU.

The simulator runs the kernels as Python, so it cannot catch what only the real
compiler rejects (typing, unsupported calls).  This script drives the real
layer code (QLLSTM and GRU, every switch setting, embedding, head, Adam) with
``cuda.to_device`` and kernel launches replaced by stand-ins: each launch
compiles its kernel for the argument types it was given, with
``cuda.compile_ptx`` (needs numba-cuda and libnvvm, not a GPU), and assembles
the PTX with ``ptxas`` when it is on PATH, printing registers and shared memory.
The numbers the kernels "return" are meaningless: only compilation is checked.
It catches what the simulator cannot: a shared-memory shape written as an
expression ran in the simulator and failed to compile on an H100.

    pip install -e ".[ptx]"; python scripts/ptx_check.py [--cc 9.0]   (scripts/test.sh runs it)

With no GPU at hand, the persistent loops' machine code is what can be read instead of timed:
``--loops --lines FILE`` compiles only the default float32 loops (seconds, not minutes) and
writes how many SASS instructions each source line became (nvdisasm, from the line-information
builds; pip install nvidia-cuda-nvdisasm), with registers, spills and 64-bit division calls
(``--grid-barrier spin``: the loops with the written-out step barrier).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import cuda, typeof  # noqa: E402

from sass_lines import sass_lines  # noqa: E402  (scripts/, beside this file)

cuda.is_available = lambda: True     # compile only: qlnumba.gpu.get_cuda would refuse otherwise


class HostDeviceArray(np.ndarray):
    """A host array that answers ``copy_to_host`` like a device array."""

    def copy_to_host(self):
        return np.array(self)

    def copy_to_device(self, host):
        self[...] = host


def to_device(a, *args, **kwargs):
    return np.array(a).view(HostDeviceArray)


cuda.to_device = to_device
cuda.device_array = lambda shape, dtype=np.float64, **kw: np.zeros(shape, dtype).view(HostDeviceArray)


class FakeDevice:
    MULTIPROCESSOR_COUNT = 132
    name = "ptx-check"
    compute_capability = (9, 0)


cuda.get_current_device = lambda: FakeDevice()
import numba.cuda.dispatcher as _dispatcher  # noqa: E402  (device functions ask it for the target)

_dispatcher.get_current_device = cuda.get_current_device
COMPILED = {}


def arg_type(a):
    if isinstance(a, np.ndarray):
        return typeof(np.ascontiguousarray(a) if a.flags.c_contiguous else a)
    return typeof(a)


class Launcher:
    """Stands in for a kernel dispatcher: ``k[grid](*args)`` compiles instead of running."""

    def __init__(self, name, dispatcher, cc):
        self.name, self.dispatcher, self.cc = name, dispatcher, cc

    def __getitem__(self, config):
        return self

    def __call__(self, *args):
        sig = tuple(arg_type(a) for a in args)
        key = (self.name, sig)
        if key not in COMPILED:
            try:
                options = getattr(self.dispatcher, "targetoptions", {})
                ptx, _ = cuda.compile_ptx(self.dispatcher.py_func, sig, cc=self.cc,
                                          lineinfo=bool(options.get("lineinfo")))
            except Exception as exc:
                raise RuntimeError(f"kernel {self.name} does not compile for sm_{self.cc[0]}{self.cc[1]} "
                                   f"with argument types {sig}") from exc
            # the register cap the kernel asks for (PERSISTENT_JIT): the device's linker applies
            # it, compile_ptx does not, so ptxas gets it here
            COMPILED[key] = (ptx, getattr(self.dispatcher, "targetoptions", {}).get("max_registers"))


def wrap(kernel_dict, cc, device_functions=()):
    """Launch stand-ins for the kernels of a factory's dict; device functions (which other
    kernels call) pass through, and so do stand-ins (GRU's dict holds the cell's carry_dh)."""
    return {name: d if name in device_functions or isinstance(d, Launcher) else Launcher(name, d, cc)
            for name, d in kernel_dict.items()}


def ptxas_report(cc, keep=None, lines=None):
    """ptxas on every compiled kernel: registers and spills; with ``keep`` (a folder) the PTX
    and the machine code (k<i>.ptx, k<i>.ptx.o, and their names in kernels.txt) stay there,
    for cuobjdump -sass or nvdisasm; with ``lines`` (a file) ``sass_lines`` of every build
    with line information."""
    exe = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
    if not os.path.exists(exe):
        print("ptxas not found: PTX compiled, machine code not checked")
        return
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.TemporaryDirectory() as scratch:
        folder, names = keep or scratch, []
        os.makedirs(folder, exist_ok=True)
        for i, ((name, sig), (ptx, maxreg)) in enumerate(sorted(COMPILED.items(), key=lambda kv: kv[0][0])):
            names.append(f"k{i}\t{name}\t{sig}\n")
            path = os.path.join(folder, f"k{i}.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            cap = [f"-maxrregcount={maxreg}"] if maxreg else []
            lines_flag = ["-lineinfo"] if ".loc" in ptx else []
            r = subprocess.run([exe, "-v", f"-arch={arch}", *cap, *lines_flag, "-c", path, "-o", path + ".o"],
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"ptxas failed on {name}{sig}:\n{r.stderr}")
            used = re.search(r"Used (\d+) registers.*", r.stderr)
            frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", r.stderr)
            dtype = "f64" if "float64" in str(sig) else "f32"
            stats = (used.group(0) if used else r.stderr.strip()[:120]) + (f"; {frame.group(0)}" if frame else "")
            print(f"  {name:28s} {dtype}  {stats}")
            if lines and lines_flag:
                sass_lines(path + ".o", name, stats, lines)
        if keep:
            with open(os.path.join(keep, "kernels.txt"), "w") as f:
                f.writelines(names)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cc", default="9.0")
    ap.add_argument("--dtypes", default="float32,float64",
                    help="the float types to compile for (scripts/test.sh runs one process per type)")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="leave each kernel's PTX and machine code in DIR (names in DIR/kernels.txt)")
    ap.add_argument("--loops", action="store_true",
                    help="only the default float32 persistent loops, built with line information as "
                         "the profiler's build (QLNUMBA_CUDA_LINEINFO=1)")
    ap.add_argument("--lines", default=None, metavar="FILE",
                    help="with --loops: write the loops' SASS instructions per source line to FILE")
    ap.add_argument("--grid-barrier", default=None, metavar="NAME",
                    help="with --loops: the loops' step barrier (persistent.GRID_BARRIER: cg or spin)")
    args = ap.parse_args()
    if args.grid_barrier and not args.loops:
        ap.error("--grid-barrier goes with --loops")
    if args.lines and not args.loops:
        ap.error("--lines goes with --loops")
    if args.loops:
        args.dtypes = "float32"
        # before qlnumba.gpu is imported: the device functions take their options then
        os.environ["QLNUMBA_CUDA_LINEINFO"] = "1"
    cc = tuple(int(v) for v in args.cc.split("."))
    FakeDevice.compute_capability = cc

    import qlnumba
    from qlnumba.gpu import arrays as garrays
    from qlnumba.gpu import cells as gcells
    from qlnumba.gpu import gru as ggru
    from qlnumba.gpu import matmul as gmm
    from qlnumba.gpu import model as gmodel
    from qlnumba.gpu import ops as gops
    from qlnumba.gpu import persistent as gps
    from qlnumba.gpu import recurrent as grec

    # every kernel factory, replaced where it is defined: the library calls each through its
    # module (cells.cell_kernels, persistent.persistent_kernels) or from inside it
    for module, factory in ((garrays, "array_kernels"), (gcells, "cell_kernels"), (ggru, "kernels"),
                            (gops, "kernels"), (gmodel, "kernels")):
        real = getattr(module, factory)
        setattr(module, factory,
                (lambda real: lambda dtype: wrap(real(dtype), cc, gcells.DEVICE_FUNCTIONS))(real))
    real_persistent, real_matmul = gps.persistent_kernels, gmm.matmul_kernel
    # one name per setting (else a second setting would count as compiled)
    gps.persistent_kernels = lambda dtype, rows, loads, cols, barrier="cg": {
        name: Launcher(f"{name} item rows {rows} cols {cols} loads {loads}"
                       + ("" if barrier == "cg" else f" barrier {barrier}"), d, cc)
        for name, d in real_persistent(dtype, rows, loads, cols, barrier).items()}
    gmm.matmul_kernel = lambda dtype, tile: Launcher(f"matmul {tile}", real_matmul(dtype, tile), cc)
    rng = np.random.default_rng(0)
    if args.grid_barrier:
        gps.check_grid_barrier(args.grid_barrier)
        gps.GRID_BARRIER = args.grid_barrier
    saved_loads, saved_barrier = gps.TEAM_LOADS, gps.GRID_BARRIER
    for dtype in (np.dtype(name).type for name in args.dtypes.split(",")):
        B, T, E, H = 3, 5, 2, 4
        x = rng.standard_normal((B, T, E)).astype(dtype)
        lengths = np.array([5, 2, 4])
        dout = rng.standard_normal((B, T, 2 * H)).astype(dtype)
        for psug, hgr in ((False, False), (True, False), (False, True), (True, True)):
            # path, item rows, loads (TEAM_LOADS), item cols, grid barrier; float64 layers only
            # the first six (the defaults: 2 x 8, and 1 x 4 for narrow parts, and the spin
            # barrier; the other options for speed are float32's, and each compile adds to the
            # suite's time)
            configs = [(p, 2, 16, 4, "cg") for p in grec.PATHS] + [
                ("persistent", 4, 16, 4, "cg"), ("persistent", 2, 16, 8, "cg"), ("persistent", 1, 16, 4, "cg"),
                ("persistent", 2, 16, 8, "spin")]
            if dtype != np.float64:
                configs += [("persistent", 4, 32, 4, "cg"), ("persistent", 2, 32, 8, "cg"),
                            ("persistent", 2, 0, 8, "cg"), ("persistent", 1, 16, 8, "cg"),
                            ("persistent", 4, 0, 4, "cg"), ("persistent", 1, 0, 4, "cg"),
                            ("persistent", 1, 16, 4, "spin")]
            if args.loops:
                if (psug, hgr) != (True, True):       # psug and hgr are the kernels' run-time flags
                    continue
                configs = [("persistent", 2, gps.TEAM_LOADS, 8, gps.GRID_BARRIER)]   # the large shape's items
            for path, rows, loads, cols, barrier in configs:
                gps.TEAM_LOADS, gps.GRID_BARRIER = loads, barrier
                layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=hgr, block_size=2, bidirectional=True,
                                       dtype=dtype, device="cuda", seed=0)
                for row in layer._cells:
                    for cell in row:
                        cell.path, cell.item_rows, cell.item_cols = path, rows, cols
                layer.forward(x, lengths)
                layer.backward(dout)
        gps.TEAM_LOADS, gps.GRID_BARRIER = saved_loads, saved_barrier
        if args.loops:
            break
        for tile in gmm.TILES:                        # every matrix-product tile
            gmm.MATMUL_TILE = tile
            gmm.matmul(cuda.to_device(np.zeros((2, 3), dtype)), cuda.to_device(np.zeros((2, 4), dtype)),
                       cuda.to_device(np.zeros((4, 3), dtype)), 2, 3, 4, 4, 1, 3, 1)
        gmm.MATMUL_TILE = "auto"
        gru = qlnumba.GRU(E, H, dtype=dtype, device="cuda", seed=0)
        # GRU's persistent loops (narrow parts' items of 1 x 4, and 2 x 8: wide parts' default),
        # then its step kernels
        for path, rows, cols in (("persistent", None, None), ("persistent", 2, 8), ("simple", None, None)):
            cell = gru._cells[0][0]
            cell.path, cell.item_rows, cell.item_cols = path, rows, cols
            gru.forward(x, lengths)
            gru.backward(dout[..., :H])
        check_ops(gops, dtype, rng)
        check_trainer_kernels(gmodel, dtype)
        if dtype == np.float32:                       # scripts/gpu-ncu.sh's build of the loops
            check_loops_lineinfo(real_persistent, cc)
    print(f"compiled {len(COMPILED)} kernel specialisations to PTX for sm_{cc[0]}{cc[1]}")
    if args.lines:
        with open(args.lines, "w") as lines:
            ptxas_report(cc, args.keep, lines)
        print(f"SASS instructions per source line: {args.lines}")
    else:
        ptxas_report(cc, args.keep)


def check_ops(gops, dtype, rng):
    """Embedding, head and AdamW through their public GPU helpers."""
    B, T, E, V, C = 2, 3, 4, 6, 2
    dev = cuda.to_device
    ids = rng.integers(0, V, (B, T))
    table = dev(rng.standard_normal((V, E)).astype(dtype))
    emb = dev(np.zeros((B, T, E), dtype))
    gops.embedding_forward(emb, dev(ids), table)
    gops.embedding_backward(dev(np.zeros((V, E), dtype)), emb, dev(ids), gops.id_segments(ids))
    h = dev(rng.standard_normal((B, E)).astype(dtype))
    W, b = dev(rng.standard_normal((C, E)).astype(dtype)), dev(np.zeros(C, dtype))
    targets = dev(np.array([0, 1]))
    probs, losses = dev(np.zeros((B, C), dtype)), dev(np.zeros(B, dtype))
    gops.linear_xent_forward(probs, losses, h, targets, W, b)
    gops.linear_xent_backward(dev(np.zeros((B, E), dtype)), dev(np.zeros((C, E), dtype)),
                              dev(np.zeros(C, dtype)), probs, h, targets, W, dev(np.full(B, 0.5, dtype)))
    gops.sum_of_squares(W.reshape(-1))          # CudaAdam.step's two kernels (it refuses host arrays)
    flat = W.reshape(-1)
    gops.adam_step(flat, np.zeros_like(flat), np.zeros_like(flat), np.ones_like(flat),
                   np.ones(8, dtype))


def check_loops_lineinfo(real_persistent, cc):
    """The default float32 persistent loops compile with line information, as
    QLNUMBA_CUDA_LINEINFO=1 builds them for the profiler (arrays.lines_only: without it
    NVVM refuses the backward)."""
    from qlnumba.gpu import arrays as garrays
    garrays.lines_only()
    for kernel in ("persistent_forward", "persistent_backward"):
        sig = next(sig for (n, sig) in COMPILED if n == f"{kernel} item rows 2 cols 8 loads 16")
        ptx, _ = cuda.compile_ptx(real_persistent(np.dtype(np.float32), 2, 16, 8)[kernel].py_func,
                                  sig, cc=cc, lineinfo=True)
        assert ".loc" in ptx, f"no line information in {kernel}'s PTX"
        cap = real_persistent(np.dtype(np.float32), 2, 16, 8)[kernel].targetoptions.get("max_registers")
        COMPILED[(f"{kernel} item rows 2 cols 8 loads 16 lineinfo", sig)] = (ptx, cap)


def check_trainer_kernels(gmodel, dtype):
    """The device training loop's own kernels (CudaTrainer itself wants real device arrays)."""
    k = gmodel.kernels(np.dtype(dtype))
    dev = cuda.to_device
    out, h, rows = dev(np.zeros((6, 4), dtype)), dev(np.zeros((2, 4), dtype)), dev(np.array([2, 3]))
    k["dropout"][1, 1](out.reshape(-1), out.reshape(-1), dev(np.zeros(24, np.uint16)), 19661, np.dtype(dtype).type(1.25))
    k["gather_rows"][1, 1](h, out, rows)
    k["scatter_rows"][1, 1](out, h, rows)
    k["add"][1, 1](out.reshape(-1), out.reshape(-1))


if __name__ == "__main__":
    main()
