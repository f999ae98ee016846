"""BPTT with vanishing gradients leaves no subnormal values (kernels.activations.flush).

A loss at the last step only, forget gates near 1/2 (GRU: update gates) and a small U (float32;
float64 in SETTINGS): the gradient shrinks at every step, and on its way back over T steps
passes through the subnormal range, where x86 arithmetic is 10-100x slower.  Before the
kernels flushed it, every case below left 14 to 162 subnormal values in δx, the parameter
gradients and the initial state's gradient.
"""
import numba
import numpy as np
import pytest

from qlnumba.kernels.activations import FLUSH32
from helpers import assert_close, make_rng
from test_recurrent import KIND_IDS, KINDS, make_layer

# dtype -> (steps, forget-gate bias, scale of U, V_s and V_m, HGR-ASC gate bias).  float64's
# subnormals lie at 2.2e-308, so there every path back must shrink by ~1e-8 a step; with
# HGR-ASC the last step's gradient reaches the previous block's memory directly (h = ĥ + m)
# and shrinks once a block (by about r = 2e-9), not once a step: 100 blocks of K = 4
SETTINGS = {np.float32: (300, 0.0, 0.1, -3.0), np.float64: (400, -20.0, 1e-8, -20.0)}


def vanishing_problem(kind, dtype, seed):
    T, gate_bias, scale, r_bias = SETTINGS[dtype]
    B, E, H = 4, 2, 8
    rng = make_rng(seed)
    layer = make_layer(kind, E, H, K=4, dtype=dtype)
    p = layer.params
    for name in ("l0.U", "l0.V_s", "l0.V_m"):
        if name in p:
            p[name] *= scale
    if kind == "gru":
        p["l0.b"][H:2 * H] = gate_bias                     # rows r, u, n
    elif kind[0]:
        p["l0.beta"][1] = gate_bias                        # psug: rows i, f, g, o
    else:
        p["l0.b"][H:2 * H] = gate_bias
    if kind != "gru" and kind[1]:
        p["l0.b_r"][:] = r_bias                            # the block memory forgets too
    x = rng.standard_normal((B, T, E))
    lengths = np.array([T, T - 3, T // 2, T // 3])
    dout = np.zeros((B, T, H))
    dout[np.arange(B), lengths - 1] = 1.0                  # the loss at each row's last step
    return layer, x, lengths, dout


def backward(layer, x, lengths, dout):
    layer.forward(x.astype(layer.dtype), lengths)
    dx, grads = layer.backward(dout.astype(layer.dtype))
    return dx, grads, layer.dstate0


def subnormals(arrays):
    return sum(int(np.count_nonzero((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny))) for a in arrays)


PARTITIONS = [(1, "rows"), (2, "rows"),
              pytest.param((2, "units"), marks=pytest.mark.skipif(
                  numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads"))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("partition", PARTITIONS, ids=["serial", "rows", "units"])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_vanishing_gradients_leave_no_subnormals(kind, partition, dtype, threads):
    layer, x, lengths, dout = vanishing_problem(kind, dtype, seed=70)
    threads(*partition)
    dx, grads, dstate0 = backward(layer, x, lengths, dout)
    assert np.mean(dx[0, :20] == 0) > 0.9                 # the gradient did vanish
    assert subnormals([dx, *grads.values(), *dstate0.values()]) == 0


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_flushed_float32_gradients_match_float64(kind, threads):
    """What the flush drops is below float32's reach: the gradients still match float64's,
    to float32's precision plus an absolute 1e-30, ten times the flush level (FLUSH32): a
    dropped value is below it, and in a vanishing backward nothing downstream grows it."""
    assert FLUSH32 < 1e-31
    layer32, x, lengths, dout = vanishing_problem(kind, np.float32, seed=71)
    layer64 = make_layer(kind, 2, 8, K=4, dtype=np.float64)
    for name, p in layer32.params.items():
        layer64.params[name][...] = p
    threads(1)
    dx64, g64, s64 = backward(layer64, x, lengths, dout)
    dx32, g32, s32 = backward(layer32, x, lengths, dout)
    pairs = [("dx", dx32, dx64)] + [(f"grad {k}", g32[k], g64[k]) for k in g64] \
        + [(f"dstate0 {k}", s32[k], s64[k]) for k in s64]
    for what, got, want in pairs:
        assert_close(got, want, 1e-4, 1e-6 * np.abs(want).max() + 1e-30, what)
