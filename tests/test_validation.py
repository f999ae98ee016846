"""Bad input gets a clear ValueError, never a Numba traceback or a silent wrong answer."""
import numpy as np
import pytest

import qlnumba


@pytest.fixture(params=["ql", "lstm", "gru"])
def layer(request):
    if request.param == "gru":
        return qlnumba.GRU(3, 4, dtype=np.float64, seed=0)
    psug = hgr = request.param == "ql"
    return qlnumba.QLLSTM(3, 4, psug=psug, hgr=hgr, block_size=2, dtype=np.float64, seed=0)


def x_ok(B=2, T=5):
    return np.zeros((B, T, 3))


@pytest.mark.parametrize("x,match", [
    (np.zeros((5, 3)), "3 dimensions"),
    (np.zeros((2, 5, 3), np.float32), "dtype float64"),
    (np.zeros((2, 5, 3), np.int64), "dtype float64"),
    (np.zeros((2, 5, 4)), "axis 2 must be 3"),
    (np.zeros((0, 5, 3)), "empty"),
    (np.zeros((2, 0, 3)), "empty"),
    ([[[0.0] * 3]], "numpy array"),
])
def test_bad_x(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(x)


def test_nan_and_inf_in_x(layer):
    for bad in (np.nan, np.inf):
        x = x_ok()
        x[1, 2, 0] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            layer.forward(x)


@pytest.mark.parametrize("lengths,match", [
    ([5, 0], r"\[1, 5\]"), ([6, 5], r"\[1, 5\]"), ([-1, 2], r"\[1, 5\]"),
    ([5], "shape"), ([2.0, 3.0], "integers"),
])
def test_bad_lengths(layer, lengths, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(x_ok(), np.array(lengths))


def test_bad_state(layer):
    state = layer.initial_state(2)
    with pytest.raises(ValueError, match="keys"):
        layer.forward(x_ok(), None, {"h": state["h"]} if len(state) > 1 else {})
    wrong = dict(state, h=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="shape"):
        layer.forward(x_ok(), None, wrong)
    if "n" in state:
        with pytest.raises(ValueError, match="block"):
            layer.forward(x_ok(), None, dict(state, n=np.full((1, 2), 2)))


def test_rng_that_is_not_a_generator(layer):
    """forward(rng=3) failed deep inside with AttributeError (with dropout) or passed
    silently (without); a Generator or None is what it takes."""
    for bad in (3, np.random.RandomState(0), "seed"):
        with pytest.raises(ValueError, match="rng must be None or a numpy Generator"):
            layer.forward(x_ok(), rng=bad)
    stacked = type(layer)(3, 4, num_layers=2, dropout=0.5, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match="rng must be None or a numpy Generator"):
        stacked.forward(x_ok(), rng=7)


def test_backward_before_forward_and_bad_dout(layer):
    with pytest.raises(ValueError, match="before forward"):
        layer.backward(np.zeros((2, 5, 4)))
    layer.forward(x_ok())
    with pytest.raises(ValueError, match="shape"):
        layer.backward(np.zeros((2, 5, 3)))
    layer.forward(x_ok(), need_grad=False)                  # inference saves nothing
    with pytest.raises(ValueError, match="need_grad=False"):
        layer.backward(np.zeros((2, 5, 4)))
    layer.forward(x_ok())
    with pytest.raises(ValueError, match="dstate keys"):
        layer.backward(np.zeros((2, 5, 4)), {"zz": np.zeros((1, 2, 4))})


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=0, hidden_size=4), "input_size"),
    (dict(input_size=3, hidden_size=2.5), "hidden_size"),
    (dict(input_size=3, hidden_size=4, num_layers=0), "num_layers"),
    (dict(input_size=3, hidden_size=4, block_size=0), "block_size"),
    (dict(input_size=3, hidden_size=4, dtype=np.int32), "dtype"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        qlnumba.QLLSTM(**kwargs)


@pytest.mark.parametrize("name,value,match", [
    ("hidden_size", None, "hidden_size must be an integer >= 1, got None"),
    ("num_layers", np.inf, "num_layers must be an integer >= 1, got inf"),
    ("block_size", None, "block_size must be an integer >= 1, got None"),
    ("dtype", "x", "dtype must be float32 or float64, got 'x'"),
    ("dtype", 1.5, "dtype must be float32 or float64, got 1.5"),
    ("dtype", True, "dtype must be float32 or float64, got True"),
    ("seed", 1.5, "seed must be None, an integer >= 0 or a numpy Generator, got 1.5"),
    ("seed", "x", "seed must be None, an integer >= 0 or a numpy Generator, got 'x'"),
    ("seed", -1, "seed must be None, an integer >= 0 or a numpy Generator, got -1"),
    ("seed", True, "seed must be None, an integer >= 0 or a numpy Generator, got True"),
])
def test_every_constructor_refuses_a_bad_size_dtype_or_seed(name, value, match):
    """Each of these was a TypeError (int(None) in the models' config, np.dtype('x'),
    default_rng(1.5)) or, for a bool, taken as a number."""
    builds = [lambda **kw: qlnumba.QLLSTM(**dict(dict(input_size=3, hidden_size=4), **kw)),
              lambda **kw: qlnumba.GRU(**dict(dict(input_size=3, hidden_size=4), **kw)),
              lambda **kw: qlnumba.SequenceClassifier(5, **kw),
              lambda **kw: qlnumba.LanguageModel(5, **kw)]
    for build in builds:
        if name == "block_size" and build is builds[1]:
            continue                                         # GRU has no block memory
        with pytest.raises(ValueError, match=match):
            build(**{name: value})
    for seed in (None, 0, np.int64(3), np.random.default_rng(0)):
        qlnumba.QLLSTM(3, 4, seed=seed)
    if name == "seed":
        with pytest.raises(ValueError, match=match.replace("seed", "random_state", 1)):
            qlnumba.QLLSTMClassifier(random_state=value).fit(["a", "b"], [0, 1])


def test_every_real_valued_argument_follows_one_rule():
    """lr, clip, dropout and temperature share ``validate.is_real``: numpy's numbers are
    taken, a bool, NaN or inf is refused, each with a ValueError naming the argument."""
    from qlnumba.validate import is_real
    assert all(is_real(v) for v in (1, 0.5, np.float32(0.25), np.int64(3), -2.0))
    assert not any(is_real(v) for v in (True, np.bool_(True), np.nan, np.inf, "1", None, [1.0]))
    params, lm = {"w": np.zeros(2)}, qlnumba.LanguageModel(5, embed_dim=2, hidden_size=2, seed=0)
    calls = {
        "lr": lambda v: qlnumba.Adam(params, lr=v),
        "clip_norm": lambda v: qlnumba.Adam(params, clip_norm=v),
        "embed_dropout": lambda v: qlnumba.SequenceClassifier(5, embed_dim=2, hidden_size=2, embed_dropout=v),
        "temperature": lambda v: lm.generate(np.array([1]), 1, np.random.default_rng(0), temperature=v),
    }
    for name, call in calls.items():
        call(np.float32(0.25))
        for bad in (True, np.nan, np.inf):
            with pytest.raises(ValueError, match=name):
                call(bad)
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        lm.generate(np.array([1]), True, np.random.default_rng(0))
