"""QLLSTM (all four switch settings) and GRU: kernels vs the float64 reference,
gradients vs central differences, batch and chunk invariances."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import qlnumba
from helpers import assert_close, make_rng, numeric_grad, random_state
from reference import gru_row, ql_row, stack

SWITCHES = [(False, False), (True, False), (False, True), (True, True)]   # (psug, hgr)
SWITCH_IDS = ["lstm", "psug", "hgr", "ql"]


def make_layer(kind, E, H, num_layers=1, bidirectional=False, K=3, dtype=np.float64, seed=0):
    if kind == "gru":
        return qlnumba.GRU(E, H, num_layers, bidirectional, dtype=dtype, seed=seed)
    psug, hgr = kind
    return qlnumba.QLLSTM(E, H, num_layers, bidirectional, psug=psug, hgr=hgr, block_size=K,
                          dtype=dtype, seed=seed)


def reference_forward(layer, x, lengths, state, masks=None):
    if isinstance(layer, qlnumba.GRU):
        row = gru_row
    else:
        row = lambda xr, L, p, s, rev: ql_row(xr, L, p, s, layer.block_size, layer.psug, layer.hgr, rev)
    return stack(row, x, lengths, layer.params, state, layer.num_layers, layer.directions, masks)


def randomize(layer, rng, scale=0.6):
    """Parameters away from their tidy initial values, so every path is exercised."""
    for p in layer.params.values():
        p[...] = scale * rng.standard_normal(p.shape)


KINDS = SWITCHES + ["gru"]
KIND_IDS = SWITCH_IDS + ["gru"]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_forward_matches_reference(kind, dtype, tol):
    rng = make_rng(1)
    B, T, E, H = 4, 11, 3, 5
    layer = make_layer(kind, E, H, num_layers=2, bidirectional=True, K=3, dtype=dtype)
    randomize(layer, rng)
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.array([11, 1, 7, 9])
    state = random_state(layer, B, rng)
    out, final = layer.forward(x, lengths, state)
    assert_matches_reference(layer, x, lengths, state, out, final, tol)


def assert_matches_reference(layer, x, lengths, state, out, final, tol, masks=None):
    """``out, final`` from ``layer.forward(x, lengths, state)``: the reference's, zero past each
    row (``masks``: the dropout masks between layers, see ``reference.stack``)."""
    want_out, want_final = reference_forward(layer, x, lengths, state, masks)
    assert out.dtype == x.dtype
    assert_close(out, want_out, tol, tol, "out")
    for key in final:
        assert_close(final[key], want_final[key], tol, tol, f"state {key}")
    for bb, L in enumerate(lengths):
        assert (out[bb, L:] == 0).all()


@st.composite
def problems(draw, kinds=KINDS):
    kind = draw(st.sampled_from(kinds))
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 6))
    return dict(kind=kind, B=B, T=T,
                E=draw(st.integers(1, 3)), H=draw(st.integers(1, 3)),
                K=draw(st.integers(1, 4)),
                num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)),
                seed=draw(st.integers(0, 2 ** 31)))


def run_gradcheck(pb, dropout=0.0):
    """Gradients of every parameter, x and the initial state against central differences;
    with ``dropout``, the masks between layers are the same at every call (a fresh
    Generator with one seed)."""
    rng = make_rng(pb["seed"])
    layer = make_layer(pb["kind"], pb["E"], pb["H"], pb["num_layers"], pb["bidirectional"], pb["K"])
    layer.dropout = dropout
    randomize(layer, rng)
    B, T = pb["B"], pb["T"]
    x = rng.standard_normal((B, T, pb["E"]))
    lengths = np.array(pb["lengths"])
    state = random_state(layer, B, rng)
    masks_rng = (lambda: np.random.default_rng(pb["seed"] + 1)) if dropout else (lambda: None)
    out, final = layer.forward(x, lengths, state, rng=masks_rng())
    R = rng.standard_normal(out.shape)                       # loss = <R, out> + Σ <R_k, final_k>
    R_state = {k: rng.standard_normal(final[k].shape) for k in layer.state_keys}

    def loss():
        o, f = layer.forward(x, lengths, state, rng=masks_rng())
        return (R * o).sum() + sum((R_state[k] * f[k]).sum() for k in layer.state_keys)

    layer.forward(x, lengths, state, rng=masks_rng())
    dx, grads = layer.backward(R, R_state)
    dstate0 = layer.dstate0
    assert set(grads) == set(layer.params)
    for name, p in layer.params.items():
        assert_close(grads[name], numeric_grad(loss, p), 1e-5, 1e-7, name)
    assert_close(dx, numeric_grad(loss, x), 1e-5, 1e-7, "x")
    for k in layer.state_keys:
        assert_close(dstate0[k], numeric_grad(loss, state[k]), 1e-5, 1e-7, f"initial state {k}")


@given(problems(SWITCHES))
def test_gradients_qllstm(pb):
    run_gradcheck(pb)


@given(problems(["gru"]))
def test_gradients_gru(pb):
    run_gradcheck(pb)


@given(problems(), st.integers(2, 3), st.sampled_from([0.3, 0.7]))
def test_gradients_with_dropout_between_layers(pb, num_layers, p):
    run_gradcheck(dict(pb, num_layers=num_layers), dropout=p)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_dropout_between_layers_matches_reference(kind):
    """dropout p: while training (rng given) layer k reads layer k-1's output times a mask
    drawn from rng in layer order (0, or 65536 / (65536 - θ) with θ = round(65536 p): see
    ``layers.DropoutMask``); without rng nothing is dropped."""
    rng = make_rng(11)
    B, T, E, H, p = 4, 7, 3, 4, 0.4
    layer = make_layer(kind, E, H, num_layers=3, bidirectional=True, K=3)
    layer.dropout = p
    randomize(layer, rng)
    x = rng.standard_normal((B, T, E))
    lengths = np.array([7, 1, 4, 6])
    state = random_state(layer, B, rng)
    out, final = layer.forward(x, lengths, state, rng=np.random.default_rng(5))
    draw = np.random.default_rng(5)             # 16-bit draws, kept where >= p * 65536 (rounded)
    masks = [(draw.integers(0, 65536, (B, T, 2 * H), dtype=np.uint16) >= round(p * 65536))
             * (65536 / (65536 - round(p * 65536))) for _ in range(2)]
    assert_matches_reference(layer, x, lengths, state, out, final, 1e-12, masks)
    assert 0 < sum((m == 0).sum() for m in masks) < 2 * B * T * 2 * H
    plain, _ = layer.forward(x, lengths, state)               # evaluation: no masks
    assert_matches_reference(layer, x, lengths, state, plain, layer.forward(x, lengths, state)[1], 1e-12)
    assert not np.allclose(plain, out)


def test_dropout_between_layers_is_checked():
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\)"):
        qlnumba.QLLSTM(3, 4, num_layers=2, dropout=1.0)
    with pytest.raises(ValueError, match="dropout"):
        qlnumba.GRU(3, 4, num_layers=2, dropout="0.5")
    with pytest.warns(UserWarning, match="num_layers=1"):
        qlnumba.QLLSTM(3, 4, dropout=0.5)
    with pytest.raises(ValueError, match="layer_dropout"):
        qlnumba.SequenceClassifier(10, num_layers=2, layer_dropout=-0.1)
    with pytest.raises(ValueError, match="layer_dropout"):
        qlnumba.LanguageModel(10, num_layers=2, layer_dropout=float("nan"))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_gradient_long_blocks_partial_final_block(kind):
    """K=4 over 10 steps: two closed blocks and a partial one, rows of 1, 4, 9, 10 steps."""
    run_gradcheck(dict(kind=kind, B=4, T=10, E=2, H=2, K=4, num_layers=1, bidirectional=True,
                       lengths=[10, 1, 4, 9], seed=7))


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_row_alone_equals_row_in_padded_batch(kind):
    rng = make_rng(3)
    B, T, E, H = 5, 9, 3, 4
    layer = make_layer(kind, E, H, num_layers=2, bidirectional=True, K=2)
    randomize(layer, rng)
    lengths = np.array([9, 2, 5, 1, 7])
    x = rng.standard_normal((B, T, E))
    for bb in range(B):
        x[bb, lengths[bb]:] = rng.standard_normal((T - lengths[bb], E)) * 100   # padding is ignored
    dout = rng.standard_normal((B, T, 2 * H))
    out, _ = layer.forward(x, lengths)
    dx, grads = layer.backward(dout)
    perm = rng.permutation(B)
    out_p, _ = layer.forward(x[perm], lengths[perm])
    dx_p, grads_p = layer.backward(dout[perm])
    assert_close(out_p, out[perm], 1e-12, 1e-12, "permuted out")
    assert_close(dx_p, dx[perm], 1e-12, 1e-12, "permuted dx")
    total = {k: np.zeros_like(v) for k, v in grads.items()}
    for bb in range(B):
        L = lengths[bb]
        o1, _ = layer.forward(x[bb:bb + 1, :L], None)
        dx1, g1 = layer.backward(np.ascontiguousarray(dout[bb:bb + 1, :L]))
        assert_close(o1[0], out[bb, :L], 1e-12, 1e-12, f"row {bb} out")
        assert_close(dx1[0], dx[bb, :L], 1e-12, 1e-12, f"row {bb} dx")
        assert (dx[bb, L:] == 0).all()
        for k in total:
            total[k] += g1[k]
    for k in total:
        assert_close(grads[k], total[k], 1e-10, 1e-12, f"sum of per-row grads {k}")


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_chunks_with_carried_state_equal_one_call(kind):
    """Streaming: chunk 1 (all rows 6 steps) then chunk 2 (ragged) equals one call, grads included."""
    rng = make_rng(4)
    B, E, H, T1 = 3, 2, 3, 6
    lengths = np.array([13, 8, 7])
    T = lengths.max()
    whole, first, second = (make_layer(kind, E, H, num_layers=2, K=4) for _ in range(3))
    randomize(whole, rng)
    for layer in (first, second):
        for k, v in whole.params.items():
            layer.params[k][...] = v
    x = rng.standard_normal((B, T, E))
    dout = rng.standard_normal((B, T, H))
    state = random_state(whole, B, rng)
    out, final = whole.forward(x, lengths, state)
    dx, grads = whole.backward(dout)

    out1, mid = first.forward(x[:, :T1].copy(), None, state)
    out2, final2 = second.forward(x[:, T1:].copy(), lengths - T1, mid)
    assert_close(np.concatenate([out1, out2], axis=1), out, 1e-12, 1e-12, "chunked out")
    for k in final:
        assert_close(final2[k], final[k], 1e-12, 1e-12, f"chunked final {k}")
    dx2, g2 = second.backward(dout[:, T1:].copy())
    dx1, g1 = first.backward(dout[:, :T1].copy(), second.dstate0)
    assert_close(np.concatenate([dx1, dx2], axis=1), dx, 1e-10, 1e-12, "chunked dx")
    for k in grads:
        assert_close(g1[k] + g2[k], grads[k], 1e-10, 1e-12, f"chunked grad {k}")


@pytest.mark.parametrize("psug,hgr", SWITCHES, ids=SWITCH_IDS)
def test_parameter_names_shapes_and_counts(psug, hgr):
    E, H = 7, 5
    layer = qlnumba.QLLSTM(E, H, num_layers=2, bidirectional=True, psug=psug, hgr=hgr)
    G = H if psug else 4 * H
    want = {"W": (G, E), "U": (G, H), "b": (G,)}
    if psug:
        want.update(gamma=(4, H), beta=(4, H))
    if hgr:
        want.update(V_s=(H, H), V_m=(H, H), b_r=(H,))
    for prefix, inp in (("l0.", E), ("l0r.", E), ("l1.", 2 * H), ("l1r.", 2 * H)):
        for name, shape in want.items():
            shape = (G, inp) if name == "W" else shape
            assert layer.params[prefix + name].shape == shape
    assert len(layer.params) == 4 * len(want)
    per_dir = [qlnumba.recurrent_param_count(e, H, psug, hgr) for e in (E, E, 2 * H, 2 * H)]
    assert layer.num_params() == sum(per_dir)


def test_param_count_formula_matches_model_md():
    assert qlnumba.recurrent_param_count(512, 512, psug=True, hgr=True) == 1_053_696
    assert qlnumba.recurrent_param_count(512, 512, psug=False, hgr=False) == 2_099_200


def test_seed_makes_initialisation_reproducible():
    a = qlnumba.QLLSTM(3, 4, seed=5).params
    b = qlnumba.QLLSTM(3, 4, seed=5).params
    assert all((a[k] == b[k]).all() for k in a)
