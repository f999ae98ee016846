"""Bad input of any kind is a ValueError: hypothesis draws arguments of every sort (arrays of
every dtype, rank and size, NaN, huge and negative values, lists, scalars, None, strings) for
the public entry points and checks that nothing else escapes (no TypeError, IndexError or a
Numba error from deep inside)."""
import warnings

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
import pytest

import qlnumba
from qlnumba import QLLSTMClassifier

MANY = max(200, settings.default.max_examples)      # cheap calls: more draws than the profile's
VALUES = [0, 1, 2, 3, 9, 10, -1, 2 ** 40, 0.5, np.nan, np.inf]
DTYPES = [np.int8, np.int32, np.int64, np.uint8, np.uint64, np.float16, np.float32, np.float64,
          bool, object, np.complex64]


@st.composite
def arrays_of_any_kind(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    values = draw(st.lists(st.sampled_from(VALUES), min_size=int(np.prod(shape)),
                           max_size=int(np.prod(shape))))
    dtype = draw(st.sampled_from(DTYPES))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return np.array(values, dtype=object).astype(dtype).reshape(shape)
        except (OverflowError, ValueError, TypeError):     # a value the dtype cannot hold
            return np.zeros(shape, dtype)


anything = st.one_of(arrays_of_any_kind(), st.none(), st.lists(st.integers(-2, 12), max_size=4),
                     st.sampled_from([3, 2.5, True, "abc"]))


def only_value_errors(call):
    try:
        call()
    except ValueError:
        pass


MODELS = {"ids": qlnumba.SequenceClassifier(10, embed_dim=4, hidden_size=4, block_size=2, seed=0),
          "features": qlnumba.SequenceClassifier(input_size=3, hidden_size=4, block_size=2, seed=0),
          "lm": qlnumba.LanguageModel(10, embed_dim=4, hidden_size=4, block_size=2, seed=0),
          "layer": qlnumba.QLLSTM(3, 4, block_size=2, seed=0),
          "gru": qlnumba.GRU(3, 4, num_layers=2, bidirectional=True, seed=0)}


@settings(max_examples=MANY, suppress_health_check=list(HealthCheck))
@given(a=anything, b=anything, c=anything)
def test_models_and_layers_refuse_anything_with_a_value_error(a, b, c):
    only_value_errors(lambda: MODELS["ids"].forward(a, b, c))
    only_value_errors(lambda: MODELS["features"].forward(a, b, c))
    only_value_errors(lambda: MODELS["lm"].forward(a, b, c))
    only_value_errors(lambda: MODELS["lm"].score(a))
    only_value_errors(lambda: MODELS["layer"].forward(a, b))
    only_value_errors(lambda: MODELS["gru"].forward(a, b))
    only_value_errors(lambda: MODELS["lm"].generate(a, 2, np.random.default_rng(0), exclude=b))
    only_value_errors(lambda: MODELS["ids"].forward(np.array([[1, 2], [3, 0]]), None, np.array([0, 1]),
                                                    rng=b, sample_weight=a))
    for name in ("layer", "gru"):                   # backward after a good forward
        layer = MODELS[name]
        out, _ = layer.forward(np.ones((2, 3, 3), np.float32), np.array([3, 2]))
        only_value_errors(lambda: layer.backward(a, b))
        layer.forward(np.ones((2, 3, 3), np.float32), np.array([3, 2]))
        only_value_errors(lambda: layer.backward(np.ones_like(out), a))


@settings(max_examples=MANY, suppress_health_check=list(HealthCheck))
@given(a=anything, b=anything, c=anything)
def test_the_data_helpers_and_save_refuse_anything_with_a_value_error(a, b, c, tmp_path_factory):
    """qlnumba.data's public functions and save_checkpoint: a str where a list of tokens goes
    (its characters would have become tokens), a float limit or batch size, a number as a
    path, a vocabulary of another size (a checkpoint that would not load again)."""
    from qlnumba.checkpoint import save_checkpoint
    from qlnumba.data import (Vocabulary, bucket_batches, encode_corpus, load_fashion_mnist, load_imdb,
                              load_shakespeare, pad_batch, sorted_batches)
    from qlnumba.data.fashion_mnist import as_sequences
    from qlnumba.data.shakespeare import (char_vocabulary, decode_chars, encode_chars, split_ids,
                                          stream_batches)
    vocab = Vocabulary.build([["a", "b"], ["b"]])
    corpus = encode_corpus([["a", "b"], ["b"]], vocab)
    missing = tmp_path_factory.getbasetemp() / "no-such-folder"
    for call in (lambda: Vocabulary(a), lambda: Vocabulary.build(a), lambda: Vocabulary.build([["a"]], a, b),
                 lambda: vocab.encode(a), lambda: encode_corpus(a, vocab),
                 lambda: encode_corpus([["a"]], vocab, a, b), lambda: pad_batch(corpus, a),
                 lambda: bucket_batches(a, b, np.random.default_rng(0), c),
                 lambda: bucket_batches([1, 2, 3], a, b), lambda: sorted_batches(a, b),
                 lambda: as_sequences(a, b), lambda: list(stream_batches(a, b, c)),
                 lambda: list(stream_batches(np.arange(50), a, b, c)), lambda: split_ids(a, b),
                 lambda: encode_chars(a, vocab), lambda: decode_chars(a, vocab),
                 lambda: char_vocabulary(a), lambda: load_imdb(missing, a, b),
                 lambda: load_fashion_mnist(missing, a, b), lambda: load_shakespeare(a),
                 lambda: qlnumba.count_params(a)):
        only_value_errors(call)
    model, path = MODELS["ids"], tmp_path_factory.getbasetemp() / "saved.npz"
    for args in ((path, a), (path, model, a), (path, model, None, a), (path, model, None, None, a),
                 (a, model) if not isinstance(a, str) else (path, model)):    # (a str is a path)
        only_value_errors(lambda: save_checkpoint(*args))
    only_value_errors(lambda: MODELS["ids"].predict_proba(np.array([[1, 2], [3, 0]]), None, a))


@pytest.fixture(scope="module")
def fitted():
    """A classifier of texts and one of feature sequences, fitted."""
    texts = QLLSTMClassifier(hidden_size=2, embed_dim=2, block_size=2, max_epochs=1, random_state=0)
    features = QLLSTMClassifier(hidden_size=2, block_size=2, max_epochs=1, random_state=0)
    return texts.fit(["a b", "b c", "c"], [0, 1, 0]), features.fit(np.zeros((3, 4)), [0, 1, 0])


@settings(max_examples=MANY, suppress_health_check=list(HealthCheck))
@given(a=anything, b=anything)
def test_fitted_classifiers_and_adam_refuse_anything_with_a_value_error(fitted, a, b):
    """A 0-d array as X was a TypeError in predict, and as score's sample_weight (from
    scikit-learn's score); a non-dict optimizer state one in Adam.load_state_dict."""
    texts, features = fitted
    for call in (lambda: texts.predict(a), lambda: features.predict_proba(a),
                 lambda: texts.score(a, b), lambda: texts.score(["a", "b c"], [0, 1], a),
                 lambda: features.score(np.zeros((2, 4)), a, b),
                 lambda: qlnumba.Adam(MODELS["layer"].params).load_state_dict(a)):
        only_value_errors(call)


KINDS = [st.text(min_size=1, max_size=6), st.lists(st.integers(1, 12), min_size=1, max_size=4),
         st.lists(st.floats(-2, 2), min_size=1, max_size=4), st.integers(-3, 12), st.floats(),
         st.none(), st.binary(max_size=3), st.lists(st.integers(-1, 12), max_size=3)]
elements = st.one_of(KINDS)


@st.composite
def datasets(draw):
    """(X, y) for a classifier.  X: a list of items of one kind (texts, id lists, number
    lists, numbers, ...), perhaps with one item of another kind among them; a table (NaN
    included); an (n, T, E) array; or ragged (T_i, E) arrays; any of them possibly empty.
    y: n labels 0 or 1, or a list of anything."""
    n = draw(st.integers(0, 6))
    form = draw(st.sampled_from(["list", "table", "cube", "ragged"]))
    if form == "list":
        X = draw(st.lists(draw(st.sampled_from(KINDS)), min_size=n, max_size=n))
        if X and draw(st.booleans()):
            X[draw(st.integers(0, n - 1))] = draw(elements)
    elif form == "table":
        X = np.array(draw(st.lists(st.lists(st.sampled_from([0, 1, 2, -1, 0.5, np.nan]),
                                            min_size=3, max_size=3), min_size=n, max_size=n)))
    elif form == "cube":
        X = np.zeros((n, draw(st.integers(0, 3)), draw(st.integers(0, 2))))
    else:
        X = [np.zeros((draw(st.integers(0, 3)), draw(st.integers(1, 2)))) for _ in range(n)]
    y = draw(st.one_of(st.just([i % 2 for i in range(n)]),
                       st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n),
                       st.none(), st.lists(st.sampled_from([0, 1, 2, "a", None, 1.5, np.nan]))))
    return X, y


@settings(max_examples=max(60, settings.default.max_examples), suppress_health_check=list(HealthCheck))
@given(data=datasets(), data2=datasets(), input=st.sampled_from(["auto", "text", "ids", "features"]),
       class_weight=st.one_of(st.none(), st.just("balanced"), anything,
                              st.dictionaries(st.sampled_from([0, 1, 2, "a", None, 1.5]),
                                              st.sampled_from(VALUES), max_size=3)))
def test_the_estimator_refuses_any_data_with_a_value_error(data, data2, input, class_weight):
    """Found a fit on [3, [1.0, 2.0]] (a number among feature sequences) to be an IndexError."""
    clf = QLLSTMClassifier(hidden_size=2, embed_dim=2, block_size=2, max_epochs=1, batch_size=4,
                           input=input, class_weight=class_weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # sklearn's conversion warnings
        try:
            clf.fit(*data)
        except ValueError:
            return
        event("fitted")                     # --hypothesis-show-statistics: how often
        only_value_errors(lambda: clf.predict(data2[0]))
        only_value_errors(lambda: clf.partial_fit(*data2))


JSON_VALUES = [None, -1, 0, 3, 1e308, 0.5, True, "x", "text", [], [1, "a"], {}, {"a": 1}]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The arrays of a text classifier's checkpoint (fitted twice: with optimizer state), of
    a features classifier's, and of a language model's."""
    from qlnumba.checkpoint import save_checkpoint
    from qlnumba.data.text import Vocabulary
    folder = tmp_path_factory.mktemp("checkpoints")
    texts = QLLSTMClassifier(hidden_size=2, embed_dim=2, block_size=2, max_epochs=1, random_state=0)
    texts.partial_fit(["a b", "b c a", "c"], ["x", "y", "x"], classes=["x", "y"])
    texts.save(folder / "texts.npz")
    features = QLLSTMClassifier(hidden_size=2, block_size=2, max_epochs=1, random_state=0,
                                early_stopping=True, validation_fraction=0.5)
    features.fit(np.arange(12.0).reshape(4, 3), [0, 1, 0, 1])
    features.save(folder / "features.npz")
    lm = qlnumba.LanguageModel(4, embed_dim=2, hidden_size=2, block_size=2, seed=0)
    save_checkpoint(folder / "lm.npz", lm, Vocabulary(["<pad>", "<unk>", "a", "b"]),
                    meta={"epoch": 1})
    out = {}
    for name in ("texts", "features", "lm"):
        with np.load(folder / f"{name}.npz") as z:
            out[name] = dict(z)
    return out


def json_paths(obj, prefix=()):
    """The key path of every value in nested JSON dicts, the dicts' own included."""
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from json_paths(value, prefix + (key,))


def set_json(obj, path, value):
    """obj with the value at ``path`` replaced, or deleted for value ``...``."""
    if not path:
        return value
    obj = dict(obj)
    if len(path) == 1 and value is ...:
        del obj[path[0]]
    else:
        obj[path[0]] = set_json(obj[path[0]], path[1:], value)
    return obj


@settings(max_examples=MANY, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["texts", "features", "lm"]), how=st.sampled_from(["drop", "array", "json"]),
       data=st.data())
def test_a_corrupt_checkpoint_is_refused_with_a_value_error(checkpoints, tmp_path_factory, name, how, data):
    """Any key dropped or replaced by any array, or any value in the JSON metadata (deep in
    it too) replaced or dropped: load_checkpoint, QLLSTMClassifier.load then predict, and
    `qlnumba info` refuse it with a ValueError (exit status 2), or load something that works."""
    import json

    from qlnumba.checkpoint import load_checkpoint
    from qlnumba.cli import main
    arrays = dict(checkpoints[name])
    if how == "json":
        key = data.draw(st.sampled_from(["__meta__", "__vocab__"] if "__vocab__" in arrays
                                        else ["__meta__"]))
        meta = json.loads(str(arrays[key]))
        path = data.draw(st.sampled_from(list(json_paths(meta))))
        value = data.draw(st.sampled_from(JSON_VALUES + ([...] if path else [])))
        arrays[key] = np.array(json.dumps(set_json(meta, path, value)))
        event(f"{key} {'/'.join(map(str, path[:2]))}")
    else:
        key = data.draw(st.sampled_from(sorted(arrays)))
        if how == "drop":
            del arrays[key]
        else:
            arrays[key] = data.draw(arrays_of_any_kind())
    path = tmp_path_factory.mktemp("fuzz") / "c.npz"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    only_value_errors(lambda: load_checkpoint(path))
    if name != "lm":
        only_value_errors(lambda: QLLSTMClassifier.load(path).predict(
            ["a b"] if name == "texts" else np.zeros((1, 3))))
    assert main(["info", str(path), "--threads", "1"]) in (0, 2)
