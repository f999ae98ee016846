"""GPU benchmark: qlnumba's GPU QL-LSTM and LSTM next to PyTorch's cuDNN nn.LSTM, one run, one card.

A training step here is forward + backward of the recurrent layer (host arrays in
and out for qlnumba: it copies at the API boundary) with a gradient on every
output; torch's step is the same on device tensors, plus nothing else.
Inference is the forward alone.  qlnumba runs both step loops: the persistent
cooperative kernel ("persistent", the default) and the per-step launches
("simple").  Warm-up first (compilation excluded), medians, tokens/s and ratios
against cuDNN.

    python bench/gpu.py [--shapes small,large] [--paths persistent,simple] [--json-out FILE]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,large")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", default="persistent,simple", help="qlnumba GPU step loops to time")
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
                           "numba": numba.__version__, "qlnumba": qlnumba.__version__},
              "paths": {"persistent": "one cooperative launch for all steps (grid syncs), host I/O per call",
                        "simple": "a launch group per step, host I/O per call"},
              "shapes": {}}
    try:
        import torch
        result["versions"]["torch"] = torch.__version__
        result["versions"]["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    for name in args.shapes.split(","):
        B, T, E, H = SHAPES[name]
        tokens = B * T
        x = rng.standard_normal((B, T, E)).astype(np.float32)
        dout = rng.standard_normal((B, T, H)).astype(np.float32)
        row = {"B": B, "T": T, "E": E, "H": H, "train_tokens_per_s": {}, "infer_tokens_per_s": {}}
        cases = [(f"qlnumba_{kind}_{path}", psug, path) for path in args.paths.split(",")
                 for kind, psug in (("ql", True), ("lstm", False))]
        for label, psug, path in cases:
            layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=psug, device="cuda", seed=0)
            for cell in layer._cells[0]:
                cell.path = path

            def train(layer=layer):
                layer.forward(x)
                layer.backward(dout)

            row["train_tokens_per_s"][label] = tokens / median_time(train, args.repeats)
            row["infer_tokens_per_s"][label] = tokens / median_time(lambda: layer.forward(x), args.repeats)
        if torch is not None and torch.cuda.is_available():
            lstm = torch.nn.LSTM(E, H, batch_first=True).cuda()
            xt = torch.from_numpy(x).cuda()
            dt = torch.from_numpy(dout).cuda()

            def ttrain():
                out, _ = lstm(xt)
                out.backward(dt)

            def tinfer():
                with torch.inference_mode():
                    lstm(xt)

            sync = torch.cuda.synchronize
            row["train_tokens_per_s"]["torch_cudnn_lstm"] = tokens / median_time(ttrain, args.repeats, sync)
            row["infer_tokens_per_s"]["torch_cudnn_lstm"] = tokens / median_time(tinfer, args.repeats, sync)
            for mode in ("train", "infer"):
                tps = row[f"{mode}_tokens_per_s"]
                row[f"{mode}_ratio_vs_cudnn"] = {k: v / tps["torch_cudnn_lstm"] for k, v in tps.items()}
        result["shapes"][name] = row
        print(json.dumps({name: row}), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
