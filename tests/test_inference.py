"""Inference (``need_grad=False``) runs its own unit-major kernel (kernels/recurrent_infer.py):
it must give the float64 reference's outputs and final states on 1 and 2 threads, with the
hidden units or the batch rows split, for every switch setting, ragged lengths, reverse
direction, carried state and several step chunks."""
import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qlnumba import layers
from qlnumba.kernels.recurrent_infer import deal_columns, input_chunk_steps, recurrent_infer_rows
from qlnumba.kernels.recurrent_units import CHUNK_MAX
from qlnumba.layers import INFER_ROWS_MIN
from helpers import assert_close, make_rng, random_state
from test_recurrent import SWITCH_IDS, SWITCHES, assert_matches_reference, make_layer, randomize

THREADS = [1, 2] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]
SPLITS = [(n, partition) for n in THREADS for partition in ("units", "rows") if n > 1 or partition == "units"]
SPLIT_IDS = [f"{n}-{partition}" for n, partition in SPLITS]
CHUNK = CHUNK_MAX              # the kernel's steps per chunk for these small batches and inputs


def check_inference(kind, B, T, E, H, K, num_layers, bidirectional, lengths, seed, dtype=np.float64,
                    tol=1e-12):
    rng = make_rng(seed)
    layer = make_layer(kind, E, H, num_layers, bidirectional, K=K, dtype=dtype)
    randomize(layer, rng)
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.asarray(lengths)
    for bb in range(B):                                      # padding must not matter
        x[bb, lengths[bb]:] = 1e3
    state = random_state(layer, B, rng)
    state = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in state.items()}
    out, final = layer.forward(x, lengths, state, need_grad=False)
    assert_matches_reference(layer, x, lengths, state, out, final, tol)


@st.composite
def problems(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 2 * CHUNK + 3))
    return dict(kind=draw(st.sampled_from(SWITCHES)), B=B, T=T,
                E=draw(st.integers(1, 3)), H=draw(st.integers(1, 9)), K=draw(st.integers(1, 5)),
                num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
                lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)),
                seed=draw(st.integers(0, 2 ** 31)))


@pytest.mark.parametrize("n,partition", SPLITS, ids=SPLIT_IDS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])   # threads() each example
@given(pb=problems())
def test_inference_matches_reference(threads, n, partition, pb):
    threads(n, partition)
    check_inference(**pb)


@pytest.mark.parametrize("n,partition", SPLITS, ids=SPLIT_IDS)
@pytest.mark.parametrize("kind", SWITCHES, ids=SWITCH_IDS)
def test_inference_float32_long_ragged(threads, n, partition, kind):
    """Several chunks, rows ending inside and at the edge of a chunk, uneven unit parts."""
    threads(n, partition)
    T = 3 * CHUNK + 5
    assert input_chunk_steps(6, 4, 4) == CHUNK
    check_inference(kind, 6, T, 4, 19, 4, 1, True, [T, 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 17],
                    seed=60, dtype=np.float32, tol=2e-5)


@pytest.mark.parametrize("n", THREADS)
@pytest.mark.parametrize("kind", [(True, True), (False, False)], ids=["ql", "lstm"])
def test_inference_wide_batch_shorter_chunks(threads, n, kind):
    """A batch wide enough for chunks of fewer steps (``input_chunk_steps``: 6 steps with all 80
    columns, 12 with 40), ragged; on 2 threads QL-LSTM splits the rows here (40 per thread),
    LSTM the units."""
    threads(n, "units")
    B, E = 80, 4
    assert input_chunk_steps(B // 2, E, 8) < CHUNK_MAX and B // 2 >= INFER_ROWS_MIN
    assert 1 < input_chunk_steps(B, E, 8) < 15 // 2
    lengths = make_rng(62).integers(1, 16, B)
    check_inference(kind, B, 15, E, 5, 3, 1, True, lengths, seed=63)


@pytest.mark.parametrize("n,partition", SPLITS, ids=SPLIT_IDS)
@pytest.mark.parametrize("kind", [(True, True), (False, False)], ids=["ql", "lstm"])
def test_inference_chunks_of_one_step(threads, n, partition, kind):
    """Inputs wide enough that a chunk holds one step (``input_chunk_steps``), ragged, both
    directions: every step gathers and projects its own inputs."""
    threads(n, partition)
    B, E = 12, 200
    assert input_chunk_steps(B // 2, E, 8) == 1
    lengths = make_rng(64).integers(1, 10, B)
    check_inference(kind, B, 9, E, 5, 3, 1, True, lengths, seed=65)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_inference_split_choice(threads, monkeypatch):
    """Units partition, 2 threads: QL-LSTM splits rows from INFER_ROWS_MIN rows per thread on,
    LSTM always splits units; the rows partition always splits rows."""
    calls = []
    for name in ("recurrent_infer_rows", "recurrent_infer_units"):
        kernel = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *args, k=kernel, name=name: (calls.append(name), k(*args)))
    B = 2 * INFER_ROWS_MIN
    for kind, partition, rows, want in [((True, True), "units", B, "rows"),
                                        ((True, False), "units", B, "rows"),
                                        ((True, True), "units", B - 1, "units"),
                                        ((False, False), "units", B, "units"),
                                        ((False, False), "rows", B, "rows")]:
        threads(2, partition)
        layer = make_layer(kind, 3, 16, 1, False)
        calls.clear()
        layer.forward(np.zeros((rows, 4, 3)), need_grad=False)
        assert calls == ["recurrent_infer_" + want], (kind, partition, rows)


@pytest.mark.parametrize("kind", SWITCHES, ids=SWITCH_IDS)
def test_infer_rows_any_part_count(kind):
    """recurrent_infer_rows with more parts than Numba threads (parts then run one after
    another on a thread, as under TBB) gives the one-part results, every part its own buffers."""
    rng = make_rng(64)
    B, T, E, H = 7, 23, 3, 8
    layer = make_layer(kind, E, H, K=4)
    randomize(layer, rng)
    cell = layer._cells[0][0]
    x = rng.standard_normal((B, T, E))
    lengths = rng.integers(1, T + 1, B)
    state0 = layer._cell_state({k: v[0] for k, v in random_state(layer, B, rng).items()}, B)
    results = {}
    for P in (1, 2, 3, B):
        st_ = {k: v.copy() for k, v in state0.items()}
        out = np.empty((B, T, H))
        recurrent_infer_rows(out, st_["h"], st_["c"], st_["m"], st_["a"], st_["n"], x, lengths,
                             *cell._forward_params(), P)
        results[P] = (out, st_)
    for P in (2, 3, B):
        assert_close(results[P][0], results[1][0], 1e-12, 1e-13, f"out, {P} parts")
        for k in state0:
            assert_close(results[P][1][k], results[1][1][k], 1e-12, 1e-13, f"state {k}, {P} parts")


@settings(deadline=None)
@given(B=st.integers(1, 40), P=st.integers(1, 4), seed=st.integers(0, 2 ** 31))
def test_deal_columns(B, P, seed):
    """Every row goes to exactly one thread, in decreasing length; thread sizes differ by at
    most one row and their total lengths by at most the longest row."""
    lengths = make_rng(seed).integers(1, 100, B)
    order = np.argsort(-lengths, kind="mergesort")
    parts = [deal_columns(order, p, P) for p in range(P)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(B))
    for cols in parts:
        assert np.all(np.diff(lengths[cols]) <= 0)
    sizes = [len(cols) for cols in parts]
    totals = [int(lengths[cols].sum()) for cols in parts]
    assert max(sizes) - min(sizes) <= 1
    assert max(totals) - min(totals) <= lengths.max()


@pytest.mark.parametrize("kind", SWITCHES, ids=SWITCH_IDS)
def test_inference_equals_training_forward(threads, kind):
    """The saving forward and the inference kernel compute the same model."""
    rng = make_rng(61)
    B, T, E, H = 4, 21, 3, 10
    layer = make_layer(kind, E, H, 2, True, K=3)
    randomize(layer, rng)
    x = rng.standard_normal((B, T, E))
    lengths = np.array([21, 5, 13, 20])
    state = random_state(layer, B, rng)
    for n in THREADS:
        threads(n, "units")
        out, final = layer.forward(x, lengths, state)
        out_i, final_i = layer.forward(x, lengths, state, need_grad=False)
        assert_close(out_i, out, 1e-12, 1e-13, "out")
        for k in final:
            assert_close(final_i[k], final[k], 1e-12, 1e-13, f"state {k}")
