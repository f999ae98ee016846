"""The program scripts/gpu-ncu.sh profiles: one QL-LSTM (or LSTM) layer's forward and
backward on the device at the large benchmark shape, twice (the first call compiles).

    python bench/ncu_driver.py [--kind ql|lstm] [--shape large|small|tiny]   (tiny: the simulator)
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gpu import SHAPES  # noqa: E402  (bench/gpu.py's shapes; bench/ is the script's folder)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("ql", "lstm"), default="ql")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="large")
    args = ap.parse_args()
    import qlnumba
    from qlnumba.gpu import get_cuda           # (it lets numba-cuda 0.30 run on numpy 2.5)

    cuda = get_cuda()
    B, T, E, H = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    psug = args.kind == "ql"
    layer = qlnumba.QLLSTM(E, H, psug=psug, hgr=psug, device="cuda", seed=0)
    cell = layer._cells[0][0]
    params, grads = cell.device_params(), cell.device_grads()
    x = cuda.to_device(rng.standard_normal((B, T, E)).astype(np.float32))
    dout = cuda.to_device(rng.standard_normal((B, T, H)).astype(np.float32))
    lengths = np.full(B, T, np.int64)
    for _ in range(2):
        cell.forward_device(x, lengths, None, params)
        cell.backward_device(dout, grads, None)
    cuda.synchronize()
    print(f"{args.kind} {args.shape}: two forward + backward calls done")


if __name__ == "__main__":
    main()
