"""SequenceClassifier: gradients of the whole model (dropout included) and a short training run."""
import numpy as np
import pytest

import qlnumba
from helpers import assert_close, make_rng, numeric_grad


@pytest.mark.parametrize("num_layers,layer_dropout", [(1, 0.0), (2, 0.4)])
@pytest.mark.parametrize("kind", sorted(qlnumba.MODEL_KINDS))
def test_model_gradients_match_finite_differences(kind, num_layers, layer_dropout):
    model = qlnumba.SequenceClassifier(7, embed_dim=3, hidden_size=3, num_classes=3, kind=kind,
                                       block_size=2, embed_dropout=0.3, head_dropout=0.2,
                                       num_layers=num_layers, layer_dropout=layer_dropout,
                                       dtype=np.float64, seed=1)
    ids = np.array([[1, 2, 3, 4, 5], [6, 1, 0, 0, 0], [2, 2, 2, 0, 0]])
    lengths = np.array([5, 2, 3])
    targets = np.array([0, 2, 1])

    def loss():   # the same dropout masks every call: a fresh Generator with one seed
        return model.forward(ids, lengths, targets, rng=np.random.default_rng(99))[0]

    loss()
    grads = model.backward()
    assert set(grads) == set(model.params)
    assert (grads["embed"][0] == 0).all()
    for name, p in model.params.items():
        assert_close(grads[name], numeric_grad(loss, p), 1e-5, 1e-8, name)


@pytest.mark.parametrize("kind,num_layers,layer_dropout",
                         [("ql", 1, 0.0), ("lstm", 1, 0.0), ("gru", 1, 0.0), ("ql", 2, 0.2),
                          ("biql", 1, 0.0), ("bigru", 1, 0.0)])
def test_short_training_run_loss_falls(kind, num_layers, layer_dropout):
    """Fixed seed, a toy task (is token 3 present?), 60 Adam steps: the loss must fall well
    (also with two layers and dropout between them)."""
    rng = make_rng(21)
    V, B, T = 12, 16, 10
    model = qlnumba.SequenceClassifier(V, embed_dim=8, hidden_size=8, kind=kind, block_size=4, seed=2,
                                       num_layers=num_layers, layer_dropout=layer_dropout)
    opt = qlnumba.Adam(model.params, lr=0.02, clip_norm=5.0)
    ids = rng.integers(4, V, (B, T))
    targets = rng.integers(0, 2, B)
    ids[targets == 1, rng.integers(0, T)] = 3
    lengths = rng.integers(T // 2, T + 1, B)
    for bb in range(B):
        ids[bb, lengths[bb]:] = 0
        if targets[bb]:
            ids[bb, rng.integers(0, lengths[bb])] = 3
    losses = []
    for _ in range(60):
        loss, _ = model.forward(ids, lengths, targets, rng=rng)
        opt.step(model.backward())
        losses.append(loss)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_param_counts_split_into_three_parts():
    model = qlnumba.SequenceClassifier(100, embed_dim=16, hidden_size=8, num_classes=2, kind="ql")
    counts = qlnumba.count_params(model)
    assert counts["embedding"] == 1600
    assert counts["recurrent"] == qlnumba.recurrent_param_count(16, 8)
    assert counts["head"] == 2 * 8 + 2
    assert counts["total"] == sum(p.size for p in model.params.values())
    layer = qlnumba.QLLSTM(16, 8, psug=False, hgr=False)
    assert qlnumba.count_params(layer)["recurrent"] == qlnumba.recurrent_param_count(16, 8, False, False)


def test_model_bad_input():
    model = qlnumba.SequenceClassifier(10, embed_dim=4, hidden_size=4, seed=0)
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward(np.array([[1, 10]]))
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="integer"):
        model.forward(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="empty"):
        model.forward(np.zeros((1, 0), np.int64))
    with pytest.raises(ValueError, match="targets"):
        model.forward(np.array([[1, 2]]), targets=np.array([2]))
    for kind in ("transformer", ["ql"]):                 # a list was a TypeError (unhashable)
        with pytest.raises(ValueError, match="kind must be one of"):
            qlnumba.SequenceClassifier(10, kind=kind)
    with pytest.raises(ValueError, match="forward"):
        qlnumba.SequenceClassifier(10).backward()
    with pytest.raises(ValueError, match="rng must be None or a numpy Generator"):
        model.forward(np.array([[1, 2]]), targets=np.array([1]), rng=0)
    # a float or str size was a TypeError from deep inside, embed_dim=0 was named input_size
    for kwargs, message in [(dict(vocab_size=10.5), "vocab_size must be an integer >= 2, got 10.5"),
                            (dict(vocab_size="10"), "vocab_size must be an integer >= 2, got '10'"),
                            (dict(vocab_size=10, num_classes=2.5), "num_classes must be an integer >= 2"),
                            (dict(vocab_size=10, embed_dim=0), "embed_dim must be an integer >= 1, got 0"),
                            (dict(input_size=0), "input_size must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=message):
            qlnumba.SequenceClassifier(**kwargs)


@pytest.mark.parametrize("kind", ["ql", "bilstm", "gru"])
def test_feature_vector_model_gradients_match_finite_differences(kind):
    """input_size instead of vocab_size: steps are feature vectors, no embedding."""
    model = qlnumba.SequenceClassifier(input_size=2, hidden_size=3, num_classes=3, kind=kind,
                                       block_size=2, embed_dropout=0.3, head_dropout=0.2,
                                       dtype=np.float64, seed=1)
    assert "embed" not in model.params and model.param_counts()["embedding"] == 0
    x = make_rng(5).standard_normal((3, 4, 2))
    x_before = x.copy()
    lengths = np.array([4, 1, 3])
    targets = np.array([0, 2, 1])

    def loss():
        return model.forward(x, lengths, targets, rng=np.random.default_rng(99))[0]

    loss()
    grads = model.backward()
    assert set(grads) == set(model.params)
    np.testing.assert_array_equal(x, x_before)          # input dropout never writes the caller's x
    for name, p in model.params.items():
        assert_close(grads[name], numeric_grad(loss, p), 1e-5, 1e-8, name)
    probs = model.predict_proba(x, lengths, batch_size=2)
    np.testing.assert_allclose(probs, model.forward(x, lengths)[1], rtol=1e-12)


def test_feature_vector_model_bad_input():
    model = qlnumba.SequenceClassifier(input_size=2, hidden_size=3, seed=0)
    x = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(ValueError, match="axis 2 must be 2"):
        model.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        model.forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="NaN"):
        model.forward(np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="lengths"):
        model.forward(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="exactly one"):
        qlnumba.SequenceClassifier(10, input_size=2)
    with pytest.raises(ValueError, match="exactly one"):
        qlnumba.SequenceClassifier()


@pytest.mark.parametrize("model_class", ["classifier", "language_model"])
def test_layer_dropout_acts_only_while_training(model_class):
    """layer_dropout alone: a Generator changes the loss (the same masks for the same seed);
    without one the model is the same as one built without dropout."""
    kw = dict(embed_dim=4, hidden_size=5, kind="ql", num_layers=3, block_size=2, seed=3,
              dtype=np.float64)
    if model_class == "classifier":
        make = lambda p: qlnumba.SequenceClassifier(9, layer_dropout=p, **kw)
    else:
        make = lambda p: qlnumba.LanguageModel(9, layer_dropout=p, **kw)
    rng = make_rng(8)
    ids, targets = rng.integers(1, 9, (4, 6)), rng.integers(0, 2, 4)
    if model_class == "language_model":
        targets = rng.integers(1, 9, (4, 6))
    dropped, plain = make(0.5), make(0.0)
    loss = lambda m, r=None: m.forward(ids, None, targets, rng=r)[0]
    assert loss(dropped) == loss(plain)
    assert loss(dropped, np.random.default_rng(1)) == loss(dropped, np.random.default_rng(1))
    assert loss(dropped, np.random.default_rng(1)) != loss(plain, np.random.default_rng(1))
    assert loss(plain, np.random.default_rng(1)) == loss(plain)       # no other dropout here


def test_repr_names_the_arguments_that_build_the_model():
    """repr was '<qlnumba.model.SequenceClassifier object at 0x...>'; now it is the call."""
    for model in (qlnumba.SequenceClassifier(10, embed_dim=4, hidden_size=3, num_layers=2, layer_dropout=0.2),
                  qlnumba.SequenceClassifier(input_size=3, hidden_size=4, kind="bilstm", dtype=np.float64)):
        rebuilt = eval(repr(model), {"SequenceClassifier": qlnumba.SequenceClassifier})
        assert rebuilt.config == model.config
    assert repr(qlnumba.Adam(model.params, lr=0.01, clip_norm=5.0)).startswith(
        "Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0, clip_norm=5.0; t=0, ")


@pytest.mark.parametrize("kind", ["ql", "bigru"])
def test_sample_weight_weighs_each_rows_loss(kind):
    """forward(..., sample_weight=w): the loss is sum_i w_i l_i / B, and its gradients match
    central differences; weights of 1 give the unweighted loss and gradients exactly."""
    model = qlnumba.SequenceClassifier(7, embed_dim=3, hidden_size=3, num_classes=3, kind=kind,
                                       block_size=2, dtype=np.float64, seed=4)
    ids = np.array([[1, 2, 3, 4, 5], [6, 1, 0, 0, 0], [2, 2, 2, 0, 0]])
    lengths, targets = np.array([5, 2, 3]), np.array([0, 2, 1])
    w = np.array([0.5, 0.0, 2.0])
    per_row = [model.forward(ids[i:i + 1], lengths[i:i + 1], targets[i:i + 1])[0] for i in range(3)]
    loss = model.forward(ids, lengths, targets, sample_weight=w)[0]
    assert loss == pytest.approx(np.dot(w, per_row) / 3, rel=1e-12)
    grads = model.backward()
    for name, p in model.params.items():
        assert_close(grads[name], numeric_grad(
            lambda: model.forward(ids, lengths, targets, sample_weight=w)[0], p), 1e-5, 1e-8, name)
    plain_loss, _ = model.forward(ids, lengths, targets)
    plain = model.backward()
    ones_loss, _ = model.forward(ids, lengths, targets, sample_weight=np.ones(3, np.int64))
    assert ones_loss == pytest.approx(plain_loss, rel=1e-15)
    for name, g in model.backward().items():
        np.testing.assert_array_equal(g, plain[name])
    for bad, message in [(np.ones(2), r"sample_weight must be \(3,\) numbers"),
                         (np.array([1.0, -1.0, 1.0]), "finite and >= 0"),
                         (np.array([1.0, np.nan, 1.0]), "finite and >= 0"),
                         (np.array(["a", "b", "c"]), "numbers")]:
        with pytest.raises(ValueError, match=message):
            model.forward(ids, lengths, targets, sample_weight=bad)
    with pytest.raises(ValueError, match="needs targets"):
        model.forward(ids, lengths, sample_weight=w)
