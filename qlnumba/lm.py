"""Language model: ids -> embedding -> recurrent layers -> linear head with softmax at every step.

Each valid step t predicts the token at t + 1 (the caller passes those as ``targets``).  The
state can be carried from one call to the next, so a long text is read in chunks
(truncated BPTT: the gradient stops at a chunk's start) and generation feeds one token
at a time.

Shapes legend
  B rows, T steps, V vocabulary (id 0 = padding), E embedding width, H hidden units,
  N = sum of lengths (the valid steps)
  ids (B,T) int   targets (B,T) int in [1, V)   lengths (B,)
  embed (V,E)   head.W (V,H)   head.b (V)   recurrent parameters under "rnn."
  probs (N,V) at the valid steps, in row-major order of (b, t)
"""
import math

import numpy as np

from .kernels.embedding import embedding_forward
from .kernels.head import linear_xent_backward, linear_xent_forward
from .layers import check_fraction, dropout_mask
from .model import MODEL_KINDS, make_stack, stack_backward
from .validate import check_dtype, check_ids, check_rng, check_seed, check_size, is_real

# a reverse direction sees the future: a language model reads one direction only
LM_KINDS = tuple(k for k, (_, kw) in MODEL_KINDS.items() if not kw.get("bidirectional"))


def check_targets(targets, valid, vocab_size):
    """Next-token targets as an integer array of valid's shape (B, T), each in
    [1, vocab_size) where ``valid`` (B, T) is True (padding elsewhere is not read)."""
    targets = np.asarray(targets)
    if targets.shape != valid.shape or targets.dtype.kind not in "iu":
        raise ValueError(f"targets must be integers of shape (B, T) = {valid.shape}, got "
                         f"{targets.dtype} {targets.shape}")
    if targets[valid].min() < 1 or targets[valid].max() >= vocab_size:
        raise ValueError(f"targets must lie in [1, {vocab_size}) at the valid steps")
    return targets


def draw(weights, u):
    """The index drawn from ``weights`` (V,) (>= 0, not all 0) by ``u`` in [0, 1): the first i
    with cumsum(weights)[i] > u * cumsum(weights)[-1].  Scaling by the last partial sum, not by
    weights.sum() (summed in another order, it can be larger in the last bits), keeps the
    point below every partial sum's end, so an index of weight 0 is never drawn."""
    ends = np.cumsum(weights)
    return int(np.searchsorted(ends, u * ends[-1], side="right"))


class LanguageModel:
    """Next-token model over a vocabulary of ``vocab_size`` ids (0 is padding).

    Parameters
    ----------
    vocab_size, embed_dim, hidden_size : int
    kind : str, one of LM_KINDS ("ql", "lstm", "psug", "hgr", "gru")
    num_layers, block_size : as for :class:`qlnumba.QLLSTM`
    dropout : float in [0, 1), on the embeddings and on the head's input while training
    layer_dropout : float in [0, 1), on each recurrent layer's output but the last while
        training (between stacked layers: needs num_layers >= 2)
    dtype : np.float32 or np.float64
    seed : int or None, seeds the initialisation
    device : "cpu" or "cuda", where the recurrent layers run
    """

    def __init__(self, vocab_size, embed_dim=64, hidden_size=256, kind="ql", num_layers=1,
                 block_size=32, dropout=0.0, dtype=np.float32, seed=None, device="cpu",
                 layer_dropout=0.0):
        if kind not in LM_KINDS:
            raise ValueError(f"kind must be one of {list(LM_KINDS)} (a language model reads "
                             f"one direction), got {kind!r}")
        dropout = check_fraction(dropout, "dropout")
        layer_dropout = check_fraction(layer_dropout, "layer_dropout")
        vocab_size = check_size(vocab_size, "vocab_size", 2)     # padding and one token at least
        embed_dim = check_size(embed_dim, "embed_dim")
        block_size = check_size(block_size, "block_size")      # a GRU stack does not check it
        dtype = check_dtype(dtype)
        self.dtype = dtype
        rng = check_seed(seed)
        self.rnn = make_stack(kind, embed_dim, hidden_size, num_layers, block_size, dtype,
                              int(rng.integers(2 ** 63)), device, layer_dropout)
        hidden_size = self.rnn.hidden_size                    # checked by the stack
        self.config = dict(architecture="language_model", vocab_size=vocab_size,
                           embed_dim=embed_dim, hidden_size=hidden_size, kind=kind,
                           num_layers=self.rnn.num_layers, block_size=block_size,
                           dropout=dropout, layer_dropout=layer_dropout,
                           dtype=np.dtype(dtype).name, device=device)
        embed = rng.standard_normal((vocab_size, embed_dim)).astype(dtype)
        embed[0] = 0.0                                     # the padding row
        bound = 1.0 / math.sqrt(hidden_size)
        self.params = {"embed": embed}
        self.params.update({"rnn." + k: v for k, v in self.rnn.params.items()})
        self.params["head.W"] = rng.uniform(-bound, bound, (vocab_size, hidden_size)).astype(dtype)
        self.params["head.b"] = np.zeros(vocab_size, dtype)
        self._tape = None

    def __repr__(self):                     # the arguments that build this model (seed aside)
        return "LanguageModel(" + ", ".join(
            f"{k}={v!r}" for k, v in self.config.items() if k != "architecture") + ")"

    def param_counts(self):
        """Parameter counts of the embedding, the recurrent stack, the head and their total."""
        counts = {"embedding": self.params["embed"].size, "recurrent": self.rnn.num_params(),
                  "head": self.params["head.W"].size + self.params["head.b"].size}
        counts["total"] = sum(counts.values())
        return counts

    def initial_state(self, batch):
        """Zeros: the state before any token."""
        return self.rnn.initial_state(batch)

    def forward(self, ids, lengths=None, targets=None, state=None, rng=None, need_grad=None):
        """Mean cross-entropy over the valid steps (None without targets), the probabilities of
        the next token after each row's last valid step (B, V), and the state after it.

        ``rng`` (a numpy Generator) switches dropout on: its masks are drawn from it (the
        embeddings', each recurrent layer's but the last, the head's input, in that order).
        ``need_grad`` (default: whether there are targets) saves what ``backward`` needs;
        False with targets gives the loss at inference speed (evaluation).
        """
        V = self.config["vocab_size"]
        ids, lengths = check_ids(ids, lengths, V)
        check_rng(rng)
        B, T = ids.shape
        valid = np.arange(T)[None, :] < lengths[:, None]              # (B, T)
        if targets is not None:
            targets = check_targets(targets, valid, V)
        emb = np.empty((B, T, self.config["embed_dim"]), self.dtype)
        embedding_forward(emb, ids, self.params["embed"])
        emb_mask = dropout_mask(rng, emb.shape, self.config["dropout"], self.dtype)
        if emb_mask is not None:
            emb_mask.apply(emb, out=emb)
        scoring = targets is not None                 # the loss at every valid step
        need_grad = scoring if need_grad is None else bool(need_grad)
        if need_grad and not scoring:
            raise ValueError("need_grad=True needs targets: there is no loss to differentiate")
        out, state = self.rnn.forward(emb, lengths, state, need_grad=need_grad, rng=rng)
        if scoring:
            h = out[valid]                                             # (N, H)
            head_mask = dropout_mask(rng, h.shape, self.config["dropout"], self.dtype)
            if head_mask is not None:
                head_mask.apply(h, out=h)
            t = targets[valid].astype(np.int64)
        else:                                  # only each row's last valid step is needed
            h, head_mask = out[np.arange(B), lengths - 1], None
            t = np.zeros(B, np.int64)
        probs = np.empty((len(h), V), self.dtype)
        losses = np.empty(len(h), self.dtype)
        linear_xent_forward(probs, losses, h, t, self.params["head.W"], self.params["head.b"])
        self._tape = (ids, lengths, valid, t, emb_mask, h, head_mask, probs) if need_grad else None
        if not scoring:
            return None, probs, state
        last = np.cumsum(lengths) - 1                                  # each row's last step in N
        return float(losses.mean()), probs[last], state

    def backward(self):
        """Gradients of the last forward's mean loss; a dict with the keys of ``params``.
        The gradient stops at the initial state (truncated BPTT)."""
        if self._tape is None:
            raise ValueError("backward() needs a preceding forward() with targets")
        ids, lengths, valid, targets, emb_mask, h, head_mask, probs = self._tape
        B, T = ids.shape
        grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        dh = np.zeros_like(h)
        linear_xent_backward(dh, grads["head.W"], grads["head.b"], probs, h, targets,
                             self.params["head.W"], np.full(len(h), 1.0 / len(h)))   # the mean
        if head_mask is not None:
            head_mask.backward(dh)
        dout = np.zeros((B, T, h.shape[1]), self.dtype)
        dout[valid] = dh
        return stack_backward(self, grads, dout, emb_mask, ids)

    def score(self, ids, streams=1, steps=256):
        """Mean cross-entropy in nats per predicted token of the 1-D ids (each in [1, V)):
        every id after the first, predicted from those before it.

        The ids are read as ``streams`` equal parallel parts, each from a zero state, in
        chunks of ``steps`` with the state carried from chunk to chunk; the last
        (len(ids) - 1) % streams ids are left out.  One stream (the default) reads them
        all, left to right, and ``steps`` changes nothing but the rounding.
        """
        from .data.shakespeare import stream_batches
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or len(ids) < 2:
            raise ValueError(f"ids must be a 1-D integer array of at least 2 ids, got "
                             f"{ids.dtype} {ids.shape}")
        check_ids(ids[None, :], None, self.config["vocab_size"])
        if ids.min() < 1:
            raise ValueError("ids must be >= 1 (0 is padding)")
        streams, steps = check_size(streams, "streams"), check_size(steps, "steps")
        total, count, state = 0.0, 0, None
        for x, y, lengths in stream_batches(ids, streams, steps):
            loss, _, state = self.forward(x, lengths, y, state, need_grad=False)
            total, count = total + loss * x.size, count + x.size
        return total / count

    def generate(self, prompt, steps, rng, temperature=1.0, exclude=(0,)):
        """``steps`` new ids after ``prompt`` (1-D ids, each in [1, V)), one at a time, each
        drawn from the model's next-token probabilities sharpened by ``temperature``; the
        ids in ``exclude`` (padding, and for text usually the unknown id too) are never drawn."""
        prompt = np.asarray(prompt)
        if prompt.ndim != 1 or len(prompt) == 0:
            raise ValueError(f"prompt must be a non-empty 1-D array of ids, got shape {prompt.shape}")
        if not (is_real(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        steps = check_size(steps, "steps", 0)
        if check_rng(rng) is None:
            raise ValueError("rng must be a numpy Generator (np.random.default_rng(seed)), "
                             "got None")
        if prompt.min() < 1:
            raise ValueError("prompt ids must be >= 1 (0 is padding)")
        V = self.config["vocab_size"]
        try:
            excluded = np.array(sorted(set(exclude)))
        except TypeError:                                   # None, or not comparable ids
            excluded = np.zeros(0)
        if excluded.dtype.kind not in "iu" or 0 not in excluded or excluded[0] < 0 \
                or excluded[-1] >= V or len(excluded) >= V:
            raise ValueError(f"exclude must hold 0 (padding) and other ids in [0, {V}), and "
                             f"leave ids to draw, got {exclude}")
        _, probs, state = self.forward(prompt[None, :])
        out = np.empty(steps, np.int64)
        drawable = np.ones(probs.shape[1], bool)
        drawable[excluded] = False
        for i in range(steps):
            with np.errstate(divide="ignore"):              # log 0 = -inf: never drawn
                logp = np.where(drawable, np.log(probs[0].astype(np.float64)) / temperature, -np.inf)
            top = logp.max()
            if top == -np.inf:                              # every id left rounded to 0: uniform
                logp, top = np.where(drawable, 0.0, -np.inf), 0.0
            p = np.exp(logp - top)                          # p^(1/T), scaled: no underflow at small T
            out[i] = draw(p, rng.random())
            _, probs, state = self.forward(out[i:i + 1][None, :], state=state)
        return out
