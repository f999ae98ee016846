"""The GPU recurrent layer equals the CPU one: outputs, states and every gradient.

Tiny shapes: in the simulator each launch costs about a millisecond per thread."""
import os

import numpy as np
import pytest

import qlnumba
from helpers import assert_close, make_rng, random_state

SWITCHES = [(False, False), (True, False), (False, True), (True, True)]
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@pytest.mark.parametrize("path", ["persistent", "simple"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("psug,hgr", SWITCHES, ids=["lstm", "psug", "hgr", "ql"])
def test_cuda_layer_equals_cpu(psug, hgr, dtype, tol, path):
    """Both GPU step loops: the persistent cooperative kernel (in the simulator: one block,
    grid-stride loops) and the simple per-step launches it is checked against."""
    rng = make_rng(60)
    B, T, E, H = 3, 5, 2, 3
    kw = dict(num_layers=1, bidirectional=True, psug=psug, hgr=hgr, block_size=2, dtype=dtype, seed=4)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    for row in gpu._cells:
        for cell in row:
            cell.path = path
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


@pytest.mark.parametrize("psug,hgr", [(False, False), (True, True)], ids=["lstm", "ql"])
def test_persistent_wide_layer_equals_cpu(psug, hgr):
    """H = 14: every part holds several units and team_dot's four-k passes run (the tiny
    shapes above only reach its remainder loop); K = 1 closes a block at every step."""
    rng = make_rng(63)
    B, T, E, H = 3, 3, 2, 14
    kw = dict(psug=psug, hgr=hgr, block_size=1, dtype=np.float64, seed=7)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    assert gpu._cells[0][0]._plan(gpu._cells[0][0].cpu._p("U", 2).shape[0]) is not None
    for name, p in cpu.params.items():
        p[...] = 0.5 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E))
    lengths = np.array([3, 1, 2])
    dout = rng.standard_normal((B, T, H))
    results = []
    for layer in (cpu, gpu):
        out, final = layer.forward(x, lengths)
        dx, grads = layer.backward(dout)
        results.append((out, final, dx, grads))
    (o1, f1, dx1, g1), (o2, f2, dx2, g2) = results
    assert_close(o2, o1, 1e-10, 1e-10, "out")
    assert_close(dx2, dx1, 1e-10, 1e-10, "dx")
    for k in f1:
        assert_close(f2[k], f1[k], 1e-10, 1e-10, f"final {k}")
    for k in g1:
        assert_close(g2[k], g1[k], 1e-10, 1e-10, f"grad {k}")


def test_device_argument_is_checked():
    with pytest.raises(ValueError, match="device"):
        qlnumba.QLLSTM(2, 3, device="tpu")
    from qlnumba.gpu.recurrent import CudaQLCell
    with pytest.raises(ValueError, match="path"):
        CudaQLCell(qlnumba.QLLSTM(2, 3)._cells[0][0], path="fast")


def test_cuda_model_equals_cpu_model():
    """A whole classifier (embedding, QL-LSTM on the device, head): the same loss and gradients."""
    rng = make_rng(61)
    kw = dict(embed_dim=2, hidden_size=3, kind="ql", block_size=2, dtype=np.float64, seed=5)
    cpu = qlnumba.SequenceClassifier(9, **kw)
    gpu = qlnumba.SequenceClassifier(9, device="cuda", **kw)
    ids = rng.integers(1, 9, (2, 4))
    lengths = np.array([4, 3])
    targets = np.array([1, 0])
    loss_c, _ = cpu.forward(ids, lengths, targets)
    loss_g, _ = gpu.forward(ids, lengths, targets)
    assert abs(loss_c - loss_g) < 1e-10
    gc, gg = cpu.backward(), gpu.backward()
    for k in gc:
        assert_close(gg[k], gc[k], 1e-10, 1e-10, k)
    with pytest.raises(ValueError, match="device"):
        qlnumba.SequenceClassifier(9, kind="gru", device="gpu")


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_cuda_gru_equals_cpu(dtype, tol):
    rng = make_rng(62)
    B, T, E, H = 3, 5, 2, 3
    kw = dict(num_layers=1, bidirectional=True, dtype=dtype, seed=6)
    cpu = qlnumba.GRU(E, H, **kw)
    gpu = qlnumba.GRU(E, H, device="cuda", **kw)
    for name, p in cpu.params.items():
        p[...] = 0.7 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.array([5, 2, 4])
    state = {"h": (0.5 * rng.standard_normal((2, B, H))).astype(dtype)}
    dout = rng.standard_normal((B, T, 2 * H)).astype(dtype)
    dstate = {"h": rng.standard_normal((2, B, H)).astype(dtype)}
    results = []
    for layer in (cpu, gpu):
        out, final = layer.forward(x, lengths, state)
        dx, grads = layer.backward(dout, dstate)
        results.append((out, final["h"], dx, grads, layer.dstate0["h"]))
    (o1, f1, dx1, g1, s1), (o2, f2, dx2, g2, s2) = results
    for got, want, what in ((o2, o1, "out"), (f2, f1, "final h"), (dx2, dx1, "dx"), (s2, s1, "dstate0")):
        assert_close(got, want, tol, tol, what)
    for k in g1:
        assert_close(g2[k], g1[k], tol, tol, f"grad {k}")
