"""A scikit-learn classifier: ``QLLSTMClassifier`` (fit, predict, predict_proba, score).

    clf = QLLSTMClassifier(hidden_size=64, max_epochs=5, random_state=0).fit(texts, labels)
    clf.predict(["a fine film", "dull"])
    make_pipeline(StandardScaler(), QLLSTMClassifier()).fit(X, y)    # X (n, T): T steps each

It wraps :class:`qlnumba.SequenceClassifier` (embedding or none, a recurrent stack of any
of ``MODEL_KINDS``, a softmax head on the last valid step) and trains it with
:class:`qlnumba.Adam` in length-bucketed mini-batches.

What X may be.  ``input="auto"`` decides from the data at fit; later calls must pass the
same kind (``input_`` after fit says which):

- ``"text"``: a sequence of str.  fit tokenizes (:func:`qlnumba.data.tokenize`) and builds
  the vocabulary from these texts only; words unseen at fit read as ``<unk>`` later.
- ``"ids"``: a sequence of 1-D integer sequences of different lengths (ids >= 1; 0 is
  padding), or, with ``input="ids"``, a 2-D integer array padded with 0 after each row.
  The embedding has (largest id seen at fit) + 1 rows; a larger id later is refused.
- ``"features"``: a 2-D numeric array (n, T), where row i is a sequence of T steps of one
  feature each (what a pipeline hands on, e.g. after ``StandardScaler``); a 3-D array
  (n, T, E); or a sequence of 2-D arrays (T_i, E) of different lengths.  Scale them first:
  the gates saturate on raw values such as 0..255 pixels.

Training.  ``fit`` trains a new network for ``max_epochs`` epochs (or until early stopping);
with ``warm_start=True`` a second ``fit`` trains the fitted network on (a fresh Adam).
``partial_fit(X, y, classes)`` trains one epoch per call, the Adam state carried from call
to call, for data that comes in parts: the first call fixes what the network reads (the
vocabulary of its texts, its largest id plus one embedding rows, its feature width), and
``classes`` (every label that will ever come) must be given there.

Saved with :meth:`QLLSTMClassifier.save` to the checkpoint format of
:mod:`qlnumba.checkpoint` (no pickle); :meth:`QLLSTMClassifier.load` also reads the
checkpoints of ``train/imdb.py``, as a text classifier of the labels 0 (negative), 1
(positive).
"""
import math
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from .checkpoint import load_checkpoint, save_checkpoint
from .data.batching import bucket_batches, pad_batch, sorted_batches
from .data.text import EncodedCorpus, Vocabulary, encode_corpus, tokenize
from .model import MODEL_KINDS, SequenceClassifier, make_trainer
from .optim import Adam, NonFiniteGradients, check_adam_constants
from .validate import check_sample_weight, check_seed, check_size, generator_from_state, is_real

INPUTS = ("auto", "text", "ids", "features")
DEVICES = ("cpu", "cuda")
ID_MAX = int(np.iinfo(np.int32).max)              # ids are stored as int32
ESTIMATOR_META = "qlnumba.QLLSTMClassifier"      # the checkpoint's meta["estimator"]["class"]
NETWORK_PARAMS = ("kind", "hidden_size", "num_layers", "block_size", "embed_dropout",   # fixed when
                  "head_dropout", "layer_dropout", "dtype", "device")   # the network is built


class QLLSTMClassifier(ClassifierMixin, BaseEstimator):
    """Sequence classifier with a QL-LSTM (or LSTM, GRU, ...) in the scikit-learn API.

    Parameters
    ----------
    kind : str, default "ql"
        The recurrent stack, one of ``qlnumba.MODEL_KINDS``: "ql" (QL-LSTM), "lstm",
        "gru", "psug", "hgr", and bidirectional "biql", "bilstm", "bigru".
    hidden_size : int, default 128
    embed_dim : int, default 128
        Embedding width for text and ids (unused for feature sequences).
    num_layers : int, default 1
    block_size : int, default 32
        HGR-ASC block length K (the design card's default; on IMDB's reviews 4 scored
        1.25 points higher, at about the same speed: results/imdb.md).
    input : {"auto", "text", "ids", "features"}, default "auto"
        What X holds (see the module docstring).
    vocab_size : int, default 25000
        Text only: most ids in the vocabulary, padding and ``<unk>`` included.
    min_freq : int, default 1
        Text only: fewest times a word must occur in the fit texts to get an id.
    max_len : int or None, default None
        Steps kept per sequence (None: all).  ``keep`` says which part stays.
    keep : {"start", "end"}, default "end"
    batch_size : int, default 32
    max_epochs : int, default 10
    lr : float, default 2e-3
        Adam's learning rate.
    weight_decay : float, default 0.0
        AdamW's decoupled decay (matrices only).
    clip : float or None, default 5.0
        Global gradient-norm clip; None or 0 for none.
    embed_dropout, head_dropout : float, default 0.0
        Dropout on the embeddings (on the input features for feature sequences) and on
        the head's input, while training.
    layer_dropout : float, default 0.0
        Dropout on each recurrent layer's output but the last, while training (between
        stacked layers: it needs ``num_layers`` >= 2).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the fit data, keep the parameters of the
        epoch with the best accuracy on it, and stop after ``n_iter_no_change`` epochs
        without a better one.
    validation_fraction : float, default 0.1
    n_iter_no_change : int, default 2
    class_weight : dict, "balanced" or None, default None
        Each class's weight in the loss (and in ``early_stopping``'s accuracy), times
        ``sample_weight``: a dict label -> weight (labels left out weigh 1), or
        "balanced", n / (C * count of the label) over ``fit``'s y (not for
        ``partial_fit``, which sees part of the labels: give it a dict).
    dtype : {"float32", "float64"}, default "float32"
    random_state : int, numpy Generator or None, default None
        Seeds the initialisation, the batch order, dropout and the hold-out.
    warm_start : bool, default False
        True: ``fit`` on a fitted classifier trains its network on, with the same input
        kind, vocabulary and labels (those of y must be among ``classes_``). The network's
        own parameters (kind, sizes, dropout, dtype, device; for text, the vocabulary's
        ``vocab_size`` and ``min_freq``) must be those it was built with; a change is
        refused (so is one before ``partial_fit``), not ignored.
    device : {"cpu", "cuda"}, default "cpu"
        "cuda" (``pip install qlnumba[cuda]``): the recurrent layers run on the GPU, and
        ``fit`` / ``partial_fit`` train with every array there (any kind and input,
        :class:`qlnumba.gpu.model.CudaTrainer`).
    verbose : int, default 0
        1: one line per epoch.

    Attributes
    ----------
    classes_ : ndarray (C,), the labels, sorted
    input_ : str, the kind of X seen at fit ("text", "ids" or "features")
    model_ : SequenceClassifier, the trained network
    vocabulary_ : qlnumba.data.Vocabulary or None (text only)
    n_features_in_ : int, T, only after a fit on a 2-D numeric array
    n_iter_ : int, epochs run (over all warm-started fits and partial_fit calls)
    loss_curve_ : list of float, mean training loss per epoch
    validation_scores_ : list of float, hold-out accuracy per epoch (early stopping only)
    best_validation_score_ : float or None, the best of the last fit's hold-out scores
    """

    def __init__(self, kind="ql", hidden_size=128, embed_dim=128, num_layers=1, block_size=32,
                 input="auto", vocab_size=25_000, min_freq=1, max_len=None, keep="end",
                 batch_size=32, max_epochs=10, lr=2e-3, weight_decay=0.0, clip=5.0,
                 embed_dropout=0.0, head_dropout=0.0, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=2, dtype="float32",
                 random_state=None, verbose=0, device="cpu", warm_start=False,
                 layer_dropout=0.0, class_weight=None):
        self.kind, self.hidden_size, self.embed_dim = kind, hidden_size, embed_dim
        self.num_layers, self.block_size, self.input = num_layers, block_size, input
        self.vocab_size, self.min_freq, self.max_len, self.keep = vocab_size, min_freq, max_len, keep
        self.batch_size, self.max_epochs, self.lr = batch_size, max_epochs, lr
        self.weight_decay, self.clip = weight_decay, clip
        self.embed_dropout, self.head_dropout = embed_dropout, head_dropout
        self.early_stopping, self.validation_fraction = early_stopping, validation_fraction
        self.n_iter_no_change, self.dtype = n_iter_no_change, dtype
        self.random_state, self.verbose, self.device = random_state, verbose, device
        self.warm_start, self.layer_dropout = warm_start, layer_dropout
        self.class_weight = class_weight

    # ---- scikit-learn API --------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Train a new network on X (n sequences) and y (n labels, two classes or more), or,
        with ``warm_start`` on a fitted classifier, train the fitted one on.
        ``sample_weight`` (n,), numbers >= 0: each sequence's weight in the loss (a batch's
        loss is the mean of weight times loss), and in the held-out accuracy of
        ``early_stopping``, times ``class_weight`` (``"balanced"`` evens out classes of
        different sizes)."""
        self._check_params()
        rng = np.random.default_rng(self.random_state)
        fresh = not (self.warm_start and hasattr(self, "model_"))
        if fresh:
            corpus, targets = self._initialize(X, y, None, rng)
        else:
            self._check_network_params()
            corpus, targets = self._encode_labelled(X, y)
        weights = self._weights(targets, sample_weight, forget=fresh)
        self._optimizer, self._rng = self._new_optimizer(), rng   # partial_fit goes on from them
        try:
            self._train(corpus, targets, rng, self.max_epochs, self.early_stopping, weights)
        except ValueError:          # diverged: no half-trained network is left to predict with
            self._forget()
            raise
        return self

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch on X and y, continuing from the last call (the same Adam state).  The
        first call builds the network and needs ``classes``, every label there will be.
        ``early_stopping`` does not apply (there is no epoch to compare with): hold data
        out and score it between calls instead.  ``sample_weight``: as for :meth:`fit`;
        ``class_weight`` must be a dict or None here.  A call whose training diverges raises
        ``ValueError`` and leaves the network as its last finite step left it (unlike
        :meth:`fit`, which leaves the classifier unfitted)."""
        if _check_class_weight(self.class_weight) == "balanced":
            raise ValueError("class_weight='balanced' needs every label at once and "
                             "partial_fit sees a part of them; give a dict (e.g. sklearn's "
                             "compute_class_weight over all the labels) or None")
        if not hasattr(self, "model_"):
            if classes is None:
                raise ValueError("the first call to partial_fit needs classes: every label "
                                 "there will be (y may hold only some of them)")
            self._check_params()
            rng = np.random.default_rng(self.random_state)
            corpus, targets = self._initialize(X, y, classes, rng)
            self._rng = rng                    # the next calls draw on from it, as fit's epochs
            weights = self._weights(targets, sample_weight, forget=True)
        else:
            if classes is not None and not np.array_equal(np.unique(classes), self.classes_):
                raise ValueError(f"classes {np.unique(classes).tolist()} differ from those of "
                                 f"the first call, {self.classes_.tolist()}")
            self._check_network_params()
            corpus, targets = self._encode_labelled(X, y)
            weights = self._weights(targets, sample_weight)
        if getattr(self, "_rng", None) is None:          # after load
            self._rng = np.random.default_rng(self.random_state)
        if getattr(self, "_optimizer", None) is None:
            self._optimizer = self._new_optimizer()
        self._train(corpus, targets, self._rng, 1, False, weights)
        return self

    def _initialize(self, X, y, classes, rng):
        """A new network for X and y (a vocabulary from the texts of X; the labels of y, or
        ``classes``); returns the encoded X and y's class indices."""
        dtype = np.dtype(self.dtype)
        self._forget()                         # a refit that fails leaves no half-old state
        self._vocabulary_params = {}
        X = _sized(X)
        self.input_ = self._input_kind(X)
        corpus = self._encode(X, fitting=True)
        y = self._labels(y, len(corpus))
        if classes is None:
            self.classes_, targets = np.unique(y, return_inverse=True)
        else:
            self.classes_ = np.unique(column_or_1d(classes))
            targets = self._class_indices(y)
        if len(self.classes_) < 2:
            raise ValueError(f"y holds one class only ({self.classes_[0]!r}); a classifier "
                             "needs at least 2 classes")
        if self.input_ == "features":
            sizes = dict(input_size=corpus.ids.shape[1])
        else:
            sizes = dict(vocab_size=int(corpus.ids.max()) + 1 if self.input_ == "ids"
                         else len(self.vocabulary_), embed_dim=self.embed_dim)
        self.model_ = SequenceClassifier(
            hidden_size=self.hidden_size, num_classes=len(self.classes_), kind=self.kind,
            num_layers=self.num_layers, block_size=self.block_size,
            embed_dropout=self.embed_dropout, head_dropout=self.head_dropout,
            layer_dropout=self.layer_dropout, dtype=dtype, seed=int(rng.integers(2 ** 63)),
            device=self.device, **sizes)
        self.n_iter_, self.loss_curve_, self.validation_scores_ = 0, [], []
        self.best_validation_score_ = None
        return corpus, targets.astype(np.int64)

    def _forget(self):
        """Drop what a fit learned (the attributes that end in "_", the Adam state): the
        classifier is unfitted again."""
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("_")]:
            delattr(self, attr)
        self._optimizer = self._rng = None

    def _check_network_params(self):
        """ValueError where a parameter that the fitted network was built with has been
        changed since (``set_params``): training it on would silently ignore the change."""
        changed = self._network_changes()
        if changed:
            raise ValueError(f"the fitted network was built with other parameters ({', '.join(changed)}); "
                             "set them back to train it on, or fit with warm_start=False for a new one")

    def _network_changes(self):
        """'name built -> now' for each parameter that differs from what built the network."""
        config = self.model_.config
        names = NETWORK_PARAMS + (("embed_dim",) if self.input_ != "features" else ())
        wanted = {n: np.dtype(self.dtype).name if n == "dtype" else getattr(self, n) for n in names}
        changed = [f"{n} {config[n]!r} -> {wanted[n]!r}" for n in names if wanted[n] != config[n]]
        if self.input_ == "text":            # the vocabulary, and so the embedding, is fixed too
            built = getattr(self, "_vocabulary_params", {})
            changed += [f"{n} {v!r} -> {getattr(self, n)!r}" for n, v in built.items()
                        if getattr(self, n) != v]
        return changed

    def _encode_labelled(self, X, y):
        """X encoded for the fitted network, and y's indices into ``classes_``."""
        check_is_fitted(self, "model_")
        corpus = self._encode(X, fitting=False)
        return corpus, self._class_indices(self._labels(y, len(corpus)))

    @staticmethod
    def _labels(y, n):
        y = column_or_1d(y, warn=True)
        if len(y) != n:
            raise ValueError(f"X holds {n} sequences but y {len(y)} labels")
        if y.dtype == object and any(label is None or (isinstance(label, float) and math.isnan(label))
                                     for label in y):
            raise ValueError("y holds a missing label (None or NaN); every sequence needs one")
        try:                    # sorts the labels: some mixed types do not compare
            check_classification_targets(y)
        except TypeError as exc:
            raise ValueError(f"y's labels cannot be sorted together ({exc}); give labels of "
                             "one type") from None
        return y

    def _class_indices(self, y):
        """Each label's index in ``classes_`` (int64); a label not among them is refused."""
        known = np.isin(y, self.classes_)
        if not known.all():
            raise ValueError(f"y holds labels that are not among the classes "
                             f"{self.classes_.tolist()}: {np.unique(y[~known]).tolist()[:5]}")
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _weights(self, targets, sample_weight, forget=False):
        """Each sequence's weight in the loss, float64 (n,): ``sample_weight`` times its
        class's ``class_weight``; None where both are None (every sequence weighs 1).
        ``forget``: on bad weights, drop the network just built (no half-fitted classifier)."""
        try:
            weights = None if sample_weight is None else check_sample_weight(sample_weight, len(targets))
            if self.class_weight is not None:          # checked by fit and partial_fit
                per_class = self._class_weights(targets)
                weights = per_class[targets] * (1.0 if weights is None else weights)
            if weights is not None and not weights.any():
                which = "sample_weight" if self.class_weight is None else \
                    "sample_weight times class_weight"
                raise ValueError(f"{which} is zero for every sequence: there is nothing to learn from")
        except ValueError:
            if forget:
                self._forget()
            raise
        return weights

    def _class_weights(self, targets):
        """``class_weight`` as an array (C,) in the order of ``classes_``."""
        C = len(self.classes_)
        if isinstance(self.class_weight, str):                # "balanced"
            counts = np.bincount(targets, minlength=C)
            return len(targets) / (C * np.maximum(counts, 1))
        classes, per_class = self.classes_.tolist(), np.ones(C)
        for label, weight in self.class_weight.items():
            if label not in classes:
                raise ValueError(f"class_weight names the label {label!r}, which is not among "
                                 f"the classes {classes}")
            per_class[classes.index(label)] = weight
        return per_class

    def _new_optimizer(self):
        return Adam(self.model_.params, lr=self.lr, weight_decay=self.weight_decay,
                    clip_norm=self.clip or None)

    def predict_proba(self, X):
        """Class probabilities (n, C), columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        corpus = self._encode(X, fitting=False)
        return self._probabilities(corpus).astype(np.float64)

    def predict_log_proba(self, X):
        """The log of :meth:`predict_proba` (n, C); a probability that rounded to 0 gives -inf."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        """The most probable label of each sequence, (n,)."""
        probs = self.predict_proba(X)
        return self.classes_[np.argmax(probs, axis=1)]

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of :meth:`predict` on X against y, weighted by ``sample_weight``
        (n,), numbers >= 0, if given."""
        predicted = self.predict(X)
        y = column_or_1d(y)                          # (a 0-d y: a ValueError, not a TypeError)
        if sample_weight is not None:
            sample_weight = check_sample_weight(sample_weight, len(predicted))
        return float(accuracy_score(y, predicted, sample_weight=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        return tags

    # ---- saving ------------------------------------------------------------------------

    def save(self, path):
        """Write the fitted classifier to ``path`` (a ``.npz`` checkpoint, no pickle), with
        its Adam state, so that ``partial_fit`` goes on after :meth:`load`."""
        check_is_fitted(self, "model_")
        classes = self.classes_
        if classes.dtype == object:          # e.g. pandas' str labels: saved as str
            classes = _plain_labels(classes)
        state = {"class": ESTIMATOR_META, "params": _json_params(self.get_params()),
                 "input": self.input_,
                 "classes": classes.tolist(), "classes_dtype": classes.dtype.str,
                 "n_iter": self.n_iter_, "loss_curve": self.loss_curve_,
                 "validation_scores": self.validation_scores_,
                 "best_validation_score": self.best_validation_score_}
        if getattr(self, "_rng", None) is not None:      # partial_fit after load draws on from it
            state["rng_state"] = self._rng.bit_generator.state
        if hasattr(self, "n_features_in_"):
            state["n_features_in"] = int(self.n_features_in_)
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in"] = [str(n) for n in self.feature_names_in_]
        save_checkpoint(path, self.model_, self.vocabulary_, getattr(self, "_optimizer", None),
                        meta={"estimator": state})

    @classmethod
    def load(cls, path, device=None):
        """A fitted classifier from a checkpoint written by :meth:`save` or by
        ``train/imdb.py`` (then: text in, labels 0 and 1).  ``device`` ("cpu" or "cuda")
        overrides the device it was saved from."""
        if device is not None and device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        return cls.from_loaded(path, load_checkpoint(path, device))

    @classmethod
    def from_loaded(cls, path, loaded):
        """The fitted classifier of a checkpoint already read: ``loaded`` is
        ``load_checkpoint(path, ...)``'s (model, vocab, optimizer state, meta)."""
        model, vocab, opt_state, meta = loaded
        if not isinstance(model, SequenceClassifier):
            raise ValueError(f"{path} holds a {type(model).__name__}, not a classifier")
        state = meta.get("estimator")
        if state is None and vocab is None:
            raise ValueError(f"{path} has neither an estimator's state nor a vocabulary")
        if state is not None and (not isinstance(state, dict) or state.get("class") != ESTIMATOR_META):
            raise ValueError(f"{path}: the checkpoint's estimator state is not a {cls.__name__}'s")
        what = "training" if state is None else "estimator"
        try:
            if state is None:                                # train/imdb.py's checkpoint
                data, config = meta.get("data", {}), model.config
                if not isinstance(data, dict):
                    raise ValueError(f"data must be a dict, got {data!r}")
                clf = cls(kind=config["kind"], hidden_size=config["hidden_size"],
                          embed_dim=config["embed_dim"], num_layers=config["num_layers"],
                          block_size=config["block_size"], input="text", vocab_size=len(vocab),
                          embed_dropout=config["embed_dropout"], head_dropout=config["head_dropout"],
                          layer_dropout=config["layer_dropout"], max_len=data.get("max_len"),
                          keep=data.get("keep", "end"),
                          dtype=config["dtype"], device=config["device"])
                state = {"input": "text", "classes": [0, 1], "classes_dtype": "<i8"}
            else:
                params = dict(state["params"], device=model.config["device"])
                if isinstance(params.get("class_weight"), list):
                    params["class_weight"] = dict(params["class_weight"])
                clf = cls(**params)
            clf._check_params()                 # a value no fit would take: corrupt
            clf.classes_ = np.asarray(state["classes"], dtype=np.dtype(state["classes_dtype"]))
            if clf.classes_.ndim != 1 or len(np.unique(clf.classes_)) != len(clf.classes_):
                raise ValueError(f"classes must be distinct labels, got {clf.classes_.tolist()!r}")
            clf.input_ = state["input"]
            clf._restore_history(state, meta if what == "training" else None)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: corrupt {what} state ({exc})") from None
        if clf.input_ not in INPUTS[1:] or len(clf.classes_) != model.config["num_classes"] \
                or (clf.input_ == "text") != (vocab is not None) \
                or (clf.input_ == "features") != (model.config["input_size"] is not None):
            raise ValueError(f"{path}: the estimator state does not match the network "
                             f"(input {clf.input_!r}, classes {clf.classes_.tolist()!r})")
        clf.model_, clf.vocabulary_ = model, vocab
        if vocab is not None:               # built with the parameters that come with it
            clf._vocabulary_params = dict(vocab_size=clf.vocab_size, min_freq=clf.min_freq)
        changed = clf._network_changes()
        if changed:
            raise ValueError(f"{path}: the estimator state does not match the network (its "
                             f"parameters say {', '.join(changed)})")
        if hasattr(clf, "n_features_in_") and model.config["input_size"] != 1:
            raise ValueError(f"{path}: the estimator state does not match the network (a "
                             f"table of {clf.n_features_in_} columns: steps of 1 feature, not "
                             f"input_size {model.config['input_size']})")
        if opt_state is not None:                   # partial_fit goes on from it
            clf._optimizer = clf._new_optimizer()
            try:
                clf._optimizer.load_state_dict(opt_state)
            except ValueError as exc:
                raise ValueError(f"{path}: corrupt optimizer state ({exc})") from None
        return clf

    def _restore_history(self, state, program_meta=None):
        """The fitted attributes besides the network from a checkpoint's estimator state, or
        from ``program_meta``, a training program's (its epoch and best_val_accuracy);
        TypeError or ValueError where one has a wrong type."""
        def real_list(name):
            values = state.get(name, [])
            if not isinstance(values, list) or not all(is_real(v) for v in values):
                raise ValueError(f"{name} must be a list of numbers, got {values!r}")
            return list(values)
        source, names = (state, ("n_iter", "best_validation_score")) if program_meta is None \
            else (program_meta, ("epoch", "best_val_accuracy"))
        n_iter, best = source.get(names[0], 0), source.get(names[1])
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
            raise ValueError(f"{names[0]} must be an integer >= 0, got {n_iter!r}")
        if best is not None and not is_real(best):
            raise ValueError(f"{names[1]} must be a number or null, got {best!r}")
        self.n_iter_, self.best_validation_score_ = n_iter, best
        if "rng_state" in state:
            self._rng = generator_from_state(state["rng_state"])
        self.loss_curve_ = real_list("loss_curve")
        self.validation_scores_ = real_list("validation_scores")
        if "n_features_in" in state:
            self.n_features_in_ = check_size(state["n_features_in"], "n_features_in")
        if "feature_names_in" in state:
            names = state["feature_names_in"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                    or len(names) != getattr(self, "n_features_in_", None):
                raise ValueError(f"feature_names_in must be n_features_in strings, got {names!r}")
            self.feature_names_in_ = np.asarray(names, dtype=object)

    # ---- training ----------------------------------------------------------------------

    def _train(self, corpus, targets, rng, epochs, early_stopping, weights=None):
        """``epochs`` epochs of ``_optimizer`` over mini-batches of similar length; early
        stopping on a hold-out if asked.  ``weights``: each sequence's weight, or None."""
        train_rows = np.arange(len(corpus))
        val_rows = None
        if early_stopping:
            order = rng.permutation(len(corpus))
            n_val = max(1, int(round(self.validation_fraction * len(corpus))))
            if n_val >= len(corpus):
                raise ValueError(f"early stopping needs more than {len(corpus)} sequences "
                                 f"to hold out {self.validation_fraction} of them")
            val_rows, train_rows = np.sort(order[:n_val]), order[n_val:]
            val = _subset(corpus, val_rows)
        train = _subset(corpus, train_rows)
        y_train = targets[train_rows]
        w_train = None if weights is None else weights[train_rows]
        model, opt = self.model_, self._optimizer
        trainer = make_trainer(model, opt)             # on the GPU: every array there
        best_params, since_best = None, 0
        if early_stopping:
            self.best_validation_score_ = None
        for epoch in range(self.n_iter_ + 1, self.n_iter_ + epochs + 1):
            t0, loss_sum = time.perf_counter(), 0.0
            for idx in bucket_batches(train.lengths, self.batch_size, rng):
                inputs, lengths = pad_batch(train, idx)
                try:
                    loss, _ = trainer.step(inputs, lengths, y_train[idx], rng=rng,   # and the update
                                           sample_weight=None if w_train is None else w_train[idx])
                    diverged = None if math.isfinite(loss) else f"the training loss became {loss}"
                except NonFiniteGradients:
                    diverged = "the training gradients held NaN or inf"
                if diverged:
                    raise ValueError(f"{diverged} in epoch {epoch}; try a smaller lr, a clip, "
                                     "or scaled features")
                loss_sum += loss * len(idx)
            trainer.sync_to_host()                     # a GPU's model.params and opt: for predictions, copies
            self.n_iter_ = epoch
            self.loss_curve_.append(loss_sum / len(train))
            line = f"epoch {epoch}: loss {self.loss_curve_[-1]:.4f}"
            if val_rows is not None:
                correct = self._probabilities(val).argmax(1) == targets[val_rows]
                w_val = None if weights is None else weights[val_rows]
                score = float(np.average(correct, weights=w_val if w_val is not None
                                         and w_val.sum() > 0 else None))
                self.validation_scores_.append(score)
                line += f", validation accuracy {score:.4f}"
                if self.best_validation_score_ is None or score > self.best_validation_score_:
                    self.best_validation_score_, since_best = score, 0
                    best_params = {k: v.copy() for k, v in model.params.items()}
                else:
                    since_best += 1
            if self.verbose:
                seconds = time.perf_counter() - t0
                print(f"{line} ({int(train.lengths.sum()) / seconds:.0f} steps/s)")
            if val_rows is not None and since_best >= self.n_iter_no_change:
                break
        if best_params is not None:                   # the best epoch's parameters, in place
            for k, v in best_params.items():
                model.params[k][...] = v

    def _probabilities(self, corpus, batch_size=256):
        """Probabilities (n, C) in the model's dtype, in length-sorted batches."""
        probs = np.empty((len(corpus), len(self.classes_)), self.model_.dtype)
        for idx in sorted_batches(corpus.lengths, batch_size):
            inputs, lengths = pad_batch(corpus, idx)
            probs[idx] = self.model_.forward(inputs, lengths)[1]
        return probs

    # ---- input -------------------------------------------------------------------------

    def _check_params(self):
        if not isinstance(self.kind, str) or self.kind not in MODEL_KINDS:
            raise ValueError(f"kind must be one of {sorted(MODEL_KINDS)}, got {self.kind!r}")
        if self.input not in INPUTS:
            raise ValueError(f"input must be one of {INPUTS}, got {self.input!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.keep not in ("start", "end"):
            raise ValueError(f"keep must be 'start' or 'end', got {self.keep!r}")
        for name in ("hidden_size", "embed_dim", "num_layers", "block_size", "batch_size",
                     "max_epochs", "min_freq", "n_iter_no_change"):
            check_size(getattr(self, name), name, 1)
        check_size(self.vocab_size, "vocab_size", 2)
        if self.max_len is not None:
            check_size(self.max_len, "max_len", 1)
        if not (is_real(self.validation_fraction) and 0.0 < self.validation_fraction < 1.0):
            raise ValueError(f"validation_fraction must lie in (0, 1), got {self.validation_fraction}")
        if self.clip is not None and not (is_real(self.clip) and self.clip >= 0):
            raise ValueError(f"clip must be None or a finite number >= 0 (0: none), got {self.clip!r}")
        check_adam_constants(self.lr, (0.9, 0.999), 1e-8, self.weight_decay, self.clip or None)
        _check_class_weight(self.class_weight)
        check_seed(self.random_state, "random_state")
        if str(self.dtype) not in ("float32", "float64") and \
                self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    def _input_kind(self, X):
        """What X holds: "text", "ids" or "features" (``input``, or guessed from X)."""
        if isinstance(X, (str, bytes)):
            raise ValueError("X must be a sequence of sequences (e.g. a list of texts), "
                             "got a single string")
        if hasattr(X, "ndim") and X.ndim == 1 and np.asarray(X).dtype.kind in "biuf":
            raise ValueError("X is a 1-D array of numbers; a classifier of sequences needs "
                             "2-D X (n sequences, T steps). Reshape your data with "
                             "X.reshape(-1, 1) if each number is a one-step sequence.")
        if self.input != "auto":
            return self.input
        if hasattr(X, "columns") or (hasattr(X, "ndim") and X.ndim >= 2):
            return "features"                        # a table: rows are sequences of numbers
        items = list(X)
        if not items:
            raise ValueError("X holds no sequences")
        if isinstance(items[0], str):
            return "text"
        if isinstance(items[0], bytes):
            raise ValueError("X holds bytes; decode the texts to str first "
                             "([b.decode('utf-8') for b in X])")
        first = np.asarray(items[0])
        return "ids" if first.ndim == 1 and first.dtype.kind in "iu" else "features"

    def _encode(self, X, fitting):
        """X as an EncodedCorpus of ids (int32) or feature vectors (the model's dtype)."""
        X = _sized(X)
        if not fitting and self._input_kind(X) != self.input_ and self.input == "auto":
            raise ValueError(f"this classifier was fitted on {self.input_}; X looks like "
                             f"{self._input_kind(X)}")
        if self.input_ == "text":
            texts = list(X)
            if not texts:
                raise ValueError("X holds no texts")
            bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if bad is not None:
                raise ValueError(f"X[{bad}] is {type(texts[bad]).__name__}, not a text (str)")
            tokens = [tokenize(t) for t in texts]
            if fitting:
                self.vocabulary_ = Vocabulary.build(tokens, self.vocab_size, self.min_freq)
                self._vocabulary_params = dict(vocab_size=self.vocab_size, min_freq=self.min_freq)
            return encode_corpus(tokens, self.vocabulary_, self.max_len, self.keep)
        if fitting:
            self.vocabulary_ = None
        if self.input_ == "ids":
            return self._encode_ids(X, fitting)
        return self._encode_features(X, fitting)

    def _encode_ids(self, X, fitting):
        if hasattr(X, "ndim") and X.ndim == 2:       # padded (n, T): 0 after each row's end
            X = np.asarray(X)
            if X.dtype.kind not in "iu":
                raise ValueError(f"ids must be integers, got dtype {X.dtype}")
            nonzero = X != 0
            lengths = np.where(nonzero.any(1), X.shape[1] - np.argmax(nonzero[:, ::-1], 1), 0)
            rows = [row[:n] for row, n in zip(X, lengths)]
        else:
            rows = [np.asarray(r) for r in X]
        if not rows:
            raise ValueError("X holds no sequences")
        for i, r in enumerate(rows):
            if r.ndim != 1 or r.dtype.kind not in "iu":
                raise ValueError(f"sequence {i} must be a 1-D sequence of integer ids, got "
                                 f"{r.dtype} of shape {r.shape}")
            if len(r) == 0:
                raise ValueError(f"sequence {i} is empty")
            if r.min() < 1:
                raise ValueError(f"sequence {i} holds id {r.min()}; ids must be >= 1 "
                                 "(0 is padding, and only after a row's end)")
            if r.max() > ID_MAX:                     # int32 would wrap it onto another id
                raise ValueError(f"sequence {i} holds id {r.max()}; ids must be <= {ID_MAX}")
        corpus = _concatenate(rows, np.int32, self.max_len, self.keep)
        if not fitting and corpus.ids.max() >= self.model_.config["vocab_size"]:
            raise ValueError(f"id {corpus.ids.max()} is outside the vocabulary of this "
                             f"classifier (ids 1..{self.model_.config['vocab_size'] - 1} seen "
                             "at fit)")
        return corpus

    def _encode_features(self, X, fitting):
        dtype = np.dtype(self.dtype)
        if not hasattr(X, "ndim") and not hasattr(X, "columns"):
            try:                        # equal-length lists are a table, as sklearn reads them
                X = _real_array(X, np.float64)
            except ValueError:          # ragged: sequences of different lengths (or not numbers)
                X = list(X)
        if hasattr(X, "columns") or (hasattr(X, "ndim") and X.ndim == 2):
            # a table (n, T): sklearn's own checks give n_features_in_ and column names
            X = validate_data(self, X, reset=fitting, dtype=[np.float64, np.float32])
            rows = list(X.astype(dtype, copy=False)[:, :, None])
        elif hasattr(X, "ndim") and X.ndim == 3:
            rows = list(_real_array(X, dtype))
        else:
            rows = [_real_array(r, dtype) for r in X]
            rows = [r[:, None] if r.ndim == 1 else r for r in rows]
        if not rows:
            raise ValueError("X holds no sequences")
        if fitting:                     # the first sequence's width (a number there: none)
            width = rows[0].shape[1] if rows[0].ndim == 2 else None
        else:
            width = self.model_.config["input_size"]
        for i, r in enumerate(rows):
            if r.ndim != 2 or r.shape[1] != width:
                raise ValueError(f"sequence {i} has shape {r.shape}; expected (steps, "
                                 f"{width or 'features'}) feature vectors")
            if len(r) == 0:
                raise ValueError(f"sequence {i} is empty")
            if not np.isfinite(r).all():
                raise ValueError(f"sequence {i} contains NaN or inf")
        return _concatenate(rows, dtype, self.max_len, self.keep)


def _real_array(values, dtype):
    """``values`` as an array of ``dtype``; ValueError for complex numbers (a cast would
    drop their imaginary parts) and for what is not numbers."""
    arr = np.asarray(values)
    if arr.dtype.kind == "c" or (arr.dtype == object and any(isinstance(v, complex) for v in arr.flat)):
        raise ValueError("feature sequences must hold real numbers, got complex ones")
    try:
        return arr.astype(dtype, copy=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"feature sequences must hold numbers ({exc})") from None


def _check_class_weight(class_weight):
    """class_weight itself if it is None, "balanced" or a dict label -> finite weight >= 0."""
    cw = class_weight
    if not (cw is None or (isinstance(cw, str) and cw == "balanced") or (
            isinstance(cw, dict) and all(is_real(w) and w >= 0 for w in cw.values()))):
        raise ValueError(f"class_weight must be None, 'balanced' or a dict label -> finite "
                         f"weight >= 0, got {cw!r}")
    return cw


def _sized(X):
    """X itself, or as an array or a list if it can only be converted or iterated once
    (array-likes without a length, generators)."""
    if getattr(X, "ndim", None) == 0:                  # an array has __len__, but len() fails
        raise ValueError(f"X must be a sequence of sequences, got a 0-d array {X!r:.60}")
    if hasattr(X, "__len__") or isinstance(X, (str, bytes)):
        return X
    if hasattr(X, "__array__"):
        return np.asarray(X)
    if not hasattr(X, "__iter__"):
        raise ValueError(f"X must be a sequence of sequences (texts, id sequences or feature "
                         f"arrays), got {type(X).__name__}")
    return list(X)


def _plain_labels(classes):
    """Object-dtype labels as a str or numeric array; ValueError if they are neither (or mixed)."""
    values = classes.tolist()
    strings = sum(isinstance(c, str) for c in values)
    try:
        plain = np.asarray(values)
    except ValueError:                           # ragged things: tuples, lists
        plain = None
    if plain is None or 0 < strings < len(values) or plain.dtype.kind not in "biufU":
        raise ValueError("labels of mixed or object type cannot be saved; use str or numbers")
    return plain


def _json_params(params):
    """get_params() as JSON values: numpy scalars as Python ones, dtype by name, a
    Generator as None (the fit it seeded is done), and a class_weight dict as [label,
    weight] pairs (labels keep their type)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, np.random.Generator):
            value = None
        elif name == "dtype":
            value = np.dtype(value).name
        elif isinstance(value, np.generic):
            value = value.item()
        elif name == "class_weight" and isinstance(value, dict):   # JSON keys are str only
            value = [[k.item() if isinstance(k, np.generic) else k, float(w)]
                     for k, w in value.items()]
        out[name] = value
    return out


def _concatenate(rows, dtype, max_len, keep):
    """An EncodedCorpus of ``rows`` (each (T_i,) or (T_i, E)), cut to ``max_len`` steps."""
    if max_len is not None:
        rows = [r if len(r) <= max_len else (r[:max_len] if keep == "start" else r[-max_len:])
                for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    return EncodedCorpus(np.concatenate(rows).astype(dtype, copy=False), offsets)


def _subset(corpus, rows):
    """The sequences ``rows`` of ``corpus``, as a corpus of their own."""
    return _concatenate([corpus.row(i) for i in rows], corpus.ids.dtype, None, "end")
