"""QLLSTMClassifier: scikit-learn's own estimator checks, the three kinds of X, pipelines,
early stopping, saving and loading, and clear errors."""
import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.estimator_checks import parametrize_with_checks

import qlnumba
from helpers import make_rng
from qlnumba.checkpoint import save_checkpoint
from qlnumba.data import Vocabulary, default_imdb_dir
from qlnumba.estimator import QLLSTMClassifier


# float64: in float32 a row's probabilities can move by one ulp with its place in the batch
# (the matrix products' blocking), which check_methods_sample_order_invariance (rtol 1e-7)
# would see
# sample weights: mini-batch training puts a sequence of weight 2 and two copies of it in other
# batches (the batch's loss is its mean), so the two fits differ, if only a little
EXPECTED_FAILURES = {"check_sample_weight_equivalence_on_dense_data":
                     "mini-batches: weight 2 and two copies of a row are not the same batches"}


@parametrize_with_checks([QLLSTMClassifier(hidden_size=16, max_epochs=10, dtype="float64")],
                         expected_failed_checks=lambda estimator: EXPECTED_FAILURES)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def toy_reviews(rng, n):
    """Texts whose label is which of 'good' and 'bad' they hold, among filler words."""
    filler = ["the", "film", "was", "a", "plot", "and", "actors", "it", "story", "!"]
    texts, labels = [], []
    for _ in range(n):
        words = list(rng.choice(filler, rng.integers(3, 12)))
        label = rng.integers(0, 2)
        words.insert(rng.integers(0, len(words) + 1), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append("pos" if label else "neg")
    return texts, np.array(labels)


def spike_sequences(rng, n, steps=12, features=1):
    """(n, steps, features): class 1 rows hold one large step somewhere, class 0 rows none."""
    x = rng.standard_normal((n, steps, features))
    y = rng.integers(0, 2, n)
    x[y == 1, rng.integers(0, steps, (y == 1).sum()), 0] += 6.0
    return x, y


def test_sample_weight_weighs_each_sequence():
    """Weights of 1 train exactly what no weights train; weight 0 on every 'pos' review
    leaves nothing to learn 'pos' from, so the classifier leans to 'neg'; bad weights are
    refused before any training."""
    rng = make_rng(31)
    texts, labels = toy_reviews(rng, 120)
    make = lambda **kw: QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=3, lr=0.01,
                                         random_state=0, **kw)
    plain = make().fit(texts, labels)
    ones = make().fit(texts, labels, sample_weight=np.ones(len(texts)))
    for k, p in plain.model_.params.items():
        np.testing.assert_array_equal(ones.model_.params[k], p)
    only_neg = make().fit(texts, labels, sample_weight=(labels == "neg").astype(float))
    assert (only_neg.predict(texts) == "neg").mean() > 0.9
    assert only_neg.predict_proba(texts)[:, 1].max() < plain.predict_proba(texts)[:, 1].max()
    stopped = make(early_stopping=True).fit(texts, labels, sample_weight=rng.uniform(0.5, 2, 120))
    assert len(stopped.validation_scores_) == stopped.n_iter_
    for bad, message in [(np.ones(5), r"sample_weight must be \(120,\) numbers, one per row, got float64 \(5,\)"),
                         (-np.ones(120), "sample_weight must be finite and >= 0"),
                         (np.zeros(120), "sample_weight is zero for every sequence"),
                         (np.full(120, np.nan), "sample_weight must be finite and >= 0"),
                         (["a"] * 120, "numbers, one per row")]:
        with pytest.raises(ValueError, match=message):
            make().fit(texts, labels, sample_weight=bad)
    part = make().partial_fit(texts, labels, classes=["neg", "pos"], sample_weight=np.ones(120))
    assert part.n_iter_ == 1


def test_class_weight_multiplies_each_sequences_weight():
    rng = make_rng(32)
    texts, labels = toy_reviews(rng, 120)
    make = lambda **kw: QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=3, lr=0.01,
                                         random_state=0, **kw)
    sample_weight = rng.uniform(0.5, 2, 120)
    per_class = {"neg": 3.0, "pos": 0.5}
    by_class = make(class_weight=per_class).fit(texts, labels, sample_weight=sample_weight)
    by_row = make().fit(texts, labels, sample_weight=sample_weight * np.where(labels == "neg", 3.0, 0.5))
    for k, p in by_row.model_.params.items():
        np.testing.assert_array_equal(by_class.model_.params[k], p)
    # "balanced": n / (C * count), as scikit-learn's compute_sample_weight
    skewed = np.concatenate([np.flatnonzero(labels == "neg"), np.flatnonzero(labels == "pos")[:10]])
    t, y = [texts[i] for i in skewed], labels[skewed]
    balanced = make(class_weight="balanced").fit(t, y)
    by_row = make().fit(t, y, sample_weight=compute_sample_weight("balanced", y))
    for k, p in by_row.model_.params.items():
        np.testing.assert_allclose(balanced.model_.params[k], p, rtol=1e-6, atol=1e-7)
    only_pos = make(class_weight={"neg": 0.0}).fit(texts, labels)     # a label left out weighs 1
    assert (only_pos.predict(texts) == "pos").mean() > 0.9
    for cw, message in [({"neg": -1.0}, "class_weight must be None, 'balanced' or a dict"),
                        ({"neg": np.nan}, "class_weight must be None"),
                        ({"neg": True}, "class_weight must be None"),
                        ("even", "class_weight must be None"),
                        ([1.0, 2.0], "class_weight must be None"),
                        ({"ok": 2.0}, r"class_weight names the label 'ok', which is not among the "
                                      r"classes \['neg', 'pos'\]"),
                        ({"neg": 0.0, "pos": 0.0}, "sample_weight times class_weight is zero for every")]:
        clf = make(class_weight=cw)
        with pytest.raises(ValueError, match=message):
            clf.fit(texts, labels)
        with pytest.raises(NotFittedError):            # no half-built network stays behind
            clf.predict(texts)
    first = make(class_weight={"ok": 1.0})
    with pytest.raises(ValueError, match="class_weight names the label 'ok'"):
        first.partial_fit(texts, labels, classes=["neg", "pos"])
    with pytest.raises(ValueError, match="needs classes"):         # still the first call
        first.partial_fit(texts, labels)
    with pytest.raises(ValueError, match="class_weight='balanced' needs every label at once"):
        make(class_weight="balanced").partial_fit(texts, labels, classes=["neg", "pos"])
    part = make(class_weight={"pos": 2}).partial_fit(texts, labels, classes=["neg", "pos"])
    part.set_params(class_weight={"pos": -2})
    with pytest.raises(ValueError, match="class_weight must be None"):
        part.partial_fit(texts, labels)
    assert part.n_iter_ == 1


def test_class_weight_survives_save_and_load(tmp_path):
    x, y = spike_sequences(make_rng(33), 40, steps=5)
    clf = QLLSTMClassifier(hidden_size=8, max_epochs=1, class_weight={np.int64(3): 2.0})
    clf.fit(x, y + 3).save(tmp_path / "weighted.npz")
    back = QLLSTMClassifier.load(tmp_path / "weighted.npz")
    assert back.class_weight == {3: 2.0} and type(next(iter(back.class_weight))) is int
    back.partial_fit(x, y + 3)                           # its label still names a class
    assert back.n_iter_ == 2


def test_text_classifier_learns_and_keeps_its_labels():
    rng = make_rng(3)
    texts, labels = toy_reviews(rng, 240)
    clf = QLLSTMClassifier(hidden_size=16, embed_dim=16, max_epochs=6, lr=0.01, random_state=0)
    clf.fit(texts[:200], labels[:200])
    assert clf.input_ == "text" and list(clf.classes_) == ["neg", "pos"]
    assert "good" in clf.vocabulary_.stoi and not hasattr(clf, "n_features_in_")
    assert clf.score(texts[200:], labels[200:]) >= 0.95
    assert clf.loss_curve_[-1] < 0.5 * clf.loss_curve_[0] and clf.n_iter_ == 6
    assert set(clf.predict(["good words never seen: xyzzy", "bad"])) <= {"neg", "pos"}
    np.testing.assert_array_equal(clf.predict(t for t in texts[200:]), clf.predict(texts[200:]))
    probs = clf.predict_proba(texts[200:])
    assert probs.dtype == np.float64 and np.allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(clf.predict_log_proba(texts[200:]), np.log(probs))


def test_same_seed_same_model_and_clone_refits_alike():
    rng = make_rng(4)
    texts, labels = toy_reviews(rng, 60)
    a = QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=2, random_state=7).fit(texts, labels)
    b = clone(a).fit(texts, labels)
    np.testing.assert_array_equal(a.predict_proba(texts), b.predict_proba(texts))


def test_ids_ragged_and_padded_give_the_same_model():
    rng = make_rng(5)
    rows = [rng.integers(1, 20, rng.integers(1, 9)) for _ in range(50)]
    y = np.array([int(7 in r) for r in rows])
    padded = np.zeros((50, 8), np.int64)
    for i, r in enumerate(rows):
        padded[i, :len(r)] = r
    kw = dict(hidden_size=8, embed_dim=8, max_epochs=3, random_state=1)
    ragged = QLLSTMClassifier(**kw).fit(rows, y)
    assert ragged.input_ == "ids" and ragged.model_.config["vocab_size"] == max(map(max, rows)) + 1
    dense = QLLSTMClassifier(input="ids", **kw).fit(padded, y)
    np.testing.assert_allclose(ragged.predict_proba(rows), dense.predict_proba(padded), rtol=1e-6)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ragged.predict([np.array([1, 2, 99])])
    with pytest.raises(ValueError, match="ids must be >= 1"):
        ragged.predict([np.array([1, 0, 2])])
    with pytest.raises(ValueError, match="empty"):
        ragged.predict([np.array([1, 2]), np.array([], np.int64)])
    with pytest.raises(ValueError, match="sequence 0 is empty"):
        dense.predict(np.zeros((1, 4), np.int64))
    with pytest.raises(ValueError, match="fitted on ids"):
        ragged.predict(["a text"])
    wrapped = 2 ** 32 + 7                       # int32 made it id 7: silently another token
    big = padded.astype(np.uint64)
    big[0, 0] = wrapped
    for clf, ids, train in ((ragged, [big[0, :1]], [big[0, :len(rows[0])]] + rows[1:]),
                            (dense, big[:1], big)):
        with pytest.raises(ValueError, match=f"sequence 0 holds id {wrapped}; ids must be <= 2147483647"):
            clf.predict(ids)
        with pytest.raises(ValueError, match=f"sequence 0 holds id {wrapped}"):
            clone(clf).fit(train, y)


def test_feature_sequences_in_a_pipeline():
    """A 2-D numeric X is n sequences of T one-feature steps; StandardScaler goes first."""
    rng = make_rng(6)
    x, y = spike_sequences(rng, 300)
    X = 50.0 + 10.0 * x[:, :, 0]                     # unscaled, as a pipeline would get it
    pipe = make_pipeline(StandardScaler(), QLLSTMClassifier(hidden_size=16, max_epochs=8,
                                                            lr=0.01, random_state=0))
    pipe.fit(X[:240], y[:240])
    assert pipe.score(X[240:], y[240:]) >= 0.9
    clf = pipe[-1]
    assert clf.input_ == "features" and clf.n_features_in_ == 12
    assert clf.model_.config["input_size"] == 1 and "embed" not in clf.model_.params
    with pytest.raises(ValueError, match="X has 11 features"):
        pipe.predict(X[:, :11])


def test_feature_sequences_three_d_and_ragged_agree():
    rng = make_rng(7)
    x, y = spike_sequences(rng, 40, steps=6, features=3)
    clf = QLLSTMClassifier(hidden_size=8, max_epochs=2, random_state=0).fit(x, y)
    assert clf.model_.config["input_size"] == 3 and not hasattr(clf, "n_features_in_")
    ragged = [x[i, :2 + i % 5] for i in range(40)]
    alone = np.concatenate([clf.predict_proba(r[None]) for r in ragged])
    np.testing.assert_allclose(clf.predict_proba(ragged), alone, rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \(steps, 3\)"):
        clf.predict(x[:, :, :2])
    bad = x.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(bad)
    with pytest.raises(ValueError, match="NaN"):
        clf.predict([bad[3]])
    with pytest.raises(ValueError, match="Reshape your data"):
        clf.fit(x[:, 0, 0], y)


def test_early_stopping_keeps_the_best_epoch():
    rng = make_rng(8)
    texts, labels = toy_reviews(rng, 120)
    clf = QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=12, lr=0.05, early_stopping=True,
                           validation_fraction=0.25, n_iter_no_change=2, random_state=3)
    clf.fit(texts, labels)
    assert len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    # the hold-out is drawn first from the Generator: the same draw finds the same rows
    order = np.random.default_rng(3)
    order.integers(2 ** 63)                          # the model's seed comes first
    val = np.sort(order.permutation(120)[:30])
    held_out = clf.score([texts[i] for i in val], labels[val])
    assert held_out == pytest.approx(clf.best_validation_score_)


def test_partial_fit_epochs_equal_fit_epochs_and_take_new_labels_from_classes():
    """Three partial_fit calls draw what fit(max_epochs=3) draws (the seed, then each
    epoch's batches and dropout) and carry Adam's state: the same network.  classes names
    the labels up front, so a later call may bring one the first did not hold."""
    rng = make_rng(11)
    texts, labels = toy_reviews(rng, 60)
    kw = dict(hidden_size=8, embed_dim=8, embed_dropout=0.1, lr=0.02, random_state=5)
    whole = QLLSTMClassifier(max_epochs=3, **kw).fit(texts, labels)
    parts = QLLSTMClassifier(**kw)
    with pytest.raises(ValueError, match="first call to partial_fit needs classes"):
        parts.partial_fit(texts, labels)
    for _ in range(3):
        parts.partial_fit(texts, labels, classes=["neg", "pos"])
    assert parts.n_iter_ == 3 and parts.loss_curve_ == pytest.approx(whole.loss_curve_, rel=1e-12)
    np.testing.assert_array_equal(parts.predict_proba(texts), whole.predict_proba(texts))

    three = QLLSTMClassifier(**kw).partial_fit(texts[:20], labels[:20], classes=["neg", "pos", "meh"])
    assert list(three.classes_) == ["meh", "neg", "pos"] and three.predict_proba(texts).shape == (60, 3)
    more = labels[20:40].copy()
    more[:5] = "meh"
    three.partial_fit(texts[20:40], more)
    assert three.n_iter_ == 2 and len(three.loss_curve_) == 2
    with pytest.raises(ValueError, match=r"not among the classes \['meh', 'neg', 'pos'\]: \['ugh'\]"):
        three.partial_fit(texts[:2], ["ugh", "neg"])
    with pytest.raises(ValueError, match="differ from those of the first call"):
        three.partial_fit(texts[:2], ["neg", "neg"], classes=["neg", "pos"])


def test_partial_fit_learns_from_parts_and_goes_on_after_load(tmp_path):
    rng = make_rng(12)
    x, y = spike_sequences(rng, 240, steps=10)
    clf = QLLSTMClassifier(hidden_size=8, lr=0.02, random_state=0)
    for part in range(0, 200, 40):                 # five parts, one epoch each
        clf.partial_fit(x[part:part + 40], y[part:part + 40], classes=[0, 1])
    assert clf.n_iter_ == 5 and clf.score(x[200:], y[200:]) >= 0.9
    clf.save(tmp_path / "parts.npz")
    back = QLLSTMClassifier.load(tmp_path / "parts.npz")
    assert back._optimizer.t == clf._optimizer.t                  # Adam's state came back
    for k in clf.model_.params:
        np.testing.assert_array_equal(back._optimizer.m[k], clf._optimizer.m[k])
    back.partial_fit(x[:40], y[:40])
    assert back.n_iter_ == 6 and back._optimizer.t > clf._optimizer.t
    clf.partial_fit(x[:40], y[:40])              # the same batches: the Generator came back too
    for k in clf.model_.params:                  # (a loaded one drew from a fresh Generator)
        np.testing.assert_array_equal(back.model_.params[k], clf.model_.params[k], err_msg=k)
    with pytest.raises(ValueError, match=r"expected \(steps, 1\)"):
        back.partial_fit(x[:4, :, :1].repeat(2, axis=2), y[:4])


def test_warm_start_trains_the_fitted_network_on():
    rng = make_rng(13)
    texts, labels = toy_reviews(rng, 80)
    clf = QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=2, lr=0.02, random_state=1)
    clf.fit(texts, labels)
    before = {k: v.copy() for k, v in clf.model_.params.items()}
    vocab = clf.vocabulary_
    clf.set_params(warm_start=True, max_epochs=3)
    clf.fit(texts[:40] + ["an unseen word: zyzzyva good"], np.append(labels[:40], "pos"))
    assert clf.n_iter_ == 5 and len(clf.loss_curve_) == 5 and clf.vocabulary_ is vocab
    assert not np.array_equal(clf.model_.params["embed"], before["embed"])
    with pytest.raises(ValueError, match="not among the classes"):
        clf.fit(texts[:2], ["neg", "neutral"])
    for change in [dict(hidden_size=16), dict(kind="lstm"), dict(head_dropout=0.5),
                   dict(layer_dropout=0.5), dict(dtype="float64"), dict(embed_dim=4),
                   dict(vocab_size=50), dict(min_freq=2)]:
        clf.set_params(**change)                     # the network stays as it was built: refused
        with pytest.raises(ValueError, match=f"built with other parameters \\({next(iter(change))} "):
            clf.fit(texts, labels)
        with pytest.raises(ValueError, match="built with other parameters"):
            clf.partial_fit(texts, labels)
        clf.set_params(hidden_size=8, kind="ql", head_dropout=0.0, layer_dropout=0.0,
                       dtype="float32", embed_dim=8, vocab_size=25_000, min_freq=1)
    assert clf.n_iter_ == 5
    clf.set_params(warm_start=False, max_epochs=1)
    assert clf.fit(texts, labels).n_iter_ == 1                    # a new network
    clf.set_params(hidden_size=16)
    assert clf.fit(texts, labels).model_.config["hidden_size"] == 16


def test_save_and_load_round_trip(tmp_path):
    rng = make_rng(9)
    texts, labels = toy_reviews(rng, 60)
    clf = QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=2, max_len=6, keep="start",
                           random_state=np.random.default_rng(0)).fit(texts, labels)
    clf.save(tmp_path / "text.npz")
    back = QLLSTMClassifier.load(tmp_path / "text.npz")
    with pytest.raises(ValueError, match="device must be one of"):
        QLLSTMClassifier.load(tmp_path / "text.npz", device="gpu")
    assert back.get_params()["max_len"] == 6 and back.get_params()["random_state"] is None
    np.testing.assert_array_equal(back.predict_proba(texts), clf.predict_proba(texts))
    assert list(back.classes_) == ["neg", "pos"] and back.loss_curve_ == clf.loss_curve_

    import pandas as pd
    x, y = spike_sequences(rng, 40, steps=5)
    frame = pd.DataFrame(x[:, :, 0], columns=[f"t{i}" for i in range(5)])
    feats = QLLSTMClassifier(hidden_size=8, max_epochs=1, dtype=np.float64).fit(frame, y + 3)
    feats.save(tmp_path / "feats.npz")
    back = QLLSTMClassifier.load(tmp_path / "feats.npz")
    assert back.n_features_in_ == 5 and list(back.feature_names_in_) == list(frame.columns)
    assert back.classes_.dtype == feats.classes_.dtype and list(back.classes_) == [3, 4]
    np.testing.assert_array_equal(back.predict(frame), feats.predict(frame))


def test_load_reads_a_training_programs_checkpoint(tmp_path):
    """train/imdb.py's checkpoints: text in, labels 0 and 1, max_len and keep from the file."""
    vocab = Vocabulary(["<pad>", "<unk>", "good", "bad"])
    model = qlnumba.SequenceClassifier(len(vocab), embed_dim=4, hidden_size=4, seed=0)
    save_checkpoint(tmp_path / "best.npz", model, vocab,
                    meta={"epoch": 3, "best_val_accuracy": 0.5, "data": {"max_len": 7, "keep": "end"}})
    clf = QLLSTMClassifier.load(tmp_path / "best.npz")
    assert clf.input_ == "text" and list(clf.classes_) == [0, 1] and clf.max_len == 7
    np.testing.assert_allclose(clf.predict_proba(["good good", "bad"]),
                               model.forward(np.array([[2, 2], [3, 0]]), np.array([2, 1]))[1],
                               rtol=1e-6)
    dropped = qlnumba.SequenceClassifier(len(vocab), embed_dim=4, hidden_size=4, seed=0,
                                         embed_dropout=0.3, head_dropout=0.2, num_layers=2,
                                         layer_dropout=0.1)
    save_checkpoint(tmp_path / "dropout.npz", dropped, vocab, meta={"epoch": 1})
    clf = QLLSTMClassifier.load(tmp_path / "dropout.npz")
    assert (clf.embed_dropout, clf.head_dropout, clf.layer_dropout) == (0.3, 0.2, 0.1)   # not the defaults
    clf.partial_fit(["good good", "bad"], [1, 0])                # so it trains on
    assert clf.n_iter_ == 2


def test_load_refuses_what_is_not_a_classifier(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        QLLSTMClassifier.load(tmp_path / "junk.npz")
    model = qlnumba.SequenceClassifier(input_size=2, hidden_size=3, seed=0)
    save_checkpoint(tmp_path / "bare.npz", model)
    with pytest.raises(ValueError, match="neither an estimator's state nor a vocabulary"):
        QLLSTMClassifier.load(tmp_path / "bare.npz")
    save_checkpoint(tmp_path / "foreign.npz", model, meta={"estimator": {"class": "Other"}})
    with pytest.raises(ValueError, match="not a QLLSTMClassifier's"):
        QLLSTMClassifier.load(tmp_path / "foreign.npz")
    state = {"class": "qlnumba.QLLSTMClassifier", "params": {"kind": "ql"}, "input": "features",
             "classes": [0, 1, 2], "classes_dtype": "<i8"}
    save_checkpoint(tmp_path / "mismatch.npz", model, meta={"estimator": state})
    with pytest.raises(ValueError, match="does not match the network"):
        QLLSTMClassifier.load(tmp_path / "mismatch.npz")
    state["params"] = {"no_such_parameter": 1}
    save_checkpoint(tmp_path / "corrupt.npz", model, meta={"estimator": state})
    with pytest.raises(ValueError, match="corrupt estimator state"):
        QLLSTMClassifier.load(tmp_path / "corrupt.npz")
    labels = np.array(["b", "a"], dtype=object)         # pandas' str labels: saved as str
    objects = QLLSTMClassifier(hidden_size=4, max_epochs=1).fit([[1.0, 2.0], [2.0, 1.0]], labels)
    objects.save(tmp_path / "objects.npz")
    assert list(QLLSTMClassifier.load(tmp_path / "objects.npz").classes_) == ["a", "b"]
    with np.load(tmp_path / "objects.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "opt/v/head.b"}
    np.savez(tmp_path / "no_v.npz", **arrays)
    with pytest.raises(ValueError, match=r"corrupt optimizer state .*missing \['v/head.b'\]"):
        QLLSTMClassifier.load(tmp_path / "no_v.npz")
    for odd in ([(1,), "a"], [1, "a"]):
        objects.classes_ = np.array(odd, dtype=object)
        with pytest.raises(ValueError, match="mixed or object"):
            objects.save(tmp_path / "x.npz")
    json.dumps(QLLSTMClassifier(random_state=np.int64(3), dtype=np.float32).get_params(),
               default=str)                          # get_params itself stays untouched


def test_load_refuses_an_estimator_state_no_fit_would_write(tmp_path):
    """Each of these loaded, then failed with a TypeError in predict or in load itself, or
    loaded a classifier whose parameters disagreed with its network."""
    pd = pytest.importorskip("pandas")
    clf = QLLSTMClassifier(hidden_size=2, block_size=2, max_epochs=1, random_state=0)
    clf.fit(pd.DataFrame(np.arange(12.0).reshape(4, 3), columns=list("abc")), [0, 1, 0, 1])
    clf.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as z:
        arrays = dict(z)
    good = json.loads(str(arrays["__meta__"]))
    cases = [("params", "max_len", "x", "max_len must be an integer >= 1"),
             ("params", "batch_size", 0, "batch_size must be an integer >= 1"),
             ("params", "hidden_size", 9, r"its parameters say hidden_size 2 -> 9\)"),
             ("params", "embed_dim", 9, None),            # no embedding: not read, fine
             (None, "loss_curve", 3, "loss_curve must be a list of numbers"),
             (None, "n_iter", "1", "n_iter must be an integer >= 0"),
             (None, "best_validation_score", [], "best_validation_score must be a number"),
             (None, "n_features_in", "x", "n_features_in must be an integer >= 1"),
             (None, "feature_names_in", ["a"], "feature_names_in must be n_features_in strings"),
             (None, "classes", 3, "classes must be distinct labels, got 3"),
             (None, "classes", [0, 0], r"classes must be distinct labels, got \[0, 0\]"),
             (None, "classes", [0, 1, 2], r"classes \[0, 1, 2\]"),
             (None, "input", "ids", "input 'ids'")]
    for where, key, value, match in cases:
        meta = json.loads(json.dumps(good))
        (meta["estimator"]["params"] if where else meta["estimator"])[key] = value
        arrays["__meta__"] = np.array(json.dumps(meta))
        np.savez(tmp_path / "bad.npz", **arrays)
        if match is None:
            QLLSTMClassifier.load(tmp_path / "bad.npz").predict(np.zeros((1, 3)))
            continue
        with pytest.raises(ValueError, match="bad.npz: (corrupt estimator state|the estimator "
                                             "state does not match the network) \\(.*" + match):
            QLLSTMClassifier.load(tmp_path / "bad.npz")
    cube = QLLSTMClassifier(hidden_size=2, block_size=2, max_epochs=1).fit(np.zeros((2, 3, 2)), [0, 1])
    cube.save(tmp_path / "cube.npz")                 # steps of 2 features: no table columns
    with np.load(tmp_path / "cube.npz") as z:
        cube_arrays = dict(z)
    meta = json.loads(str(cube_arrays["__meta__"]))
    meta["estimator"]["n_features_in"] = 3
    cube_arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "bad.npz", **cube_arrays)
    with pytest.raises(ValueError, match="not match the network .a table of 3 columns: steps of 1 "
                                         "feature, not input_size 2"):
        QLLSTMClassifier.load(tmp_path / "bad.npz")
    arrays["__meta__"] = np.array(json.dumps(good))
    np.savez(tmp_path / "again.npz", **arrays)
    again = QLLSTMClassifier.load(tmp_path / "again.npz")
    assert list(again.feature_names_in_) == ["a", "b", "c"] and again.n_iter_ == 1


@pytest.mark.parametrize("params, match", [
    (dict(kind="transformer"), "kind must be one of"),
    (dict(kind=["ql"]), "kind must be one of"),                              # was a TypeError
    (dict(input="images"), "input must be one of"),
    (dict(dtype="float16"), "dtype must be"),
    (dict(hidden_size=0), "hidden_size must be an integer >= 1"),
    (dict(max_len=0), "max_len must be an integer >= 1"),
    (dict(keep="middle"), "keep must be"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(validation_fraction=None), "validation_fraction"),                # was a TypeError
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
    (dict(lr="0.1"), "lr must be a finite number > 0, got '0.1'"),          # was a TypeError
    (dict(lr=float("inf")), "lr must be a finite number > 0, got inf"),
    (dict(weight_decay=float("nan")), "weight_decay must be a finite number >= 0, got nan"),
    (dict(clip=-1.0), r"clip must be None or a finite number >= 0 \(0: none\), got -1.0"),
    (dict(clip=float("inf")), r"clip must be None or a finite number >= 0 \(0: none\), got inf"),
    (dict(device="tpu"), "device must be one of"),
])
def test_bad_parameters_are_refused_at_fit(params, match):
    clf = QLLSTMClassifier(**params)                 # scikit-learn: __init__ only stores them
    with pytest.raises(ValueError, match=match):
        clf.fit(["a b", "c d"], [0, 1])


def test_bad_data_is_refused(monkeypatch):
    clf = QLLSTMClassifier(hidden_size=4, embed_dim=4, max_epochs=1)
    with pytest.raises(ValueError, match="one class"):
        clf.fit(["a", "b"], [1, 1])
    with pytest.raises(ValueError, match="2 sequences but y 3"):
        clf.fit(["a", "b"], [0, 1, 0])
    with pytest.raises(ValueError, match="single string"):
        clf.fit("a text", [0])
    with pytest.raises(ValueError, match="no sequences"):
        clf.fit([], [])
    with pytest.raises(ValueError, match="sequence of sequences.*got NoneType"):
        clf.fit(None, [0])
    with pytest.raises(ValueError, match=r"X\[1\] is int"):
        QLLSTMClassifier(input="text").fit(["a", 3], [0, 1])
    with pytest.raises(ValueError, match=r"sequence 0 has shape \(\); expected \(steps, features\)"):
        clf.fit([3, [1.0, 2.0]], [0, 1])             # was an IndexError (found by test_fuzz)
    for missing in (None, np.nan):                   # was a TypeError from numpy's sort
        with pytest.raises(ValueError, match=r"y holds a missing label \(None or NaN\)"):
            clf.fit(["a", "b", "c"], np.array(["x", missing, "y"], dtype=object))
    with pytest.raises(ValueError, match="X holds bytes; decode the texts to str first"):
        clf.fit([b"a b", b"c"], [0, 1])              # was numpy's "could not convert string to float"
    for X in (np.ones((2, 3, 2), complex), [np.ones((3, 2), complex), np.ones((2, 2))],
              [[1j, 2.0], [0.5, 1.0]]):               # were cast to real, dropping the imaginary parts
        with pytest.raises(ValueError, match="feature sequences must hold real numbers, got complex"):
            clf.fit(X, [0, 1])
    clf.fit(["a b", "c"], [0, 1])
    with pytest.raises(ValueError, match="fitted on text"):
        clf.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="got int"):
        clf.predict(3)
    with pytest.raises(ValueError, match="one class"):     # a failed refit: not fitted at all
        clf.fit(np.zeros((2, 3)), [0, 0])
    with pytest.raises(NotFittedError):
        clf.predict(["a b"])
    forward = qlnumba.SequenceClassifier.forward

    def nan_loss(self, *args, **kwargs):
        loss, probs = forward(self, *args, **kwargs)
        return (np.nan if loss is not None else None), probs

    monkeypatch.setattr(qlnumba.SequenceClassifier, "forward", nan_loss)
    with pytest.raises(ValueError, match="loss became nan in epoch 1"):
        QLLSTMClassifier(hidden_size=4, max_epochs=1).fit(np.zeros((4, 3)), [0, 1, 0, 1])
    monkeypatch.undo()
    diverging = QLLSTMClassifier(hidden_size=4, embed_dim=4, max_epochs=3, batch_size=2, lr=1e30,
                                 clip=0, random_state=0)
    with pytest.raises(ValueError, match=r"the training gradients held NaN or inf in epoch \d; "
                                         r"try a smaller lr"):     # said nothing of the epoch
        diverging.fit(["a good film", "a bad one"] * 4, [1, 0] * 4)
    with pytest.raises(NotFittedError):                 # it kept the half-trained network
        diverging.predict(["a good film"])


@pytest.mark.slow
@pytest.mark.skipif(not (default_imdb_dir() / "train.jsonl.gz").is_file(),
                    reason="real IMDB data not found beside the checkout")
def test_real_reviews_raw_text_in():
    """4000 real IMDB reviews (raw text in, labels out), 4 epochs of a small QL-LSTM: the
    held-out accuracy is well above chance."""
    from qlnumba.data import load_imdb
    texts, labels = load_imdb(splits=("train",), limit=4500)["train"]
    clf = QLLSTMClassifier(hidden_size=32, embed_dim=32, vocab_size=8000, min_freq=2, max_len=200,
                           max_epochs=4, batch_size=16, embed_dropout=0.2, random_state=0)
    clf.fit(texts[:4000], labels[:4000])
    score = clf.score(texts[4000:], labels[4000:])
    print(f"held-out accuracy {score:.4f}, loss curve {clf.loss_curve_}")
    assert score > 0.7
