"""Training loops that stay on the GPU: a model's step with every array on the device.

``CudaTrainer(model, opt)`` (a ``SequenceClassifier``) and ``CudaLMTrainer(model, opt)``
(a ``LanguageModel``) copy the model's parameters and the Adam state to the device
once.  Each ``step`` then runs embedding, the recurrent stack
(``CudaQLCell.forward_device`` / ``backward_device``), the head, BPTT and AdamW there.
Per step, only the batch (one copy of ids, lengths, targets and the head's rows;
dropout masks), each layer's lengths and block closes (one copy), the ids' sort for
the embedding gradient (one copy, made on the host while the forward runs) and Adam's
constants (one copy) go to the device, and the losses and probabilities (after the
forward) and the gradient norm's partial sums (one copy) come back.  The language
model's carried state (a few (B, H) arrays a layer) goes there and back too: the
classifier starts from zeros made on the device.  The step's device arrays live in a
``Workspace`` (parameters and gradients in one buffer each: one launch clears the
gradients, one sums their squares, one runs AdamW): once it has seen its largest
batch, a step allocates no device memory.  ``sync_to_host`` writes parameters and
optimizer state back into ``model.params`` and ``opt`` (for evaluation and
checkpoints).  The arithmetic is the CPU model's: the tests check steps against
``forward`` / ``backward`` and ``Adam.step``.

Shapes legend (device arrays)
  B rows, T steps, E embedding width, H hidden units (D = H: one direction),
  C outputs of the head (classes, or the vocabulary V of a language model),
  N rows under the head: B (each row's last valid step) for the classifier, the
  valid steps (sum of lengths) for the language model
  ids (B,T) int64  emb (B,T,E)  out (B,T,D)  h (N,D): out's rows  probs (N,C)  losses (N,)
"""
from functools import lru_cache

import numpy as np

from . import ops
from .arrays import Workspace, clear, cuda, grid_for
from ..lm import LanguageModel, check_targets
from ..model import SequenceClassifier, dropout_mask
from ..validate import check_ids
from .recurrent import PARAM_NAMES, CudaQLCell


@lru_cache(maxsize=None)
def kernels(dtype):
    @cuda.jit
    def scale(a, mask):
        """a *= mask (flat): a dropout mask drawn on the host."""
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            a[i] *= mask[i]

    @cuda.jit
    def gather_rows(dst, src, rows):
        """dst[i] = src[rows[i]]: dst (N, D), src (M, D) (out (B,T,D) read as (B*T, D))."""
        N, D = dst.shape
        for idx in range(cuda.grid(1), N * D, cuda.gridsize(1)):
            i, d = idx // D, idx % D
            dst[i, d] = src[rows[i], d]

    @cuda.jit
    def scatter_rows(dst, src, rows):
        """dst[rows[i]] = src[i], the backward of gather_rows; the rows are distinct (no
        two threads write one place) and the caller zeroes dst's other rows."""
        N, D = src.shape
        for idx in range(cuda.grid(1), N * D, cuda.gridsize(1)):
            i, d = idx // D, idx % D
            dst[rows[i], d] = src[i, d]

    return dict(scale=scale, gather_rows=gather_rows, scatter_rows=scatter_rows)


class _DeviceTrainer:
    """Parameters, gradients and Adam state on the device, and the step's parts that
    both trainers share: embedding with dropout and the recurrent stack (``_forward``),
    then the head on some of out's rows, BPTT and the update (``_head_step``)."""

    model_type = None                     # the model class a trainer takes

    def __init__(self, model, opt):
        rnn = getattr(model, "rnn", None)
        cells = [row[0] for row in rnn._cells] if rnn is not None else []
        if not isinstance(model, self.model_type):
            raise ValueError(f"{type(self).__name__} trains a {self.model_type.__name__}, "
                             f"got {type(model).__name__}")
        if rnn.directions != 1 or not all(isinstance(c, CudaQLCell) for c in cells):
            raise ValueError(f"{type(self).__name__} trains one-direction QL-LSTM stacks built "
                             f"with device='cuda' (kinds ql, lstm, psug, hgr); train bilstm and "
                             f"gru with the host loop (model.forward / backward)")
        if not getattr(model, "takes_ids", True):
            raise ValueError(f"{type(self).__name__} trains models that read token ids (built "
                             f"with vocab_size); train a model of feature vectors with the "
                             f"host loop")
        if opt.params is not model.params:
            raise ValueError("opt must be the Adam over model.params")
        self.model, self.opt, self.cells = model, opt, cells
        self.dtype = np.dtype(model.dtype)
        self.workspace = Workspace(self.dtype)
        # parameters and gradients: views of one buffer each, laid out alike, so that a
        # step clears the gradients in one launch and Adam updates everything in one
        shapes = {k: v.shape for k, v in model.params.items()}
        self.params = self.workspace.put_many("params", model.params)
        param_flat, _, starts = self.workspace.carve("params", shapes)
        self.grad_flat, self.grads, _ = self.workspace.carve("grads", shapes)
        self.adam = ops.CudaAdam(self.params, lr=opt.lr, betas=opt.betas, eps=opt.eps,
                                 weight_decay=opt.weight_decay, clip_norm=opt.clip_norm,
                                 arena=(param_flat, starts))
        self.adam.t = opt.t
        for k in model.params:
            self.adam.m[k].copy_to_device(opt.m[k])
            self.adam.v[k].copy_to_device(opt.v[k])
        # each cell's parameters and gradient accumulators: views of the dicts above,
        # and device dummies (from the cell) for the parameters its switches leave out
        self.cell_params, self.cell_grads = [], []
        for cell in cells:
            dummies = cell.device_params()
            keys = {name: "rnn." + cell.prefix + name for name in PARAM_NAMES}
            self.cell_params.append({n: self.params.get(k, dummies[n]) for n, k in keys.items()})
            self.cell_grads.append({n: self.grads.get(k, dummies[n]) for n, k in keys.items()})

    def _dropout(self, name, a, p, rng):
        """a (device) *= a dropout mask drawn on the host (the CPU model's draw); the mask's
        device copy, or None where there is none."""
        mask = dropout_mask(rng, a.shape, p, self.model.dtype)
        if mask is None:
            return None
        d_mask = self.workspace.put(name, mask.reshape(-1))
        kernels(self.dtype)["scale"][grid_for(a.size)](a.reshape(a.size), d_mask)
        return d_mask

    def _forward(self, d_ids, lengths, p, rng, state=None):
        """Embedding (dropout p) and the recurrent stack: (out (B,T,D), the embedding's
        dropout mask or None, the final state).  ``state``: None, zeros made on the device
        and no final state (None); or the stack's host dict, each layer's part copied in,
        and the final state copied back into a new dict of the same keys."""
        B, T = d_ids.shape
        emb = self.workspace.empty("emb", (B, T, self.model.config["embed_dim"]))
        ops.embedding_forward(emb, d_ids, self.params["embed"])
        d_emb_mask = self._dropout("emb_mask", emb, p, rng)
        final = None if state is None else {key: np.empty_like(v) for key, v in state.items()}
        x = emb
        for i, (cell, cp) in enumerate(zip(self.cells, self.cell_params)):
            st = None
            if state is not None:             # the layer's part, with the keys its kernels take
                st = self.model.rnn._cell_state({key: v[i].copy() for key, v in state.items()}, B)
            x = cell.forward_device(x, lengths, st, cp)
            if state is not None:
                for key in final:
                    final[key][i] = st[key]
        return x, d_emb_mask, final

    def _id_runs(self, ids):
        """The embedding gradient's id runs, sorted on the host (call it while the device
        runs the forward pass: launches return at once) and copied over."""
        order, starts, uniq = ops.id_segments(ids)
        runs = self.workspace.put_many("segments", dict(order=order, starts=starts, uniq=uniq),
                                       np.int64)
        return runs["order"], runs["starts"], runs["uniq"]

    def _head_step(self, x, d_rows, d_targets, d_ids, ids, d_emb_mask, p, rng, d_pick=None):
        """The step after the stack's forward: the head on the rows ``d_rows`` (N) of out
        (B,T,D) read as (B*T, D), with dropout p; softmax cross-entropy against d_targets
        (N,); then, where the mean loss is finite, BPTT back through the stack and the
        embedding, and AdamW on everything.  Returns (mean loss, the probabilities (N, C),
        or the rows ``d_pick`` of them, on the host).  The gradient stops at the initial
        state (truncated BPTT for a carried one)."""
        k, ws, P, G = kernels(self.dtype), self.workspace, self.params, self.grads
        B, T, D = x.shape
        N, C = d_rows.shape[0], P["head.b"].shape[0]
        h = ws.empty("h", (N, D))                                      # out's rows
        k["gather_rows"][grid_for(N * D)](h, x.reshape(B * T, D), d_rows)
        d_head_mask = self._dropout("head_mask", h, p, rng)
        probs, losses = ws.empty("probs", (N, C)), ws.empty("losses", (N,))
        ops.linear_xent_forward(probs, losses, h, d_targets, P["head.W"], P["head.b"])
        picked = probs
        if d_pick is not None:
            picked = ws.empty("picked", (d_pick.shape[0], C))
            k["gather_rows"][grid_for(picked.size)](picked, probs, d_pick)
        id_runs = self._id_runs(ids)
        loss = float(losses.copy_to_host().mean())                     # as model.forward
        host_probs = picked.copy_to_host()          # now, not after the update: no wait there
        if not np.isfinite(loss):                   # the caller stops; nothing is updated
            return loss, host_probs

        clear(self.grad_flat)
        dh = ws.zeros("dh", (N, D))
        ops.linear_xent_backward(dh, G["head.W"], G["head.b"], probs, h, d_targets, P["head.W"],
                                 1.0 / N, dlogits=ws.empty("dlogits", (N, C)))
        if d_head_mask is not None:
            k["scale"][grid_for(N * D)](dh.reshape(N * D), d_head_mask)
        dout = ws.zeros("dout", (B, T, D))
        k["scatter_rows"][grid_for(N * D)](dout.reshape(B * T, D), dh, d_rows)
        for cell, cg in zip(reversed(self.cells), reversed(self.cell_grads)):
            dout = cell.backward_device(dout, cg, None)           # no gradient of the final state
        if d_emb_mask is not None:
            k["scale"][grid_for(dout.size)](dout.reshape(dout.size), d_emb_mask)
        ops.embedding_backward(self.grads["embed"], dout, d_ids, id_runs)
        self.adam.step(self.grads, flat_grads=self.grad_flat)
        return loss, host_probs

    def sync_to_host(self):
        """Write the device parameters and Adam state into ``model.params`` and ``opt``."""
        for key, p in self.params.items():
            self.model.params[key][...] = p.copy_to_host()
            self.opt.m[key][...] = self.adam.m[key].copy_to_host()
            self.opt.v[key][...] = self.adam.v[key].copy_to_host()
        self.opt.t = self.adam.t


class CudaTrainer(_DeviceTrainer):
    """Train a ``SequenceClassifier(device="cuda")`` with parameters, activations and Adam
    state resident on the GPU.

    Parameters
    ----------
    model : SequenceClassifier built with device="cuda" and vocab_size, a one-direction
        QL-LSTM stack (kinds "ql", "lstm", "psug", "hgr"; any number of layers)
    opt : qlnumba.Adam over ``model.params``: its constants, and its m, v, t as the
        starting state
    """

    model_type = SequenceClassifier

    def step(self, ids, lengths, targets, rng=None):
        """One training step on the batch; returns (mean loss, probabilities (B, C)) like
        ``model.forward``.  ``rng`` draws the dropout masks (in the CPU model's order).  A
        loss that is not finite is returned without a backward pass or an update."""
        model, ws = self.model, self.workspace
        ids, lengths = check_ids(ids, lengths, model.config["vocab_size"])
        B, T = ids.shape
        C = model.config["num_classes"]
        targets = np.asarray(targets)
        if targets.shape != (B,) or targets.dtype.kind not in "iu" or \
                targets.min() < 0 or targets.max() >= C:
            raise ValueError(f"targets must be (B,) = ({B},) integers in [0, {C})")
        last = np.arange(B) * T + lengths - 1                 # each row's last step in (B*T)
        batch = ws.put_many("batch", dict(ids=ids, lengths=lengths, targets=targets, last=last),
                            np.int64)
        x, d_emb_mask, _ = self._forward(batch["ids"], lengths, model.config["embed_dropout"], rng)
        return self._head_step(x, batch["last"], batch["targets"], batch["ids"], ids, d_emb_mask,
                               model.config["head_dropout"], rng)


class CudaLMTrainer(_DeviceTrainer):
    """Train a ``LanguageModel(device="cuda")`` with parameters, activations and Adam
    state resident on the GPU; the state carried from chunk to chunk (truncated BPTT)
    is a host dict, as for ``model.forward``.

    Parameters
    ----------
    model : LanguageModel built with device="cuda", kind "ql", "lstm", "psug" or "hgr"
    opt : qlnumba.Adam over ``model.params``: its constants, and its m, v, t as the
        starting state
    """

    model_type = LanguageModel

    def step(self, ids, lengths, targets, state=None, rng=None):
        """One training step on the chunk; returns (mean loss over the valid steps, the
        next token's probabilities after each row's last valid step (B, V), the state
        after it) like ``model.forward``.  ``state``: the state to start from (None:
        zeros); the gradient stops there.  ``rng`` draws the dropout masks (in the CPU
        model's order).  A loss that is not finite is returned without a backward pass
        or an update."""
        model, ws = self.model, self.workspace
        V, p = model.config["vocab_size"], model.config["dropout"]
        ids, lengths = check_ids(ids, lengths, V)
        B, T = ids.shape
        valid = np.arange(T)[None, :] < lengths[:, None]              # (B, T)
        targets = check_targets(targets, valid, V)
        state = model.rnn._check_state(state, B)
        rows = np.flatnonzero(valid)              # (N,) b*T + t, in the order of out[valid]
        last = np.cumsum(lengths) - 1             # each row's last step among the N
        batch = ws.put_many("batch", dict(ids=ids, lengths=lengths, targets=targets[valid],
                                          rows=rows, last=last), np.int64)
        x, d_emb_mask, final = self._forward(batch["ids"], lengths, p, rng, state)
        loss, probs = self._head_step(x, batch["rows"], batch["targets"], batch["ids"], ids,
                                      d_emb_mask, p, rng, d_pick=batch["last"])
        return loss, probs, final
