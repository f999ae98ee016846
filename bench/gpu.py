"""GPU benchmark: qlnumba's GPU QL-LSTM and LSTM next to PyTorch's cuDNN nn.LSTM, one run, one card.

A training step is forward + backward of one recurrent layer with a gradient on
every output (no optimizer on either side); inference is the forward alone.
qlnumba runs on device arrays (``CudaQLCell.forward_device`` / ``backward_device``:
parameters, activations and gradient accumulators stay on the GPU; only the small
per-row state crosses), as torch does on device tensors.  Step loops timed:
"persistent" (one cooperative launch for all steps, the default) and, with
``--paths persistent,simple``, the per-step launches.  ``--host-api`` adds the
layer API (host arrays in and out, parameters copied each call).  ``--check``
first compares the GPU layer with the CPU layer at the first shape; ``--trainer``
times whole ``CudaTrainer`` steps (embedding, layer, head, BPTT, AdamW on the
device).  Warm-up first (compilation excluded), medians, tokens/s and ratios
against cuDNN (as torch ships it, and in strict FP32).

    python bench/gpu.py [--shapes small,large] [--paths persistent] [--check] [--trainer]
                        [--json-out FILE]
"""
import argparse
import json
import os
import platform
import sys

import numpy as np

if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack                   # numba-cuda 0.30 against numpy 2.5
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from timing import median_time  # noqa: E402  (bench/ is the script's folder)

SHAPES = {"small": (32, 256, 128, 256), "large": (64, 1024, 300, 512), "tiny": (2, 4, 2, 3)}


def package_version(name):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def check_against_cpu(qlnumba, shape, block_size, rng):
    """Max |GPU - CPU| / max |CPU| of out, dx and every gradient, float32, at a benchmark shape
    (many blocks on a real card, unlike the tests' tiny shapes)."""
    B, T, E, H = shape
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    lengths = rng.integers(T // 2, T + 1, B)
    lengths[0] = T
    dout = rng.standard_normal((B, T, H)).astype(np.float32)
    report = {}
    for kind, psug in (("ql", True), ("lstm", False)):
        results = []
        for device in ("cpu", "cuda"):
            layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=psug, block_size=block_size, device=device, seed=3)
            out, _ = layer.forward(x, lengths)
            dx, grads = layer.backward(dout)
            results.append(dict(out=out, dx=dx, **{f"grad_{k}": v for k, v in grads.items()}))
        cpu, gpu = results
        report[kind] = {k: float(np.abs(gpu[k] - cpu[k]).max() / max(np.abs(cpu[k]).max(), 1e-30))
                        for k in cpu}
    return report


def time_trainer(qlnumba, repeats, rng):
    """Tokens/s of CudaTrainer.step (embedding, recurrent layer, head, BPTT, AdamW, all on the
    device) for the headline IMDB configuration's sizes: vocabulary 20000, E 128, H 256,
    batches of 32 x 256 tokens."""
    from numba import cuda

    from qlnumba.gpu.model import CudaTrainer
    B, T, V = 32, 256, 20000
    ids = rng.integers(1, V, (B, T))
    lengths = np.full(B, T)
    targets = rng.integers(0, 2, B)
    out = {}
    for kind in ("ql", "lstm"):
        model = qlnumba.SequenceClassifier(V, 128, 256, kind=kind, device="cuda", seed=0)
        trainer = CudaTrainer(model, qlnumba.Adam(model.params, lr=1e-3, clip_norm=1.0))
        step = lambda: trainer.step(ids, lengths, targets)        # noqa: E731
        out[f"{kind}_train_tokens_per_s"] = B * T / median_time(step, repeats, cuda.synchronize)
    return out


def layer_plan(qlnumba, E, H, psug):
    """Whether the persistent kernels run at this size (else the cell falls back to simple)."""
    from qlnumba.gpu.recurrent import persistent_plan
    return persistent_plan(H, H if psug else 4 * H, 4, hgr=psug) is not None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,large")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="persistent", help="qlnumba GPU step loops to time (persistent,simple)")
    ap.add_argument("--block-size", type=int, default=32, help="QL-LSTM block length K (library default)")
    ap.add_argument("--trainer", action="store_true",
                    help="also time whole training steps of the IMDB model kinds on the device (CudaTrainer)")
    ap.add_argument("--check", action="store_true",
                    help="first compare the GPU layer with the CPU layer at the first shape (max errors)")
    ap.add_argument("--host-api", action="store_true", help="also time the host-array layer API")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
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
              "paths": {"persistent": "one cooperative launch for all steps (grid syncs), device arrays",
                        "simple": "a launch group per step, device arrays",
                        "*_host_api": "the layer API: host arrays in and out, parameters copied per call"},
              "shapes": {}}
    try:
        import torch
        result["versions"]["torch"] = torch.__version__
        result["versions"]["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    if args.check:
        first = SHAPES[args.shapes.split(",")[0]]
        result["check_vs_cpu_max_rel_err"] = check_against_cpu(qlnumba, first, args.block_size, rng)
        print(json.dumps({"check_vs_cpu_max_rel_err": result["check_vs_cpu_max_rel_err"]}), flush=True)
    for name in args.shapes.split(","):
        B, T, E, H = SHAPES[name]
        tokens = B * T
        x = rng.standard_normal((B, T, E)).astype(np.float32)
        dout = rng.standard_normal((B, T, H)).astype(np.float32)
        row = {"B": B, "T": T, "E": E, "H": H, "train_tokens_per_s": {}, "infer_tokens_per_s": {}}
        cases = [(f"qlnumba_{kind}_{path}", psug, path) for path in args.paths.split(",")
                 for kind, psug in (("ql", True), ("lstm", False))]
        d_x, d_dout = cuda.to_device(x), cuda.to_device(dout)
        lengths = np.full(B, T, np.int64)
        for label, psug, path in cases:
            layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=psug, block_size=args.block_size,
                                   device="cuda", seed=0)
            cell = layer._cells[0][0]
            cell.path = path
            params, grads = cell.device_params(), cell.device_grads()

            def state():
                zero = np.zeros((B, H), np.float32)
                return dict(h=zero, c=zero.copy(), m=zero.copy(), a=zero.copy(), n=np.zeros(B, np.int64))

            def train(cell=cell, params=params, grads=grads):
                cell.forward_device(d_x, lengths, state(), params)
                cell.backward_device(d_dout, grads, state())

            def infer(cell=cell, params=params):
                cell.forward_device(d_x, lengths, state(), params, need_grad=False)

            row["train_tokens_per_s"][label] = tokens / median_time(train, args.repeats, cuda.synchronize)
            row["infer_tokens_per_s"][label] = tokens / median_time(infer, args.repeats, cuda.synchronize)
            if args.host_api:
                def host_train(layer=layer):
                    layer.forward(x)
                    layer.backward(dout)
                row["train_tokens_per_s"][label + "_host_api"] = tokens / median_time(host_train, args.repeats)
        row["qlnumba_persistent_used"] = {lab: layer_plan(qlnumba, E, H, psug) for lab, psug, _ in cases}
        if torch is not None and torch.cuda.is_available():
            xt = torch.from_numpy(x).cuda()
            dt = torch.from_numpy(dout).cuda()
            sync = torch.cuda.synchronize
            # cuDNN as torch ships it (TF32 allowed by default), and strict FP32 (as qlnumba computes)
            for label, tf32 in (("torch_cudnn_lstm", torch.backends.cudnn.allow_tf32),
                                ("torch_cudnn_lstm_strict_fp32", False)):
                torch.backends.cudnn.allow_tf32 = tf32
                lstm = torch.nn.LSTM(E, H, batch_first=True).cuda()

                def ttrain(lstm=lstm):
                    out, _ = lstm(xt)
                    out.backward(dt)

                def tinfer(lstm=lstm):
                    with torch.inference_mode():
                        lstm(xt)

                row["train_tokens_per_s"][label] = tokens / median_time(ttrain, args.repeats, sync)
                row["infer_tokens_per_s"][label] = tokens / median_time(tinfer, args.repeats, sync)
                row[label + "_allow_tf32"] = bool(tf32)
            torch.backends.cudnn.allow_tf32 = True
            for mode in ("train", "infer"):
                tps = row[f"{mode}_tokens_per_s"]
                row[f"{mode}_ratio_vs_cudnn"] = {k: v / tps["torch_cudnn_lstm"] for k, v in tps.items()}
        result["shapes"][name] = row
        print(json.dumps({name: row}), flush=True)
    if args.trainer:
        result["trainer"] = time_trainer(qlnumba, args.repeats, rng)
        print(json.dumps({"trainer": result["trainer"]}), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
