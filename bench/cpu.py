"""CPU benchmark: qlnumba QL-LSTM and LSTM next to PyTorch's nn.LSTM, in one run
(with --gru, our GRU next to torch's nn.GRU as well).

A training step is: recurrent layer forward, linear head on the last step with
softmax cross-entropy, backward, one Adam step over every parameter.
Inference is the layer's forward alone.  qlnumba runs with
``qlnumba.config.set_num_threads(--threads, --partition)`` (BLAS on one thread);
torch with ``torch.set_num_threads(--threads)``.  Inference is ``forward(x,
need_grad=False)`` on our side and ``torch.inference_mode()`` on torch's.  GFLOP/s
counts the matrix products only (2 flops per multiply-add; training = 3x the
forward's products), against the peak of a large float32 BLAS product on the same
threads.  Every case warms up first (compilation excluded); then the cases are
timed in --repeats interleaved rounds (each round runs every case once, so a
slow spell of a shared machine hits all of them) and the medians are reported
as tokens/s and ratios against torch.  Each timed call comes right after an
untimed call of the same case (``timing.interleaved_times(rewarm=True)``; off with
--no-rewarm): on the CI machine kind's VM, memory left untouched for a few seconds
is slow to touch again, and at config C the case timed after torch's
seconds-long calls lost 25-30% to that alone (bench/results/README.md).

Subnormals.  On random data a fresh torch LSTM (forget-gate bias 0) passes back from the
last step a gradient that shrinks by about half a step, so over T = 256 steps it turns
subnormal, where x86 arithmetic takes microcode assists: on the CI machine's Intel Xeon,
torch trained config A at about 5k tokens/s for its first nine steps and about 65k once
Adam had moved the weights, or from the start with ``torch.set_flush_denormal(True)``
(bench/results/README.md).  Our
kernels flush such values in code (``kernels.activations.flush``).  So that the
comparison is of the LSTMs and not of how each handles subnormals, torch gets
``set_flush_denormal(True)`` (flush-to-zero and denormals-are-zero for the calling thread
and the threads it starts later: torch's pool) unless ``--torch-subnormals``; the JSON
says which (``versions.torch_flush_denormal``).

    python bench/cpu.py --config A            # table
    python bench/cpu.py --config A --json     # one JSON object
    python bench/cpu.py --config A --gru      # GRUs too
    python bench/cpu.py --block-size 4        # QL-LSTM at train/imdb.py's block length
"""
import argparse
import json
import os
import platform
import sys

CONFIGS = {"A": (32, 256, 128, 256), "C": (64, 512, 300, 512), "tiny": (4, 16, 8, 8)}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="A", help="(B, T, E, H) preset")
    ap.add_argument("--threads", type=int, default=2, help="threads for Numba, BLAS and torch")
    ap.add_argument("--block-size", type=int, default=32,
                    help="QL-LSTM's HGR-ASC block length K (the library's default 32; "
                         "train/imdb.py's is 4)")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    ap.add_argument("--partition", choices=("units", "rows"), default="units",
                    help="how qlnumba splits work across threads (qlnumba.config.set_num_threads)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    ap.add_argument("--torch-subnormals", action="store_true",
                    help="leave torch's subnormal handling as shipped (default: set_flush_denormal(True))")
    ap.add_argument("--no-rewarm", action="store_true",
                    help="time each call without an untimed call of the same case right before it")
    ap.add_argument("--gru", action="store_true",
                    help="also time our GRU and torch's nn.GRU (GRU ratios are against torch's GRU)")
    args = ap.parse_args()
    if args.threads < 1 or args.repeats < 1:
        ap.error(f"--threads and --repeats must be >= 1, got {args.threads} and {args.repeats}")
    return args


args = parse_args()
# thread counts must be fixed before numpy / numba / torch start their pools
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = str(args.threads)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numba  # noqa: E402
import numpy as np  # noqa: E402

import qlnumba  # noqa: E402
from qlnumba.kernels.head import linear_xent_backward, linear_xent_forward  # noqa: E402
from qlnumba.optim import Adam  # noqa: E402
from timing import host_cpu, interleaved_median_times, median_time  # noqa: E402  (bench/ is the script's folder)


def matmul_peak_gflops(threads):
    """float32 GFLOP/s of a 2048^3 BLAS product on ``threads`` threads (median of 5)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    with threadpool_limits(threads, user_api="blas"):
        return 2 * 2048 ** 3 / median_time(lambda: a @ a, 5) / 1e9


def forward_flops(psug, hgr, B, T, E, H, gates=4):
    G = H if psug else gates * H
    per_token = 2 * G * (E + H) + (2 * 2 * H * H / 32 if hgr else 0)
    return B * T * per_token


def qlnumba_case(layer, B, T, E, H, rng):
    C = 2
    head = {"head.W": (rng.standard_normal((C, H)) * 0.1).astype(np.float32),
            "head.b": np.zeros(C, np.float32)}
    params = dict(layer.params, **head)
    opt = Adam(params, lr=1e-3)
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    targets = rng.integers(0, C, B)
    probs, losses = np.empty((B, C), np.float32), np.empty(B, np.float32)

    def train_step():
        out, _ = layer.forward(x)
        h_last = np.ascontiguousarray(out[:, -1])
        linear_xent_forward(probs, losses, h_last, targets, head["head.W"], head["head.b"])
        grads = {"head.W": np.zeros_like(head["head.W"]), "head.b": np.zeros_like(head["head.b"])}
        dh = np.zeros_like(h_last)
        linear_xent_backward(dh, grads["head.W"], grads["head.b"], probs, h_last, targets,
                             head["head.W"], np.full(B, 1.0 / B, np.float32))
        dout = np.zeros_like(out)
        dout[:, -1] = dh
        _, g = layer.backward(dout)
        grads.update(g)
        opt.step(grads)

    return train_step, lambda: layer.forward(x, need_grad=False)


def torch_case(B, T, E, H, rng, kind="LSTM"):
    import torch

    torch.manual_seed(0)
    lstm = getattr(torch.nn, kind)(E, H, batch_first=True)
    head = torch.nn.Linear(H, 2)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
    x = torch.from_numpy(rng.standard_normal((B, T, E)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 2, B))

    def train_step():
        opt.zero_grad()
        out, _ = lstm(x)
        loss = torch.nn.functional.cross_entropy(head(out[:, -1]), targets)
        loss.backward()
        opt.step()

    def infer():
        with torch.inference_mode():
            lstm(x)

    return train_step, infer


def cpu_times():
    """(steal, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def import_torch():
    """torch, or None.  Imported before Numba starts its threads: Numba's OpenMP layer loads
    the system's libgomp.so.1, and a torch loaded after it links to that one instead of its
    own, which slowed torch's GRU 15-20x (its LSTM, on oneDNN, not measurably)."""
    if args.no_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch


def main():
    B, T, E, H = CONFIGS[args.config]
    torch = import_torch()
    peak = matmul_peak_gflops(args.threads)
    qlnumba.config.set_num_threads(args.threads, args.partition)
    rng = np.random.default_rng(0)
    layers = {"qlnumba_ql": qlnumba.QLLSTM(E, H, psug=True, hgr=True, block_size=args.block_size,
                                           dtype=np.float32, seed=0),
              "qlnumba_lstm": qlnumba.QLLSTM(E, H, psug=False, hgr=False, dtype=np.float32, seed=0)}
    if args.gru:
        layers["qlnumba_gru"] = qlnumba.GRU(E, H, dtype=np.float32, seed=0)
    cases = {name: qlnumba_case(layer, B, T, E, H, rng) for name, layer in layers.items()}
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__, "qlnumba": qlnumba.__version__,
                "wide_vectors": qlnumba.config.WIDE_VECTORS}
    if torch is not None:
        torch.set_num_threads(args.threads)
        # before torch starts its pool, whose threads inherit the mode: see the module's doc
        versions["torch_flush_denormal"] = (not args.torch_subnormals) and torch.set_flush_denormal(True)
        cases["torch_lstm"] = torch_case(B, T, E, H, rng)
        if args.gru:
            cases["torch_gru"] = torch_case(B, T, E, H, rng, "GRU")
        versions["torch"] = torch.__version__
        versions["torch_threads"] = torch.get_num_threads()
        versions["torch_imported_first"] = True
    tokens = B * T
    result = {"config": args.config, "B": B, "T": T, "E": E, "H": H, "dtype": "float32",
              "threads": args.threads, "block_size": args.block_size, "repeats": args.repeats,
              "rewarm": not args.no_rewarm,
              "machine": f"{host_cpu()}, {os.cpu_count()} cpus",
              "load_avg_1min": os.getloadavg()[0], "versions": versions,
              "matmul_peak_gflops": peak, "qlnumba_threads": qlnumba.config.get_num_threads(),
              "qlnumba_partition": qlnumba.config.get_partition(),
              "train_tokens_per_s": {}, "infer_tokens_per_s": {}, "gflops": {}}
    before = cpu_times()
    for mode, index in (("train", 0), ("infer", 1)):
        seconds = interleaved_median_times({name: fns[index] for name, fns in cases.items()},
                                           args.repeats, rewarm=not args.no_rewarm)
        result[f"{mode}_tokens_per_s"] = {name: tokens / t for name, t in seconds.items()}
    for name in cases:
        psug = name == "qlnumba_ql"
        fwd = forward_flops(psug, psug, B, T, E, H, 3 if name.endswith("gru") else 4) / tokens
        result["gflops"][name] = {"train": 3 * fwd * result["train_tokens_per_s"][name] / 1e9,
                                  "infer": fwd * result["infer_tokens_per_s"][name] / 1e9}
    if "torch_lstm" in cases:
        for mode in ("train", "infer"):
            tps = result[f"{mode}_tokens_per_s"]
            # GRUs against torch's GRU, the rest against torch's LSTM
            result[f"{mode}_ratio_vs_torch"] = {
                k: tps[k] / tps["torch_gru" if k.endswith("gru") else "torch_lstm"] for k in tps}
    result["load_avg_1min_after"] = os.getloadavg()[0]
    after = cpu_times()
    # time the hypervisor gave this VM's CPUs to others while the cases ran (a shared host)
    result["steal_percent"] = (100 * (after[0] - before[0]) / max(1, after[1] - before[1])
                               if before and after else None)
    if args.json:
        print(json.dumps(result))
        return
    print(f"config {args.config}: B={B} T={T} E={E} H={H} float32, QL-LSTM's K={args.block_size}, "
          f"{args.threads} threads, median of {args.repeats}")
    steal = result["steal_percent"]
    print(f"machine: {result['machine']}, load {result['load_avg_1min']:.2f}"
          + (f", CPU time stolen by the host while timing {steal:.1f}%" if steal is not None else "")
          + f"; versions: {versions}")
    print(f"float32 matrix-product peak on {args.threads} threads: {peak:.0f} GFLOP/s")
    print(f"qlnumba partition: {result['qlnumba_partition']}")
    print(f"{'model':14s} {'train tok/s':>12s} {'ratio':>7s} {'infer tok/s':>12s} {'ratio':>7s} "
          f"{'GFLOP/s train/infer':>20s}")
    for name in cases:
        tr, inf = result["train_tokens_per_s"][name], result["infer_tokens_per_s"][name]
        rt = result.get("train_ratio_vs_torch", {}).get(name, float("nan"))
        ri = result.get("infer_ratio_vs_torch", {}).get(name, float("nan"))
        gf = result["gflops"][name]
        print(f"{name:14s} {tr:12.0f} {rt:7.2f} {inf:12.0f} {ri:7.2f} "
              f"{gf['train']:9.1f} / {gf['infer']:.1f}")


if __name__ == "__main__":
    main()
