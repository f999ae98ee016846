"""GPU benchmark: qlnumba's GPU QL-LSTM and LSTM next to PyTorch's cuDNN nn.LSTM, one run, one card.

A training step is forward + backward of one recurrent layer with a gradient on
every output (no optimizer on either side); inference is the forward alone.
qlnumba runs on device arrays (``CudaQLCell.forward_device`` / ``backward_device``:
parameters, activations, gradient accumulators and, since the eighth session, the
zero initial and the final state stay on the GPU), as torch does on device tensors.
Step loops timed: "persistent" (one cooperative launch for all steps, the default) and, with
``--paths persistent,simple``, the per-step launches.  ``--host-api`` adds the
layer API (host arrays in and out, parameters copied each call).  ``--check``
first compares the GPU layer with the CPU layer (at ``--check-shapes``); ``--gru`` times
our GRU layer next to cuDNN's nn.GRU (a row of its own per shape); ``--trainer`` times
whole ``CudaTrainer`` steps (embedding, layer, head, BPTT, AdamW on the device).  Warm-up first (compilation excluded), then rounds: each case is timed in
``--repeats`` rounds, and each round also runs cuDNN (as torch ships it, and in strict
FP32) right after it.  Tokens/s are medians; a case's ratio to cuDNN is the median of its
rounds' ratios (``train_ratio_rounds`` holds each round's), so that a drift of the card's
speed between cases or processes falls on both sides of it.  cuDNN's own tokens/s pools
its rounds of every case.  Each shape also records how fast the host feeds the card
(``torch_launch_us``: microseconds per tiny torch operation issued back to back, before and
after the rounds), and the JSON the host's CPU (``host_cpu``): cuDNN's LSTM launches kernels
at every step, and its speed at the small shape moved by half between processes.

    python bench/gpu.py [--shapes small,large] [--paths persistent] [--row-groups 1,2] [--item-rows 2,4]
                        [--item-cols 8,4] [--team-loads 16,0] [--grid-barrier cg,spin] [--check]
                        [--gru] [--trainer] [--json-out FILE]

Settings of the persistent loops given as lists (row groups, item rows and columns, team
loads, step barrier; "default" for the library's choice) are timed side by side in one process, each checked
against the CPU with ``--check`` and each paired with cuDNN round by round (cuDNN's own rate
moved by 25% between the eighteenth session's processes; ours by a few percent).
"""
import argparse
import json
from collections import namedtuple
from contextlib import contextmanager
from itertools import product
import os
import platform
import statistics
import sys

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack                   # numba-cuda 0.30 against numpy 2.5
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from timing import host_cpu, interleaved_times, launch_us, median_time, round_speedups  # noqa: E402  (bench/ is the script's folder)

SHAPES = {"small": (32, 256, 128, 256), "large": (64, 1024, 300, 512), "tiny": (2, 4, 2, 3)}
WARMUP = 2          # untimed calls of each contender before its rounds (allocators, clocks)


def torch_launch_us(torch):
    """Microseconds per tiny torch operation on the card issued back to back (``launch_us``):
    recorded beside each shape's cuDNN rounds, as cuDNN's LSTM launches kernels at every step
    and its speed at the small shape moved by half between processes."""
    tiny = torch.zeros(1).cuda()
    return launch_us(lambda: tiny.add_(1.0), torch.cuda.synchronize)


def package_version(name):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# one setting of the persistent loops; None: the library's choice (a plan's default, or
# persistent.ITEM_COLS / TEAM_LOADS / GRID_BARRIER)
Setting = namedtuple("Setting", "groups rows cols loads barrier")
LIBRARY = Setting(None, None, None, None, None)


def check_against_cpu(qlnumba, shape, block_size, rng, persistent=(LIBRARY,)):
    """Max |GPU - CPU| / max |CPU| of out, dx and every gradient, float32, at a benchmark shape
    (many blocks on a real card, unlike the tests' tiny shapes), for each ``Setting`` of the
    persistent loops (labelled by ``suffix``)."""
    B, T, E, H = shape
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    lengths = rng.integers(T // 2, T + 1, B)
    lengths[0] = T
    dout = rng.standard_normal((B, T, H)).astype(np.float32)

    def run(psug, device, setting=LIBRARY):
        layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=psug, block_size=block_size, device=device, seed=3)
        if device == "cuda":
            configure(layer._cells[0][0], setting)
        with using_loop_options(setting):
            out, _ = layer.forward(x, lengths)
            dx, grads = layer.backward(dout)
        return dict(out=out, dx=dx, **{f"grad_{k}": v for k, v in grads.items()})

    report = {}
    for kind, psug in (("ql", True), ("lstm", False)):
        cpu = run(psug, "cpu")
        for setting in persistent:
            gpu = run(psug, "cuda", setting)
            report[kind + suffix(setting)] = {
                k: float(np.abs(gpu[k] - cpu[k]).max() / max(np.abs(cpu[k]).max(), 1e-30)) for k in cpu}
    return report


def suffix(setting):
    """A label's suffix for the parts of a ``Setting`` that are not the library's choice:
    _r<row groups>_i<item rows>_c<item columns>_l<team loads>_b<step barrier>."""
    return "".join("" if v is None else f"_{tag}{v}" for tag, v in zip("riclb", setting))


def configure(cell, setting):
    """A CudaQLCell's persistent plan options from ``setting`` (its team loads and barrier:
    using_loop_options)."""
    cell.row_groups, cell.item_rows, cell.item_cols = setting.groups, setting.rows, setting.cols


@contextmanager
def using_loop_options(setting):
    """``with using_loop_options(setting):`` the persistent loops take ``setting.loads``
    loads per team_dot pass and ``setting.barrier`` as their step barrier
    (persistent.TEAM_LOADS and GRID_BARRIER, read at each launch); None leaves an option alone."""
    from qlnumba.gpu import persistent as ps
    saved = ps.TEAM_LOADS, ps.GRID_BARRIER
    ps.TEAM_LOADS = saved[0] if setting.loads is None else setting.loads
    ps.GRID_BARRIER = saved[1] if setting.barrier is None else setting.barrier
    try:
        yield
    finally:
        ps.TEAM_LOADS, ps.GRID_BARRIER = saved


def cudnn_contenders(torch, x, dout, E, H, kind="lstm"):
    """PyTorch's nn.LSTM (kind "gru": nn.GRU) on the device (cuDNN) for a benchmark shape:
    name -> {"train": fn, "infer": fn, "allow_tf32": flag}, as torch ships it (TF32 allowed
    by default) and in strict FP32 (as qlnumba computes).  Each function sets torch's TF32
    flag itself, so the two can be timed in the same rounds."""
    xt, dt = torch.from_numpy(x).cuda(), torch.from_numpy(dout).cuda()
    module = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    out = {}
    for label, tf32 in ((f"torch_cudnn_{kind}", torch.backends.cudnn.allow_tf32),
                        (f"torch_cudnn_{kind}_strict_fp32", False)):
        lstm = module(E, H, batch_first=True).cuda()

        def train(lstm=lstm, tf32=tf32):
            torch.backends.cudnn.allow_tf32 = tf32
            y, _ = lstm(xt)
            y.backward(dt)

        def infer(lstm=lstm, tf32=tf32):
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.inference_mode():
                lstm(xt)
        out[label] = {"train": train, "infer": infer, "allow_tf32": bool(tf32)}
    return out


class SideBySide:
    """Fills a shape's ``row`` of the JSON: each case timed in rounds with every contender
    (``cudnn_contenders``; none without a card for torch), so each round runs cuDNN right
    after the case.

    ``time(label, mode, fn)``: the case's tokens/s (median), and with contenders its speed-up
    over "torch_cudnn_lstm", the median of its rounds' (``round_speedups``), and each round's
    (``MODE_ratio_rounds``), so a drift of the card's speed between cases or processes falls
    on both sides of a ratio.  ``finish()``: each contender's tokens/s over all its rounds,
    and strict FP32's speed-up over cuDNN as torch ships it, paired the same way."""

    def __init__(self, row, contenders, repeats, sync, tokens, reference="torch_cudnn_lstm"):
        self.row, self.contenders, self.repeats, self.sync, self.tokens = row, contenders, repeats, sync, tokens
        self.reference = reference          # the contender the ratios are to
        self.pooled = {mode: {c: [] for c in contenders} for mode in ("train", "infer")}
        if contenders:
            for mode in ("train", "infer"):
                row[f"{mode}_ratio_vs_cudnn"], row[f"{mode}_ratio_rounds"] = {}, {}

    def time(self, label, mode, fn):
        times = interleaved_times({label: fn, **{c: fns[mode] for c, fns in self.contenders.items()}},
                                  self.repeats, self.sync, settle=0.0, warmup=WARMUP)
        self.row[f"{mode}_tokens_per_s"][label] = self.tokens / statistics.median(times[label])
        if self.contenders:
            for c in self.contenders:
                self.pooled[mode][c] += times[c]
            rounds = round_speedups(times, label, self.reference)
            self.row[f"{mode}_ratio_vs_cudnn"][label] = statistics.median(rounds)
            self.row[f"{mode}_ratio_rounds"][label] = rounds
        # each case as it is timed: a run that a time limit stops keeps what it timed
        print(json.dumps({"shape": [self.row.get(k) for k in "BTEH"], "case": label, "mode": mode,
                          "tokens_per_s": self.row[f"{mode}_tokens_per_s"][label],
                          "ratio_vs_cudnn": self.row.get(f"{mode}_ratio_vs_cudnn", {}).get(label)}), flush=True)

    def finish(self):
        for mode, pooled in self.pooled.items():
            for c, times in pooled.items():
                if not times:
                    continue
                self.row[f"{mode}_tokens_per_s"][c] = self.tokens / statistics.median(times)
                self.row[f"{mode}_ratio_vs_cudnn"][c] = statistics.median(round_speedups(pooled, c, self.reference))
        for c, fns in self.contenders.items():
            self.row[c + "_allow_tf32"] = fns["allow_tf32"]


def time_gru(qlnumba, torch, d_x, d_dout, lengths, host, repeats, sync):
    """Our GRU layer (one direction, the library's step loop, device arrays, state None)
    next to cuDNN's nn.GRU (none without torch on a card): a ``SideBySide`` row of its own,
    ratios to "torch_cudnn_gru"."""
    B, T, E = d_x.shape
    H = d_dout.shape[2]
    row = {"B": B, "T": T, "E": E, "H": H, "train_tokens_per_s": {}, "infer_tokens_per_s": {}}
    contenders = cudnn_contenders(torch, *host, E, H, kind="gru") if torch is not None else {}
    timer = SideBySide(row, contenders, repeats, sync, B * T, reference="torch_cudnn_gru")
    cell = qlnumba.GRU(E, H, device="cuda", seed=0)._cells[0][0]
    params, grads = cell.device_params(), cell.device_grads()

    def train():
        cell.forward_device(d_x, lengths, None, params)
        cell.backward_device(d_dout, grads, None)

    label = f"qlnumba_gru_{cell.path}"
    timer.time(label, "train", train)
    timer.time(label, "infer", lambda: cell.forward_device(d_x, lengths, None, params, need_grad=False))
    timer.finish()
    plan = cell._plan(B)
    row["qlnumba_persistent_plan"] = plan._asdict() if plan is not None else None
    return row


def time_trainer(qlnumba, repeats, rng, kinds=("ql", "lstm")):
    """Tokens/s of CudaTrainer.step (embedding, recurrent layer, head, BPTT, AdamW, all on the
    device) for the headline IMDB configuration's sizes: vocabulary 20000, E 128, H 256,
    batches of 32 x 256 tokens; one entry per model kind of ``kinds``."""
    from numba import cuda

    from qlnumba.gpu.model import CudaTrainer
    B, T, V = 32, 256, 20000
    ids = rng.integers(1, V, (B, T))
    lengths = np.full(B, T)
    targets = rng.integers(0, 2, B)
    out = {}
    for kind in kinds:
        model = qlnumba.SequenceClassifier(V, 128, 256, kind=kind, device="cuda", seed=0)
        trainer = CudaTrainer(model, qlnumba.Adam(model.params, lr=1e-3, clip_norm=1.0))
        step = lambda: trainer.step(ids, lengths, targets)        # noqa: E731
        out[f"{kind}_train_tokens_per_s"] = B * T / median_time(step, repeats, cuda.synchronize)
    return out


def time_matmul_tiles(tiles, shape, repeats, rng):
    """GFLOP/s of each matrix-product tile on the layer's big products at ``shape``
    (QL-LSTM, G = H): x W^T before the step loop, and after it the weight gradients
    Σ δz x^T, Σ δz h^T (k = B*T, split k) and W^T δz, and the four's ms in all; plus the
    kernel's registers and local memory per thread (local memory would mean the register
    block spilled)."""
    from numba import cuda

    from qlnumba.gpu import matmul as mm
    from qlnumba.gpu.arrays import Workspace
    B, T, E, H = shape
    BT, G = B * T, H
    x = cuda.to_device(rng.standard_normal((BT, E)).astype(np.float32))
    dz = cuda.to_device(rng.standard_normal((BT, G)).astype(np.float32))
    h = cuda.to_device(rng.standard_normal((BT, H)).astype(np.float32))
    W = cuda.to_device(rng.standard_normal((G, E)).astype(np.float32))
    Z, dx = cuda.device_array((BT, G), np.float32), cuda.device_array((BT, E), np.float32)
    dW, dU = cuda.device_array((G, E), np.float32), cuda.device_array((G, H), np.float32)
    ws = Workspace(np.float32)
    products = {  # name: (C, A, B, M, N, K, sam, sak, sbk, sbn)
        "Z = x W^T": (Z, x, W, BT, G, E, E, 1, 1, E),
        "dW = sum dz x^T": (dW, dz, x, G, E, BT, 1, G, E, 1),
        "dU = sum dz h^T": (dU, dz, h, G, H, BT, 1, G, H, 1),
        "dx = W^T dz": (dx, dz, W, BT, E, G, G, 1, E, 1)}
    saved, out = mm.MATMUL_TILE, {}
    try:
        for tile in tiles:
            mm.MATMUL_TILE = tile
            row = {}
            for name, (C, A, Bm, M, N, Kd, *strides) in products.items():
                def run(C=C, A=A, Bm=Bm, M=M, N=N, Kd=Kd, strides=strides):
                    mm.matmul(C, A, Bm, M, N, Kd, *strides, scratch=ws.scratch)
                seconds = median_time(run, repeats, cuda.synchronize)
                row[name + " GFLOP/s"] = 2 * M * N * Kd / seconds / 1e9
                row["all four ms"] = row.get("all four ms", 0.0) + 1e3 * seconds
            for kern in getattr(mm.matmul_kernel(np.dtype(np.float32), mm.TILES[tile]), "overloads", {}).values():
                row["registers"], row["local_bytes"] = kern.regs_per_thread, kern.local_mem_per_thread
            out[tile] = row
    finally:
        mm.MATMUL_TILE = saved
    return out


def kernel_resources(kernels):
    """Registers and local memory per thread of the compiled persistent kernels, for each
    (item rows, team loads, item cols, step barrier) of ``kernels`` (those the layers ran)."""
    from qlnumba.gpu import persistent as ps
    out = {}
    for rows, loads, cols, barrier in sorted(kernels):
        for name in ("persistent_forward", "persistent_backward"):
            disp = ps.persistent_kernels(np.dtype(np.float32), rows, loads, cols, barrier)[name]
            for i, kern in enumerate(disp.overloads.values()):
                out[f"{name} item rows {rows} cols {cols}" + ("" if loads == ps.TEAM_LOADS else f" loads {loads}")
                    + ("" if barrier == ps.GRID_BARRIER else f" barrier {barrier}")
                    + f" [{i}]"] = {"registers": kern.regs_per_thread, "local_bytes": kern.local_mem_per_thread}
    return out


def settings(text, kind=int):
    """A comma-separated option of the persistent plan: "default" is None (the library's
    choice), the others ``kind``'s."""
    return [None if v == "default" else kind(v) for v in text.split(",")]


def layer_plan(B, H, psug, setting):
    """The persistent kernels' plan at this size for ``setting``, as a dict (None: the cell
    falls back to the simple path)."""
    from qlnumba.gpu.persistent import persistent_plan
    plan = persistent_plan(B, H, H if psug else 4 * H, 4, psug, setting.groups, setting.rows, setting.cols)
    return None if plan is None else plan._asdict()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,large", help="shapes to time (\"\": none, the versions alone)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="persistent", help="qlnumba GPU step loops to time (persistent,simple)")
    ap.add_argument("--block-size", type=int, default=32, help="QL-LSTM block length K (library default)")
    ap.add_argument("--row-groups", default="default",
                    help="persistent path: row groups to time, comma-separated (default: the library's "
                         "choice); each gets its own label, suffixed _r<N>")
    ap.add_argument("--item-rows", default="default",
                    help="persistent path: rows per team_dot item to time (1, 2, 4), comma-separated; "
                         "labels suffixed _i<N>")
    ap.add_argument("--gru", action="store_true",
                    help="also time qlnumba's GRU layer (its default step loop) next to cuDNN's nn.GRU at "
                         "each shape (the shape's \"gru\" entry, ratios to cuDNN's GRU)")
    ap.add_argument("--trainer", action="store_true",
                    help="also time whole training steps of the IMDB model kinds on the device (CudaTrainer)")
    ap.add_argument("--trainer-kinds", default="ql,lstm",
                    help="the model kinds --trainer times, comma-separated (of ql, lstm, psug, hgr, bilstm, gru)")
    ap.add_argument("--check", action="store_true",
                    help="first compare the GPU layer with the CPU layer (max errors; see --check-shapes)")
    ap.add_argument("--check-shapes", default="small", help="shapes --check compares at")
    ap.add_argument("--host-api", action="store_true", help="also time the host-array layer API")
    ap.add_argument("--matmul-tiles", default=None,
                    help="also time these matrix-product tiles (comma-separated names of "
                         "qlnumba.gpu.matmul.TILES) on the products of --tile-shape, last")
    ap.add_argument("--tile-shape", default="large", help="the shape whose products --matmul-tiles times")
    ap.add_argument("--matmul-prefetch", choices=("on", "off"), default=None,
                    help="the layers' matrix products use the prefetching tiles or the plain "
                         "ones (qlnumba.gpu.matmul.MATMUL_PREFETCH; default: the library's, on)")
    ap.add_argument("--team-loads", default=None,
                    help="loads of h in flight per team_dot lane and pass, 0 for no passes "
                         "(qlnumba.gpu.persistent.TEAM_LOADS; default: the library's, 16); several, "
                         "comma-separated, are timed side by side, labels suffixed _l<N>")
    ap.add_argument("--item-cols", default=None,
                    help="columns of one team_dot item in the persistent loops, 4 or 8 (qlnumba.gpu."
                         "persistent.ITEM_COLS; default: the library's choice, 4 for narrow parts, else "
                         "8); several, comma-separated, are timed side by side, labels suffixed _c<N>")
    ap.add_argument("--grid-barrier", default=None,
                    help="the persistent loops' step barrier, cg or spin (qlnumba.gpu.persistent."
                         "GRID_BARRIER; default: the library's, cg); several, comma-separated, are timed "
                         "side by side, labels suffixed _b<name>")
    ap.add_argument("--tensor-cores", choices=("off", "tf32", "tf32x3"), default=None,
                    help="the layers' float32 products on tensor cores: TF32 inputs, or three "
                         "TF32 products for float32's accuracy (qlnumba.gpu.matmul."
                         "MATMUL_TENSOR_CORES; default: the library's, tf32x3)")
    ap.add_argument("--matmul-tile", default=None,
                    help="the tile of the layers' matrix products, a name of qlnumba.gpu.matmul."
                         "TILES (qlnumba.gpu.matmul.MATMUL_TILE; default: the library's, auto; "
                         "float64 products never take a tensor-core tile)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if not set(args.trainer_kinds.split(",")) <= {"ql", "lstm", "psug", "hgr", "bilstm", "gru"}:
        ap.error(f"--trainer-kinds: kinds of ql, lstm, psug, hgr, bilstm, gru, got {args.trainer_kinds}")
    import numba
    from numba import cuda

    import qlnumba

    try:
        device = cuda.get_current_device().name
        device = device.decode() if isinstance(device, bytes) else str(device)
    except AttributeError:                      # the simulator has no device to name
        device = "numba CUDA simulator"
    result = {"device": device,
              "versions": {"python": platform.python_version(), "numpy": np.__version__,
                           "numba": numba.__version__, "numba_cuda": package_version("numba-cuda"),
                           "qlnumba": qlnumba.__version__},
              # which copy of the library ran: the working tree's, or scripts/make-baseline.sh's
              "library": os.path.dirname(os.path.abspath(qlnumba.__file__)),
              "host_cpu": host_cpu(),
              "paths": {"persistent": "one cooperative launch for all steps (a step barrier per step, "
                                      "grid_barrier), device arrays",
                        "simple": "a launch group per step, device arrays",
                        "*_host_api": "the layer API: host arrays in and out, parameters copied per call"},
              "shapes": {}}
    from qlnumba.gpu import matmul as mm
    from qlnumba.gpu import persistent as ps
    if args.matmul_prefetch:
        mm.MATMUL_PREFETCH = args.matmul_prefetch == "on"
    # --team-loads, --item-cols and --grid-barrier: one value sets the library's setting for
    # the whole run (no label); several are timed side by side, like --row-groups and --item-rows
    loads, cols = settings(args.team_loads or "default"), settings(args.item_cols or "default")
    barriers = settings(args.grid_barrier or "default", str)
    if not set(cols) <= {None, 4, 8}:
        ap.error(f"--item-cols: 4 or 8, got {args.item_cols}")
    if any(n is not None and n < 0 for n in loads):
        ap.error(f"--team-loads: 0 or more, got {args.team_loads}")
    if not set(barriers) <= {None, *ps.GRID_BARRIERS}:
        ap.error(f"--grid-barrier: one of {ps.GRID_BARRIERS}, got {args.grid_barrier}")
    if len(loads) == 1:
        ps.TEAM_LOADS, loads = ps.TEAM_LOADS if loads[0] is None else loads[0], [None]
    if len(cols) == 1:
        ps.ITEM_COLS, cols = ps.ITEM_COLS if cols[0] is None else cols[0], [None]
    if len(barriers) == 1:
        ps.GRID_BARRIER, barriers = ps.GRID_BARRIER if barriers[0] is None else barriers[0], [None]

    def recorded(values, library):     # the JSON's value: the one setting, or the list timed
        return library if values == [None] else [library if v is None else v for v in values]
    result["matmul_prefetch"], result["team_loads"] = mm.MATMUL_PREFETCH, recorded(loads, ps.TEAM_LOADS)
    if args.tensor_cores:
        mm.MATMUL_TENSOR_CORES = args.tensor_cores
    if args.matmul_tile:
        if args.matmul_tile not in mm.TILES:
            ap.error(f"--matmul-tile: not one of {sorted(mm.TILES)}")
        mm.MATMUL_TILE = args.matmul_tile
    result["matmul_tile"] = mm.MATMUL_TILE
    result["tensor_cores"], result["item_cols"] = mm.MATMUL_TENSOR_CORES, recorded(cols, ps.ITEM_COLS)
    result["grid_barrier"] = recorded(barriers, ps.GRID_BARRIER)
    result["narrow_parts"] = ("item_cols null is the library's choice: a part whose forward has at most 4 "
                              "columns takes items of 1 row x 4 columns, others 2 x 8 (persistent_plan; each "
                              "case's plan is in qlnumba_persistent_plan)")
    try:
        import torch
        result["versions"]["torch"] = torch.__version__
        result["versions"]["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        torch = None
    torch_cuda = torch is not None and torch.cuda.is_available()
    rng = np.random.default_rng(0)
    persistent = [Setting(*values) for values in product(settings(args.row_groups), settings(args.item_rows),
                                                          cols, loads, barriers)]
    if args.check:
        result["check_vs_cpu_max_rel_err"] = {
            name: check_against_cpu(qlnumba, SHAPES[name], args.block_size, rng, persistent)
            for name in args.check_shapes.split(",")}
        print(json.dumps({"check_vs_cpu_max_rel_err": result["check_vs_cpu_max_rel_err"]}), flush=True)
    shapes_run = list(filter(None, args.shapes.split(",")))     # --shapes "": the versions alone
    for name in shapes_run:
        B, T, E, H = SHAPES[name]
        tokens = B * T
        x = rng.standard_normal((B, T, E)).astype(np.float32)
        dout = rng.standard_normal((B, T, H)).astype(np.float32)
        row = {"B": B, "T": T, "E": E, "H": H, "train_tokens_per_s": {}, "infer_tokens_per_s": {}}
        # (label, psug, path, setting): each of the persistent path's settings
        cases = [(f"qlnumba_{kind}_{path}" + suffix(setting), psug, path, setting)
                 for path in args.paths.split(",") for kind, psug in (("ql", True), ("lstm", False))
                 for setting in (persistent if path == "persistent" else [LIBRARY])]
        d_x, d_dout = cuda.to_device(x), cuda.to_device(dout)
        lengths = np.full(B, T, np.int64)
        # cuDNN in every case's rounds (SideBySide)
        contenders = cudnn_contenders(torch, x, dout, E, H) if torch_cuda else {}
        sync = (lambda: (cuda.synchronize(), torch.cuda.synchronize())) if torch_cuda else cuda.synchronize
        timer = SideBySide(row, contenders, args.repeats, sync, tokens)
        if torch_cuda:                  # how fast this host feeds the card, before and after the rounds
            row["torch_launch_us"] = [torch_launch_us(torch)]
        for label, psug, path, setting in cases:
            layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=psug, block_size=args.block_size,
                                   device="cuda", seed=0)
            cell = layer._cells[0][0]
            cell.path = path
            configure(cell, setting)
            params, grads = cell.device_params(), cell.device_grads()

            # state None: zero initial state, the final state left on the device (as torch's
            # h_n, c_n), no gradient of it; nothing but the lengths crosses to the device
            def train(cell=cell, params=params, grads=grads):
                cell.forward_device(d_x, lengths, None, params)
                cell.backward_device(d_dout, grads, None)

            def infer(cell=cell, params=params):
                cell.forward_device(d_x, lengths, None, params, need_grad=False)

            def host_train(layer=layer):
                layer.forward(x)
                layer.backward(dout)

            with using_loop_options(setting):
                timer.time(label, "train", train)
                timer.time(label, "infer", infer)
                if args.host_api:
                    timer.time(label + "_host_api", "train", host_train)
        row["qlnumba_persistent_plan"] = {lab: layer_plan(B, H, psug, setting)
                                          for lab, psug, path, setting in cases if path == "persistent"}
        timer.finish()
        if args.gru:
            row["gru"] = time_gru(qlnumba, torch if torch_cuda else None, d_x, d_dout, lengths,
                                  (x, dout), args.repeats, sync)
        if torch_cuda:
            row["torch_launch_us"].append(torch_launch_us(torch))
        if contenders:                  # torch's TF32 flag as it was (the contenders set it per call)
            torch.backends.cudnn.allow_tf32 = contenders["torch_cudnn_lstm"]["allow_tf32"]
        result["shapes"][name] = row
        print(json.dumps({name: row}), flush=True)

    def save():
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(result, f, indent=1)
    save()                              # the timings are kept whatever fails after them
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" and "persistent" in args.paths:
        plans = [(layer_plan(B, H, psug, st), st) for B, _, _, H in (SHAPES[n] for n in shapes_run)
                 for psug in (True, False) for st in persistent]
        result["kernel_resources"] = kernel_resources(
            {(p["item_rows"], ps.TEAM_LOADS if st.loads is None else st.loads, p["item_cols"],
              ps.GRID_BARRIER if st.barrier is None else st.barrier) for p, st in plans if p})
    if args.trainer:
        result["trainer"] = time_trainer(qlnumba, args.repeats, rng, args.trainer_kinds.split(","))
        print(json.dumps({"trainer": result["trainer"]}), flush=True)
    save()
    if args.matmul_tiles:               # last, after a save: a tile that faulted on a card
        result["matmul_tiles"] = time_matmul_tiles(args.matmul_tiles.split(","),     # loses only this
                                                   SHAPES[args.tile_shape], args.repeats, rng)
        print(json.dumps({"matmul_tiles": result["matmul_tiles"]}), flush=True)
        save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
