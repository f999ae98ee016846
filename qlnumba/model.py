"""Sequence classifier: ids -> embedding -> recurrent layers -> linear head on the last valid step.

Without a vocabulary (``input_size`` instead of ``vocab_size``) the steps are feature
vectors, fed to the recurrent layers as they are: x -> recurrent layers -> head.

Shapes legend
  B rows, T padded steps, V vocabulary, E embedding width (or input features per step),
  H hidden units, D = H * directions, C classes
  ids (B,T) int, 0 = padding  or  x (B,T,E) float   lengths (B,)   targets (B,)
  embed (V,E)   head.W (C,D)   head.b (C)   recurrent parameters under "rnn."
"""
import math

import numpy as np

from .kernels.embedding import embedding_backward, embedding_forward
from .kernels.head import linear_xent_backward, linear_xent_forward
from .layers import GRU, QLLSTM, check_fraction, dropout_mask
from .validate import (check_dtype, check_float_array, check_ids, check_lengths, check_rng,
                       check_sample_weight, check_seed, check_size)

# every model kind: (layer class, keyword arguments); results/imdb.md compares them
MODEL_KINDS = {
    "ql": (QLLSTM, dict(psug=True, hgr=True)),
    "lstm": (QLLSTM, dict(psug=False, hgr=False)),
    "psug": (QLLSTM, dict(psug=True, hgr=False)),
    "hgr": (QLLSTM, dict(psug=False, hgr=True)),
    "bilstm": (QLLSTM, dict(psug=False, hgr=False, bidirectional=True)),
    "gru": (GRU, dict()),
    "biql": (QLLSTM, dict(psug=True, hgr=True, bidirectional=True)),
    "bigru": (GRU, dict(bidirectional=True)),
}


def stack_backward(model, grads, dout, emb_mask, ids):
    """δout (B,T,D) back through the recurrent stack, the dropout on its input and the
    embedding (a model of ids; for feature vectors δx is not needed), into ``grads`` (a
    dict with the keys of ``model.params``), which it returns."""
    demb, rnn_grads = model.rnn.backward(dout)
    if "embed" in grads:
        if emb_mask is not None:
            emb_mask.backward(demb)
        embedding_backward(grads["embed"], demb, ids)
    for k, g in rnn_grads.items():
        grads["rnn." + k] = g
    return grads


class HostTrainer:
    """The CPU's training step, with the device trainers' interface (``qlnumba.gpu.model``),
    so that a training loop reads the same on either: ``step(*batch, rng=rng)`` is
    ``model.forward`` with targets, then, where the loss is finite, ``model.backward`` and
    ``opt.step``; it returns what ``forward`` returns.  ``sync_to_host`` has nothing to do."""

    def __init__(self, model, opt):
        self.model, self.opt = model, opt

    def step(self, *batch, rng=None, sample_weight=None):
        weighted = {} if sample_weight is None else {"sample_weight": sample_weight}
        result = self.model.forward(*batch, rng=rng, **weighted)
        if math.isfinite(result[0]):
            self.opt.step(self.model.backward())
        return result

    def sync_to_host(self):
        pass


def make_trainer(model, opt):
    """The training step for where the model's layers run: ``HostTrainer`` on the CPU;
    on the GPU ``CudaTrainer`` (a SequenceClassifier) or ``CudaLMTrainer`` (a
    LanguageModel), with parameters, activations and Adam state there."""
    if model.rnn.device != "cuda":
        return HostTrainer(model, opt)
    from .gpu.model import CudaLMTrainer, CudaTrainer
    return (CudaTrainer if isinstance(model, SequenceClassifier) else CudaLMTrainer)(model, opt)


def make_stack(kind, input_size, hidden_size, num_layers, block_size, dtype, seed, device,
               dropout=0.0):
    """The recurrent layer stack of one of :data:`MODEL_KINDS` (GRU takes no block size);
    ``dropout`` acts between its layers while training."""
    cls, kwargs = MODEL_KINDS[kind]
    kwargs = dict(kwargs, device=device, dropout=dropout)
    if cls is QLLSTM:
        kwargs["block_size"] = block_size
    return cls(input_size, hidden_size, num_layers=num_layers, dtype=dtype, seed=seed, **kwargs)


class SequenceClassifier:
    """Embedding, a recurrent stack of one of :data:`MODEL_KINDS`, and a softmax head.

    Parameters
    ----------
    vocab_size, embed_dim, hidden_size, num_classes : int
    kind : str, one of MODEL_KINDS
    num_layers, block_size : as for :class:`qlnumba.QLLSTM`
    embed_dropout, head_dropout : float in [0, 1), dropout on the embeddings and
        on the head's input while training
    layer_dropout : float in [0, 1), dropout on each recurrent layer's output but the
        last while training (between stacked layers: needs num_layers >= 2)
    dtype : np.float32 or np.float64
    seed : int or None, seeds the initialisation
    device : "cpu" or "cuda": where the recurrent layers run (the embedding and head
        run on the CPU here).  ``qlnumba.gpu.model.CudaTrainer`` trains a model of any
        kind with everything on the GPU (embedding, head and Adam included)
    input_size : int or None.  Give it *instead of* ``vocab_size`` for steps that are
        feature vectors (B, T, input_size) rather than token ids: there is then no
        embedding, ``embed_dim`` is unused, and ``embed_dropout`` drops input features.
    """

    def __init__(self, vocab_size=None, embed_dim=128, hidden_size=256, num_classes=2, kind="ql",
                 num_layers=1, block_size=32, embed_dropout=0.0, head_dropout=0.0,
                 dtype=np.float32, seed=None, device="cpu", input_size=None, layer_dropout=0.0):
        if not isinstance(kind, str) or kind not in MODEL_KINDS:      # a list: not hashable
            raise ValueError(f"kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
        embed_dropout = check_fraction(embed_dropout, "embed_dropout")
        head_dropout = check_fraction(head_dropout, "head_dropout")
        layer_dropout = check_fraction(layer_dropout, "layer_dropout")
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give exactly one of vocab_size (token ids in) and input_size "
                             f"(feature vectors in), got {vocab_size!r} and {input_size!r}")
        dense = input_size is not None
        if dense:
            input_size = check_size(input_size, "input_size")
        else:                              # the vocabulary: padding and at least one token
            vocab_size = check_size(vocab_size, "vocab_size", 2)
            embed_dim = check_size(embed_dim, "embed_dim")
        num_classes = check_size(num_classes, "num_classes", 2)
        block_size = check_size(block_size, "block_size")      # a GRU stack does not check it
        dtype = check_dtype(dtype)
        self.dtype = dtype
        rng = check_seed(seed)
        self.rnn = make_stack(kind, input_size if dense else embed_dim, hidden_size, num_layers,
                              block_size, dtype, int(rng.integers(2 ** 63)), device, layer_dropout)
        hidden_size = self.rnn.hidden_size                    # checked by the stack
        self.config = dict(vocab_size=None if dense else vocab_size,
                           embed_dim=None if dense else embed_dim,
                           hidden_size=hidden_size, num_classes=num_classes, kind=kind,
                           num_layers=self.rnn.num_layers, block_size=block_size,
                           embed_dropout=embed_dropout, head_dropout=head_dropout,
                           layer_dropout=layer_dropout, dtype=np.dtype(dtype).name, device=device,
                           input_size=input_size if dense else None)
        D = hidden_size * self.rnn.directions
        self.params = {}
        if not dense:
            embed = rng.standard_normal((vocab_size, embed_dim)).astype(dtype)
            embed[0] = 0.0                                 # the padding row
            self.params["embed"] = embed
        bound = 1.0 / math.sqrt(D)
        self.params.update({"rnn." + k: v for k, v in self.rnn.params.items()})
        self.params["head.W"] = rng.uniform(-bound, bound, (num_classes, D)).astype(dtype)
        self.params["head.b"] = np.zeros(num_classes, dtype)
        self._tape = None

    def __repr__(self):                     # the arguments that build this model (seed aside)
        return "SequenceClassifier(" + ", ".join(
            f"{k}={v!r}" for k, v in self.config.items() if v is not None) + ")"

    def param_counts(self):
        """Parameter counts of the three parts and their total."""
        embed = self.params.get("embed")
        counts = {"embedding": 0 if embed is None else embed.size, "recurrent": self.rnn.num_params(),
                  "head": self.params["head.W"].size + self.params["head.b"].size}
        counts["total"] = sum(counts.values())
        return counts

    @property
    def takes_ids(self):
        """True: inputs are token ids (B, T); False: feature vectors (B, T, input_size)."""
        return self.config["input_size"] is None

    def _check_inputs(self, inputs, lengths):
        """ids as int64 (B, T), or x as a C-contiguous array of the model's dtype; lengths (B,)."""
        if self.takes_ids:
            return check_ids(inputs, lengths, self.config["vocab_size"])
        x = check_float_array(inputs, "x", 3, self.dtype, (None, None, self.config["input_size"]))
        return x, check_lengths(lengths, *x.shape[:2])


    def forward(self, ids, lengths=None, targets=None, rng=None, sample_weight=None):
        """Mean cross-entropy loss (None without targets) and class probabilities (B, C).

        ``ids`` are token ids (B, T), or, for a model built with ``input_size``, feature
        vectors x (B, T, input_size) of the model's dtype.  ``rng`` (a numpy Generator)
        switches training mode on: dropout masks are drawn from it (the embeddings', each
        recurrent layer's but the last, the head's input, in that order).  Without it the
        model runs in evaluation mode.  ``sample_weight`` (B,), numbers >= 0 (with targets):
        the loss is the mean of each row's loss times its weight, sum_i w_i l_i / B.
        """
        ids, lengths = self._check_inputs(ids, lengths)
        check_rng(rng)
        B, T = ids.shape[:2]
        C = self.config["num_classes"]
        if targets is not None:
            targets = np.asarray(targets)
            if targets.shape != (B,) or targets.dtype.kind not in "iu" or \
                    targets.min() < 0 or targets.max() >= C:
                raise ValueError(f"targets must be (B,) = ({B},) integers in [0, {C})")
            targets = targets.astype(np.int64)
        if sample_weight is not None:
            if targets is None:
                raise ValueError("sample_weight weighs each row's loss: it needs targets")
            sample_weight = check_sample_weight(sample_weight, B)
        if self.takes_ids:
            emb = np.empty((B, T, self.config["embed_dim"]), self.dtype)
            embedding_forward(emb, ids, self.params["embed"])
        else:
            emb = ids                                      # the caller's array: never written
        emb_mask = dropout_mask(rng, emb.shape, self.config["embed_dropout"], self.dtype)
        if emb_mask is not None:                           # in place in our own buffer only
            emb = emb_mask.apply(emb, out=emb if self.takes_ids else None)
        out, _ = self.rnn.forward(emb, lengths, need_grad=targets is not None, rng=rng)
        h_last = self._last_step(out, lengths)
        head_mask = dropout_mask(rng, h_last.shape, self.config["head_dropout"], self.dtype)
        if head_mask is not None:
            head_mask.apply(h_last, out=h_last)
        probs = np.empty((B, C), self.dtype)
        losses = np.empty(B, self.dtype)
        t = np.zeros(B, np.int64) if targets is None else targets
        linear_xent_forward(probs, losses, h_last, t, self.params["head.W"], self.params["head.b"])
        if targets is None:
            self._tape = (ids, lengths, t, emb_mask, h_last, head_mask, probs, None, False)
            return None, probs
        # each row's share of the loss, for backward: 1/B, or w_i/B with sample weights
        shares = np.full(B, 1.0 / B) if sample_weight is None else sample_weight / B
        self._tape = (ids, lengths, t, emb_mask, h_last, head_mask, probs, shares, True)
        return float(losses.mean() if sample_weight is None else losses @ shares), probs

    def backward(self):
        """Gradients of the last forward's mean loss; a dict with the keys of ``params``."""
        if self._tape is None or not self._tape[-1]:
            raise ValueError("backward() needs a preceding forward() with targets")
        ids, lengths, targets, emb_mask, h_last, head_mask, probs, shares, _ = self._tape
        B, T = ids.shape[:2]
        grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        dh_last = np.zeros_like(h_last)
        linear_xent_backward(dh_last, grads["head.W"], grads["head.b"], probs, h_last, targets,
                             self.params["head.W"], shares)
        if head_mask is not None:
            head_mask.backward(dh_last)
        dout = np.zeros((B, T, h_last.shape[1]), self.dtype)
        self._scatter_last_step(dout, dh_last, lengths)
        return stack_backward(self, grads, dout, emb_mask, ids)

    def predict_proba(self, ids, lengths=None, batch_size=256):
        """Class probabilities (N, C), evaluated in batches, no dropout."""
        ids, lengths = self._check_inputs(ids, lengths)
        batch_size = check_size(batch_size, "batch_size")
        out = []
        for i in range(0, len(ids), batch_size):
            T = int(lengths[i:i + batch_size].max())
            out.append(self.forward(ids[i:i + batch_size, :T], lengths[i:i + batch_size])[1])
        return np.concatenate(out)

    def _last_step(self, out, lengths):
        """h_last: forward direction at the row's last valid step, reverse direction at step 0."""
        H = self.config["hidden_size"]
        rows = np.arange(out.shape[0])
        h_last = out[rows, lengths - 1].copy()
        if self.rnn.directions == 2:
            h_last[:, H:] = out[:, 0, H:]
        return h_last

    def _scatter_last_step(self, dout, dh_last, lengths):
        H = self.config["hidden_size"]
        rows = np.arange(dout.shape[0])
        if self.rnn.directions == 2:
            dout[rows, lengths - 1, :H] = dh_last[:, :H]
            dout[:, 0, H:] += dh_last[:, H:]
        else:
            dout[rows, lengths - 1] = dh_last


def count_params(obj):
    """Embedding, recurrent and head parameter counts of a model, or of a bare layer."""
    if hasattr(obj, "param_counts"):                   # SequenceClassifier, LanguageModel
        return obj.param_counts()
    if not hasattr(obj, "num_params"):
        raise ValueError(f"count_params takes a model or a layer, got {type(obj).__name__}")
    n = obj.num_params()
    return {"embedding": 0, "recurrent": n, "head": 0, "total": n}
