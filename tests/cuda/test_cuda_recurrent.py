"""The GPU recurrent layer equals the CPU one: outputs, states and every gradient.

Tiny shapes: in the simulator each launch costs about a millisecond per thread."""
import os

import numpy as np
import pytest

import qlnumba
from helpers import assert_close, make_rng, random_state

SWITCHES = [(False, False), (True, False), (False, True), (True, True)]
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("psug,hgr", SWITCHES, ids=["lstm", "psug", "hgr", "ql"])
def test_cuda_layer_equals_cpu(psug, hgr, dtype, tol):
    rng = make_rng(60)
    B, T, E, H = 3, 5, 2, 3
    kw = dict(num_layers=1, bidirectional=True, psug=psug, hgr=hgr, block_size=2, dtype=dtype, seed=4)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    for name, p in cpu.params.items():
        p[...] = 0.7 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.array([5, 2, 4])
    state = random_state(cpu, B, rng)
    dout = rng.standard_normal((B, T, 2 * H)).astype(dtype)
    dstate = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in state.items() if k != "n"}
    results = []
    for layer in (cpu, gpu):
        out, final = layer.forward(x, lengths, state)
        dx, grads = layer.backward(dout, dstate)
        results.append((out, final, dx, grads, layer.dstate0))
    (o1, f1, dx1, g1, s1), (o2, f2, dx2, g2, s2) = results
    assert_close(o2, o1, tol, tol, "out")
    assert_close(dx2, dx1, tol, tol, "dx")
    for k in f1:
        assert_close(f2[k], f1[k], tol, tol, f"final {k}")
    for k in s1:
        assert_close(s2[k], s1[k], tol, tol, f"dstate0 {k}")
    for k in g1:
        assert_close(g2[k], g1[k], tol, tol, f"grad {k}")


def test_device_argument_is_checked():
    with pytest.raises(ValueError, match="device"):
        qlnumba.QLLSTM(2, 3, device="tpu")
