"""Where a GPU training step's time goes: every kernel launch timed on its own.

Each launch of the recurrent cell's kernels is bracketed by device
synchronisations and timed; the rest of a call (allocations, small host copies,
Python) is reported as host overhead.  Also measures one step barrier in an otherwise empty
cooperative kernel: cooperative groups' grid sync, and ``barrier.blocks_barrier`` (the loops'
GRID_BARRIER "spin") among all the blocks and, as the loops use it with two row groups, among
each half of them.  Timings with synchronisation after every launch are an upper bound on
the real (asynchronous) step; use them for proportions.

    python bench/gpu_profile.py [--shapes small,large] [--grid-barrier spin]
    python bench/gpu_profile.py --shapes ""        (the barriers alone, seconds)
"""
import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack                   # numba-cuda 0.30 against numpy 2.5
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SHAPES = {"small": (32, 256, 128, 256), "large": (64, 1024, 300, 512), "tiny": (2, 4, 2, 3)}
TIMES = defaultdict(float)


class Timed:
    def __init__(self, name, kernel, cuda):
        self.name, self.kernel, self.cuda = name, kernel, cuda

    def __getattr__(self, name):                   # compile, typeof_pyval, overloads: the kernel's
        return getattr(self.kernel, name)

    def __getitem__(self, config):
        launch = self.kernel[config]

        def call(*args):
            self.cuda.synchronize()
            t0 = time.perf_counter()
            launch(*args)
            self.cuda.synchronize()
            TIMES[self.name] += time.perf_counter() - t0
        return call


def grid_sync_seconds(blocks, threads, n=2000):
    @cuda.jit
    def syncs(count, out):
        grid = cuda.cg.this_grid()
        for _ in range(count):
            grid.sync()
        if cuda.grid(1) == 0:
            out[0] = count

    return seconds_per_count(syncs[blocks, threads], n, cuda.device_array(1, np.int64))


def seconds_per_count(launch, n, *args):
    """Seconds per loop turn of a kernel launched as ``launch(count, *args)``: a warm-up launch
    of 10 turns (compilation), then one of ``n``, timed between synchronisations."""
    launch(10, *args)
    cuda.synchronize()
    t0 = time.perf_counter()
    launch(n, *args)
    cuda.synchronize()
    return (time.perf_counter() - t0) / n


def spin_barrier_seconds(blocks, threads, sets=1, n=2000):
    """Seconds per ``barrier.blocks_barrier`` with ``blocks`` blocks split into ``sets`` sets
    that each wait only for their own blocks (the loops' row groups); ``blocks`` must be a
    multiple of ``sets`` (a set short of blocks would wait for ever)."""
    if blocks % sets:
        raise ValueError(f"{blocks} blocks do not split into {sets} equal sets")
    from qlnumba.gpu.barrier import SLOT, blocks_barrier

    @cuda.jit
    def syncs(count, bar, per_set, out):
        cuda.cg.this_grid()                      # a cooperative launch: every block resident
        which, rank = cuda.blockIdx.x // per_set, cuda.blockIdx.x % per_set
        for _ in range(count):
            blocks_barrier(bar, which, per_set, rank == 0)
        if cuda.grid(1) == 0:
            out[0] = count

    bar, out = cuda.to_device(np.zeros(sets * SLOT, np.int64)), cuda.device_array(1, np.int64)
    return seconds_per_count(syncs[blocks, threads], n, bar, blocks // sets, out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,large")
    ap.add_argument("--cprofile", action="store_true",
                    help="also print the host functions that take the most time in one untimed "
                         "training step per shape and kind (cProfile)")
    ap.add_argument("--trainer", action="store_true",
                    help="also time CudaTrainer steps (IMDB sizes) and print a cProfile of one")
    ap.add_argument("--tensor-cores", choices=("off", "tf32", "tf32x3"), default=None,
                    help="float32 products on tensor cores (qlnumba.gpu.matmul."
                         "MATMUL_TENSOR_CORES; default: the library's, tf32x3)")
    ap.add_argument("--grid-barrier", choices=("cg", "spin"), default=None,
                    help="the persistent loops' step barrier (qlnumba.gpu.persistent.GRID_BARRIER; "
                         "default: the library's, cg)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    global cuda                                # a module global: the simulator swaps it in kernels
    from numba import cuda

    import qlnumba
    from qlnumba.gpu import arrays as garrays
    from qlnumba.gpu import cells as gcells
    from qlnumba.gpu import matmul as gmm
    from qlnumba.gpu import persistent as gps
    if args.tensor_cores:
        gmm.MATMUL_TENSOR_CORES = args.tensor_cores
    if args.grid_barrier:
        gps.GRID_BARRIER = args.grid_barrier

    # the kernel factories, replaced where they are defined (the library calls them there)
    factories = ((garrays, "array_kernels"), (gcells, "cell_kernels"), (gmm, "matmul_kernel"),
                 (gps, "persistent_kernels"))
    real = {f: getattr(m, f) for m, f in factories}

    def timed_dict(factory):
        return lambda *a, **kw: {k: v if k in gcells.DEVICE_FUNCTIONS else Timed(k, v, cuda)
                                 for k, v in real[factory](*a, **kw).items()}

    timed = {"array_kernels": timed_dict("array_kernels"), "cell_kernels": timed_dict("cell_kernels"),
             "persistent_kernels": timed_dict("persistent_kernels"),
             "matmul_kernel": lambda dtype, tile: Timed(                 # named as in TILES
                 "matmul " + next((n for n, t in gmm.TILES.items() if t == tile), str(tile)),
                 real["matmul_kernel"](dtype, tile), cuda)}

    def install(which):
        for module, factory in factories:
            setattr(module, factory, which[factory])

    install(timed)
    blocks = 1 if garrays.SIM else cuda.get_current_device().MULTIPROCESSOR_COUNT
    counts = (1,) if garrays.SIM else (1, 64, 128, blocks)
    syncs = 20 if garrays.SIM else 2000               # the simulator takes ~11 ms per grid sync
    # the loops' blocks: 512 threads where they fit (persistent_plan), and 128 of them in two
    # row groups at both bench shapes on an H100
    threads = garrays.THREADS if garrays.SIM else 512
    report = {"tensor_cores": gmm.MATMUL_TENSOR_CORES, "grid_barrier": gps.GRID_BARRIER,
              "grid_sync_us": {f"{b} blocks x {threads}": 1e6 * grid_sync_seconds(b, threads, syncs)
                               for b in counts},
              "spin_barrier_us": {f"{b} blocks x {threads}": 1e6 * spin_barrier_seconds(b, threads, 1, syncs)
                                  for b in counts},
              "spin_barrier_two_sets_us": {f"{b - b % 2} blocks x {threads}, sets of {b // 2}":
                                           1e6 * spin_barrier_seconds(b - b % 2, threads, 2, syncs)
                                           for b in counts if b >= 2}}
    print(json.dumps(report), flush=True)
    rng = np.random.default_rng(0)
    for name in filter(None, args.shapes.split(",")):
        B, T, E, H = SHAPES[name]
        d_x = cuda.to_device(rng.standard_normal((B, T, E)).astype(np.float32))
        d_dout = cuda.to_device(rng.standard_normal((B, T, H)).astype(np.float32))
        lengths = np.full(B, T, np.int64)
        for label, psug, hgr in (("ql", True, True), ("psug_only", True, False), ("lstm", False, False)):
            cell = qlnumba.QLLSTM(E, H, psug=psug, hgr=hgr, device="cuda", seed=0)._cells[0][0]
            params, grads = cell.device_params(), cell.device_grads()

            row = {}
            for phase in ("warm", "forward", "backward"):
                TIMES.clear()
                cuda.synchronize()
                t0 = time.perf_counter()
                if phase in ("warm", "forward"):
                    cell.forward_device(d_x, lengths, None, params)
                if phase in ("warm", "backward"):
                    cell.backward_device(d_dout, grads, None)
                cuda.synchronize()
                total = time.perf_counter() - t0
                if phase != "warm":
                    row[phase] = {"total_ms": 1e3 * total,
                                  "kernels_ms": {k: round(1e3 * v, 3) for k, v in
                                                 sorted(TIMES.items(), key=lambda kv: -kv[1])},
                                  "host_overhead_ms": 1e3 * (total - sum(TIMES.values()))}
            if args.cprofile:
                import cProfile
                import io
                import pstats
                install(real)                                                  # no timing wrappers
                prof = cProfile.Profile()
                prof.enable()
                cell.forward_device(d_x, lengths, None, params)
                cell.backward_device(d_dout, grads, None)
                cuda.synchronize()
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
                row["cprofile_top"] = text.getvalue()[-3000:]
                print(row["cprofile_top"], flush=True)
                install(timed)
            step_us = 1e3 * row["forward"]["kernels_ms"].get("persistent_forward", 0) / T
            row["persistent_forward_us_per_step"] = step_us
            row["persistent_backward_us_per_step"] = 1e3 * row["backward"]["kernels_ms"].get(
                "persistent_backward", 0) / T
            report[f"{name}_{label}"] = row
            print(json.dumps({f"{name}_{label}": row}), flush=True)
    if args.trainer:
        install(real)
        report["trainer"] = profile_trainer(rng)
        print(json.dumps({"trainer": report["trainer"]}), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=1)


def profile_trainer(rng, steps=5):
    """ms per CudaTrainer.step (median of ``steps``, synchronised) at the headline IMDB sizes
    (vocabulary 20000, E 128, H 256, batches of 32 x 256), and the host functions that take
    the most time in one more step (cProfile, by own time)."""
    import cProfile
    import io
    import pstats

    import qlnumba
    from qlnumba.gpu.arrays import SIM
    from qlnumba.gpu.model import CudaTrainer
    B, T, V, E, H = (2, 4, 50, 3, 4) if SIM else (32, 256, 20000, 128, 256)
    ids, lengths, targets = rng.integers(1, V, (B, T)), np.full(B, T), rng.integers(0, 2, B)
    out = {}
    for kind in ("ql", "lstm"):
        model = qlnumba.SequenceClassifier(V, E, H, kind=kind, device="cuda", seed=0)
        trainer = CudaTrainer(model, qlnumba.Adam(model.params, lr=1e-3, clip_norm=1.0))
        trainer.step(ids, lengths, targets)                       # warm-up (compiles)
        times = []
        for _ in range(steps):
            cuda.synchronize()
            t0 = time.perf_counter()
            trainer.step(ids, lengths, targets)
            cuda.synchronize()
            times.append(time.perf_counter() - t0)
        prof = cProfile.Profile()
        prof.enable()
        trainer.step(ids, lengths, targets)
        cuda.synchronize()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
        out[kind] = {"step_ms": 1e3 * float(np.median(times)),
                     "tokens_per_s": B * T / float(np.median(times)), "cprofile_top": text.getvalue()[-3500:]}
        print(out[kind]["cprofile_top"], flush=True)
    return out


if __name__ == "__main__":
    main()
