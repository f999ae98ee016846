"""BPTT when the gradients vanish: backward time with vanishing gradients, side by side with
healthy ones, at the shape of Fashion-MNIST read pixel by pixel.

A classifier's loss sits at the last step, so its gradient travels back through all T
steps, shrinking by about the forget gate (GRU: the update gate) at each.  Over 784 steps
it reaches the subnormal range (below 1.2e-38 in float32).  x86 CPUs run arithmetic that
reads or makes subnormal values through microcode assists, 10-100x slower, so a backward
whose gradients have vanished can take many times as long as one whose gradients are
healthy, for results that are zero to float32 precision.  The kernels flush such values
(``kernels.activations.flush``); this benchmark shows whether that holds.

For each layer kind and thread partition, one process times the layer's forward and backward
in two settings, interleaved round by round (``timing.interleaved_times``):

- healthy:   forget gates near 1 (bias +5), the gradient keeps its size over T steps;
- vanishing: forget gates near 0.82 (bias +1.5), it shrinks by 10^-0.086 a step and is
  below 1e-38 after about 450 steps.  QL-LSTM's HGR-ASC gate r is set near 0.05 too, but
  its gradient does not vanish at this length: the loss at the last step reaches the
  previous block's memory directly (h = ĥ + m), so the gradient shrinks once a block of
  K = 28 steps, not once a step.  Its rows show what the flush costs where nothing vanishes.

U is scaled by 0.1, so the gates follow the biases.  The figure that matters is the
ratio vanishing / healthy (1.0: no slowdown).  It also counts the subnormal values left in
δx and the parameter gradients.  Compilation is excluded (warm-up first).

    python bench/subnormal.py [--threads 2] [--repeats 5] [--T 784] [--json]
"""
import argparse
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numba  # noqa: E402
import numpy as np  # noqa: E402

import qlnumba  # noqa: E402
from qlnumba.config import set_num_threads  # noqa: E402
from timing import host_cpu, interleaved_times  # noqa: E402  (bench/ is the script's folder)

KINDS = {   # name -> (constructor arguments, partitions)
    "lstm": (dict(psug=False, hgr=False), ("units", "rows")),
    "ql": (dict(psug=True, hgr=True, block_size=28), ("units", "rows")),
    "gru": ("gru", ("rows",)),                     # GRU always splits the rows
}


def build_layer(kind, E, H, gate_bias, r_bias):
    """A float32 layer whose forget gate (GRU: update gate) sits near sigmoid(gate_bias)."""
    args = KINDS[kind][0]
    if args == "gru":
        layer = qlnumba.GRU(input_size=E, hidden_size=H, dtype=np.float32, seed=0)
        layer.params["l0.b"][H:2 * H] = gate_bias          # rows r, u, n: u = update gate
        layer.params["l0.b_U"][H:2 * H] = 0.0
    else:
        layer = qlnumba.QLLSTM(input_size=E, hidden_size=H, dtype=np.float32, seed=0, **args)
        if args["psug"]:
            layer.params["l0.beta"][1] = gate_bias           # rows i, f, g, o
        else:
            layer.params["l0.b"][H:2 * H] = gate_bias
        if args["hgr"]:
            layer.params["l0.b_r"][:] = r_bias
    layer.params["l0.U"] *= 0.1
    return layer


def subnormal_count(arrays):
    tiny = np.finfo(np.float32).tiny
    return int(sum(np.count_nonzero((a != 0) & (np.abs(a) < tiny)) for a in arrays))


def time_kind(kind, B, T, E, H, repeats):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    lengths = np.full(B, T)
    dout = np.zeros((B, T, H), np.float32)
    dout[:, -1] = 1.0                                      # the loss at the last step only
    layers = {"healthy": build_layer(kind, E, H, 5.0, 5.0),
              "vanishing": build_layer(kind, E, H, 1.5, -3.0)}
    counts = {}
    for name, layer in layers.items():
        layer.forward(x, lengths)
        dx, grads = layer.backward(dout)
        counts[name] = {"subnormal": subnormal_count([dx, *grads.values()]),
                        "dx_zero_fraction": float(np.mean(dx == 0))}

    def backward(layer):
        return lambda: (layer.forward(x, lengths), layer.backward(dout))
    times = interleaved_times({n: backward(layer) for n, layer in layers.items()}, repeats)
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"forward_backward_ms": {n: 1e3 * t for n, t in med.items()},
            "ratio_vanishing_to_healthy": med["vanishing"] / med["healthy"],
            "round_ratios": [v / h for v, h in zip(times["vanishing"], times["healthy"], strict=True)],
            "values": counts}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--T", type=int, default=784)
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if min(args.threads, args.repeats, args.B, args.T, args.H) < 1:
        ap.error("--threads, --repeats, --B, --T and --H must be >= 1")
    B, T, E, H = args.B, args.T, 1, args.H
    results = {}
    for kind in args.kinds.split(","):
        for partition in KINDS[kind][1]:
            set_num_threads(args.threads, partition)
            results[f"{kind}/{partition}"] = time_kind(kind, B, T, E, H, args.repeats)
    report = {"machine": f"{host_cpu()}, {os.cpu_count()} cpus",
              "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
              "config": {"B": B, "T": T, "E": E, "H": H, "dtype": "float32", "threads": args.threads,
                         "repeats": args.repeats},
              "results": results}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print({k: v for k, v in report.items() if k != "results"})
    print(f"{'layer/partition':16s} {'healthy ms':>11s} {'vanishing ms':>13s} {'ratio':>7s} "
          f"{'subnormals (healthy, vanishing)':>32s}")
    for name, r in results.items():
        ms, c = r["forward_backward_ms"], r["values"]
        print(f"{name:16s} {ms['healthy']:11.1f} {ms['vanishing']:13.1f} "
              f"{r['ratio_vanishing_to_healthy']:7.2f} "
              f"{c['healthy']['subnormal']:>16d}, {c['vanishing']['subnormal']:d}")


if __name__ == "__main__":
    main()
