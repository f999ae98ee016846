"""Embedding, linear softmax cross-entropy head and AdamW: kernels vs reference and gradients."""
import numpy as np
import pytest

from helpers import assert_close, make_rng, numeric_grad
import reference
from qlnumba.kernels.blas import gemm_njit
from qlnumba.kernels.embedding import embedding_backward, embedding_forward
from qlnumba.kernels.head import linear_xent_backward, linear_xent_forward
from qlnumba.kernels.adam import sum_of_squares, sum_of_squares_split
from qlnumba.optim import SPLIT_MIN, Adam, NonFiniteGradients, global_norm


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_forward_and_scatter_add(dtype):
    rng = make_rng(10)
    V, E = 6, 3
    table = rng.standard_normal((V, E)).astype(dtype)
    ids = np.array([[1, 5, 5, 0], [2, 1, 0, 0]], dtype=np.int64)
    out = np.empty((2, 4, E), dtype)
    embedding_forward(out, ids, table)
    assert_close(out, reference.embedding(ids, table), 1e-7, 0, "embedding")
    dout = rng.standard_normal(out.shape).astype(dtype)
    dtable = np.zeros_like(table)
    embedding_backward(dtable, dout, ids)
    assert (dtable[0] == 0).all()                              # padding gets no gradient
    assert_close(dtable[5], dout[0, 1] + dout[0, 2], 1e-6, 1e-6, "repeated id sums")
    assert_close(dtable[1], dout[0, 0] + dout[1, 1], 1e-6, 1e-6, "id 1")
    assert (dtable[[3, 4]] == 0).all()


def test_head_matches_reference_and_finite_differences():
    rng = make_rng(11)
    N, D, C = 5, 4, 3
    h = rng.standard_normal((N, D))
    W = rng.standard_normal((C, D))
    b = rng.standard_normal(C)
    targets = rng.integers(0, C, N)

    def loss():
        probs, losses = np.empty((N, C)), np.empty(N)
        linear_xent_forward(probs, losses, h, targets, W, b)
        return losses.mean()

    want, want_probs = reference.linear_xent(h, targets, W, b)
    probs, losses = np.empty((N, C)), np.empty(N)
    linear_xent_forward(probs, losses, h, targets, W, b)
    assert_close(probs, want_probs, 1e-12, 1e-14, "probs")
    assert abs(losses.mean() - want) < 1e-12
    dh, dW, db = np.zeros_like(h), np.zeros_like(W), np.zeros_like(b)
    linear_xent_backward(dh, dW, db, probs, h, targets, W, np.full(N, 1.0 / N))
    for got, arr, name in ((dh, h, "h"), (dW, W, "W"), (db, b, "b")):
        assert_close(got, numeric_grad(loss, arr), 1e-6, 1e-9, name)
    weights = rng.uniform(0, 2, N) / N              # each row's own share: a weighted mean

    def weighted_loss():
        probs, losses = np.empty((N, C)), np.empty(N)
        linear_xent_forward(probs, losses, h, targets, W, b)
        return losses @ weights
    dh, dW, db = np.zeros_like(h), np.zeros_like(W), np.zeros_like(b)
    linear_xent_backward(dh, dW, db, probs, h, targets, W, weights)
    for got, arr, name in ((dh, h, "h"), (dW, W, "W"), (db, b, "b")):
        assert_close(got, numeric_grad(weighted_loss, arr), 1e-6, 1e-9, f"weighted {name}")


def test_head_is_stable_for_huge_logits():
    h = np.array([[1000.0, -1000.0]])
    W = np.eye(2)
    probs, losses = np.empty((1, 2)), np.empty(1)
    linear_xent_forward(probs, losses, h, np.array([1]), W, np.zeros(2))
    assert np.isfinite(losses).all() and np.isfinite(probs).all()


def test_adam_hand_worked_step():
    # t=1: m = 0.1*0.5, v = 0.001*0.25, m̂ = 0.5, v̂ = 0.25, update = 0.5/0.5 = 1
    p = np.array([1.0])
    opt = Adam({"p": p}, lr=0.1, eps=0.0)
    opt.step({"p": np.array([0.5])})
    assert p[0] == pytest.approx(0.9, abs=1e-12)
    q = np.array([[1.0]])                                    # a matrix, so weight decay applies
    Adam({"q": q}, lr=0.1, eps=0.0, weight_decay=0.1).step({"q": np.array([[0.5]])})
    assert q[0, 0] == pytest.approx(1 - 0.1 * (1 + 0.1 * 1.0), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_matches_reference_over_steps(dtype):
    rng = make_rng(12)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(7)]
    p = p0.astype(dtype)
    opt = Adam({"w": p}, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)
    for g in grads:
        opt.step({"w": g.astype(dtype)})
    want = reference.adamw(p0, grads, 0.01, 0.8, 0.99, 1e-6, 0.05)
    assert opt.t == 7
    assert_close(p, want, 1e-5 if dtype == np.float32 else 1e-12, 1e-6, "adam")


def test_weight_decay_skips_vectors():
    b = np.ones(3)
    Adam({"b": b}, lr=0.1, weight_decay=0.5).step({"b": np.zeros(3)})
    assert (b == 1).all()


def test_clipping_scales_by_the_global_norm():
    rng = make_rng(13)
    g = {"a": rng.standard_normal(5) * 10, "b": rng.standard_normal((2, 2)) * 10}
    norm = np.sqrt(sum((v ** 2).sum() for v in g.values()))
    assert global_norm(g) == pytest.approx(norm)
    p_clip = {k: np.zeros_like(v) for k, v in g.items()}
    p_ref = {k: np.zeros_like(v) for k, v in g.items()}
    returned = Adam(p_clip, lr=0.1, betas=(0.5, 0.5), clip_norm=1.0).step(g)
    assert returned == pytest.approx(norm)
    Adam(p_ref, lr=0.1, betas=(0.5, 0.5)).step({k: v / norm for k, v in g.items()})
    for k in g:
        assert_close(p_clip[k], p_ref[k], 1e-12, 1e-12, f"clipped {k}")


def test_adam_refuses_nan_gradients_and_leaves_params():
    p = np.ones(2)
    opt = Adam({"p": p})
    with pytest.raises(NonFiniteGradients, match="NaN"):        # a ValueError
        opt.step({"p": np.array([np.nan, 1.0])})
    assert (p == 1).all() and opt.t == 0
    with pytest.raises(ValueError, match="keys"):
        opt.step({"q": np.ones(2)})


@pytest.mark.parametrize("kwargs,message", [
    # NaN or inf lr and weight decay were taken, and the first step made every parameter NaN
    (dict(lr=float("inf")), "lr must be a finite number > 0, got inf"),
    (dict(weight_decay=float("nan")), "weight_decay must be a finite number >= 0, got nan"),
    (dict(weight_decay=float("inf")), "weight_decay must be a finite number >= 0, got inf"),
    # these were TypeError or IndexError
    (dict(lr="0.1"), "lr must be a finite number > 0, got '0.1'"),
    (dict(betas=(0.9,)), r"betas must be two numbers in \[0, 1\), got \(0.9,\)"),
    (dict(betas=(0.9, 1.0)), r"betas must be two numbers in \[0, 1\)"),
    (dict(eps=float("nan")), "eps must be a finite number >= 0, got nan"),
    (dict(clip_norm="5"), "clip_norm must be None or a finite number > 0, got '5'"),
    (dict(clip_norm=0), "clip_norm must be None or a finite number > 0, got 0"),
])
def test_adam_refuses_bad_constants(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adam({"p": np.ones(2)}, **kwargs)


def test_adam_refuses_what_is_not_a_dict_of_arrays():
    with pytest.raises(ValueError, match="Adam needs a dict of parameter arrays"):
        Adam([np.ones(2)])
    opt = Adam({"p": np.ones(2)})
    with pytest.raises(ValueError, match="grads must be a dict name -> array, got list"):
        opt.step([np.ones(2)])
    with pytest.raises(ValueError, match="grad 'p' must be a numpy array, got list"):
        opt.step({"p": [1.0, 1.0]})


def test_adam_state_is_checked_before_any_of_it_is_taken():
    """load_state_dict raised KeyError on a foreign state, cast another dtype silently,
    took NaN, and wrote m before finding a bad v.  Now each is a ValueError, and a refused
    state leaves t, m and v as they were."""
    params = {"a": np.ones((2, 3)), "b": np.ones(4)}
    source = Adam({k: v.copy() for k, v in params.items()})
    source.step({k: np.full_like(v, 0.5) for k, v in params.items()})
    good = source.state_dict()
    bad_states = [
        ({"x": np.ones(1)}, "missing"),
        ({k: v for k, v in good.items() if k != "v/b"}, r"missing \['v/b'\]"),
        (dict(good, **{"m/c": np.ones(1)}), r"extra \['m/c'\]"),
        (dict(good, t=np.array(-1)), "t must be an integer >= 0"),
        (dict(good, t=np.array(1.5)), "t must be an integer >= 0"),
        (dict(good, t=np.array([1, 2])), "t must be an integer >= 0"),
        (dict(good, **{"m/a": np.ones(3)}), "m/a is float64 \\(3,\\), expected float64 \\(2, 3\\)"),
        (dict(good, **{"m/a": np.ones((2, 3), np.float32)}), "m/a is float32"),
        (dict(good, **{"v/b": np.array([1.0, np.nan, 1.0, 1.0])}), "v/b holds NaN, inf or negative"),
        (dict(good, **{"v/b": -np.ones(4)}), "v/b holds NaN, inf or negative"),
        (dict(good, **{"m/b": np.full(4, np.inf)}), "m/b holds NaN, inf"),
    ]
    opt = Adam(params)
    for state, match in bad_states:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(state)
        assert opt.t == 0 and all((opt.m[k] == 0).all() and (opt.v[k] == 0).all() for k in params)
    opt.load_state_dict(good)
    assert opt.t == 1 and all((opt.m[k] == source.m[k]).all() and (opt.v[k] == source.v[k]).all()
                              for k in params)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_on_strided_views(dtype, trans_a, trans_b, accumulate):
    """kernels.blas.gemm on column blocks of larger arrays (rows contiguous, row stride > width)."""
    rng = make_rng(70)
    m, n, k = 5, 7, 9
    A = rng.standard_normal((20, 30)).astype(dtype)[2:2 + (k if trans_a else m), 3:3 + (m if trans_a else k)]
    B = rng.standard_normal((25, 40)).astype(dtype)[1:1 + (n if trans_b else k), 4:4 + (k if trans_b else n)]
    big = rng.standard_normal((10, 12)).astype(dtype)
    C = big[2:2 + m, 1:1 + n]
    want = (A.T if trans_a else A) @ (B.T if trans_b else B) + (C if accumulate else 0)
    outside = big.copy()
    gemm_njit(C, A, B, trans_a, trans_b, accumulate)
    assert_close(C, want, 1e-5 if dtype == np.float32 else 1e-12, 1e-6 if dtype == np.float32 else 1e-13, "C")
    outside[2:2 + m, 1:1 + n] = big[2:2 + m, 1:1 + n]
    np.testing.assert_array_equal(big, outside)    # nothing outside C's view was written


def test_gemm_empty_inner_dimension():
    C = np.ones((3, 2))
    gemm_njit(C, np.zeros((3, 0)), np.zeros((0, 2)), False, False, True)
    np.testing.assert_array_equal(C, 1.0)          # C += nothing
    gemm_njit(C, np.zeros((3, 0)), np.zeros((0, 2)), False, False, False)
    np.testing.assert_array_equal(C, 0.0)          # C = empty product


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1001])
def test_sum_of_squares_over_eight_running_sums(size):
    g = make_rng(71).standard_normal(size).astype(np.float32)
    assert sum_of_squares(g) == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-12, abs=0)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1001, 70_001])
def test_sum_of_squares_in_eight_parts(size, threads):
    """The large tensors' sum (global_norm): eight parts, the same bits on 1 and 2 threads."""
    g = make_rng(73).standard_normal(size).astype(np.float32)
    sums = []
    for n in (1, 2):
        threads(n)
        sums.append(sum_of_squares_split(g))
    assert sums[0] == sums[1]
    assert sums[0] == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-12, abs=0)


def test_adam_split_over_threads_equals_one_thread(threads):
    """Adam's step on a big tensor runs on every thread (blocks), with the same results."""
    rng = make_rng(72)
    params = {"big": rng.standard_normal((300, 257)).astype(np.float32),
              "small": rng.standard_normal(10).astype(np.float32)}
    grads = [{k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()}
             for _ in range(3)]
    results = []
    for n in (1, 2):
        threads(n)
        ps = {k: p.copy() for k, p in params.items()}
        opt = Adam(ps, lr=1e-2, weight_decay=0.1, clip_norm=5.0)
        for g in grads:
            opt.step(g)
        results.append(ps)
    assert params["big"].size >= SPLIT_MIN
    for k in params:
        np.testing.assert_array_equal(results[1][k], results[0][k])
