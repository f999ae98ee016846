"""Training loops that stay on the GPU: a model's step with every array on the device.

``CudaTrainer(model, opt)`` (a ``SequenceClassifier``) and ``CudaLMTrainer(model, opt)``
(a ``LanguageModel``) copy the model's parameters and the Adam state to the device
once.  Each ``step`` then runs embedding, the recurrent stack (the cells'
``forward_device`` / ``backward_device``: ``CudaQLCell`` for the QL-LSTM kinds and
the LSTM, ``CudaGRUCell`` for the GRU; a bidirectional layer's two directions side by
side), the head, BPTT and AdamW there.  Any model kind trains so, and a classifier of
feature vectors (built with ``input_size``: no embedding) too.  ``qlnumba.model.make_trainer``
picks the trainer for a model (``HostTrainer`` for one on the CPU, the same interface), so
that the training programs and the estimator run one loop for both.

Per step, only these go to the device: the batch (one copy of ids, lengths, targets and
the head's rows; a second one of a classifier's feature vectors), dropout masks (16 bits
a value), each cell's lengths (with a QL-LSTM cell's block closes: one copy), the ids'
sort for the embedding gradient (one copy, made on the host while the forward runs) and
Adam's constants (one copy).  The losses and probabilities (after the forward) and the
gradient norm's partial sums (one copy) come back.  The language model's carried state
(a few (B, H) arrays a cell) goes there and back too: the classifier starts from zeros
made on the device.  The step's device arrays live in a ``Workspace`` (parameters and
gradients in one buffer each: one launch clears the gradients, one sums their squares,
one runs AdamW): once it has seen its largest batch, a step allocates no device memory.
``sync_to_host`` writes parameters and optimizer state back into ``model.params`` and
``opt`` (for evaluation and checkpoints).  The arithmetic is the CPU model's: the tests
check steps against ``forward`` / ``backward`` and ``Adam.step``.

Shapes legend (device arrays)
  B rows, T steps, E embedding width (or F features a step), H hidden units, D = H (one
  direction) or 2H (bidirectional: the forward direction's units, then the reverse one's),
  C outputs of the head (classes, or the vocabulary V of a language model),
  N rows under the head: B (each row's last valid step) for the classifier, the
  valid steps (sum of lengths) for the language model
  ids (B,T) int64 (or x (B,T,F))  emb (B,T,E)  out (B,T,D)  h (N,D): out's rows
  probs (N,C)  losses (N,)
"""
from functools import lru_cache

import numpy as np

from . import ops
from .arrays import Workspace, clear, copy_rows, cuda, grid_for
from ..layers import dropout_mask
from ..lm import LanguageModel, check_targets
from ..model import SequenceClassifier
from ..validate import check_ids, check_rng, check_sample_weight


@lru_cache(maxsize=None)
def kernels(dtype):
    @cuda.jit
    def dropout(out, a, bits, threshold, scale):
        """out = a * scale where bits >= threshold, else 0 (flat; out may be a): a dropout
        mask drawn on the host (``qlnumba.layers.DropoutMask``), its backward the same."""
        zero = scale - scale
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            out[i] = a[i] * (scale if bits[i] >= threshold else zero)

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

    @cuda.jit
    def add(a, b):
        """a += b (flat): the two directions' δ of a bidirectional layer's input."""
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            a[i] += b[i]

    return dict(dropout=dropout, gather_rows=gather_rows, scatter_rows=scatter_rows, add=add)


class _DeviceTrainer:
    """Parameters, gradients and Adam state on the device, and the step's parts that
    both trainers share: embedding with dropout and the recurrent stack (``_forward``),
    then the head on some of out's rows, BPTT and the update (``_head_step``)."""

    model_type = None                     # the model class a trainer takes

    def __init__(self, model, opt):
        rnn = getattr(model, "rnn", None)
        if not isinstance(model, self.model_type):
            raise ValueError(f"{type(self).__name__} trains a {self.model_type.__name__}, "
                             f"got {type(model).__name__}")
        if rnn.device != "cuda":
            raise ValueError(f"{type(self).__name__} trains models built with device='cuda', "
                             f"got one built with device={rnn.device!r}")
        if opt.params is not model.params:
            raise ValueError("opt must be the Adam over model.params")
        self.model, self.opt, self.rnn = model, opt, rnn
        self.layer_masks = []                  # set by _forward, read by _stack_backward
        self.rows = rnn._cells                 # rows[k][d]: layer k's cell of direction d
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
        # each cell's parameters and gradient accumulators (in the order of the state's
        # rows, layer k direction d at k * directions + d): views of the dicts above, and
        # device dummies (from the cell) for the parameters its switches leave out
        self.cell_params, self.cell_grads = [], []
        for cell in (cell for row in self.rows for cell in row):
            keys = {name: "rnn." + cell.prefix + name for name in cell.param_names}
            dummies = cell.device_params() if any(k not in self.params for k in keys.values()) else {}
            self.cell_params.append({n: self.params.get(k, dummies.get(n)) for n, k in keys.items()})
            self.cell_grads.append({n: self.grads.get(k, dummies.get(n)) for n, k in keys.items()})

    def _dropout(self, name, a, p, rng, out=None):
        """a (device) with a dropout mask drawn on the host (the CPU model's draw) applied,
        in place or into ``out`` (a's shape); the mask (its bits on the device, threshold,
        scale) for ``_mask``, or None where there is none (then out is left as it was)."""
        mask = dropout_mask(rng, a.shape, p, self.model.dtype)
        if mask is None:
            return None
        d_mask = (self.workspace.put(name, mask.bits.reshape(-1)), mask.threshold, mask.scale)
        self._mask(a, d_mask, out)
        return d_mask

    def _mask(self, a, d_mask, out=None):
        """a (device) times the mask, in place or into ``out``: the forward of dropout, and
        its backward on δ."""
        out = a if out is None else out
        kernels(self.dtype)["dropout"][grid_for(a.size)](out.reshape(out.size), a.reshape(a.size),
                                                         *d_mask)

    def _forward(self, d_inputs, lengths, p, rng, state=None):
        """Embedding (dropout p) and the recurrent stack, with its dropout between layers
        (``layer_masks``): (out (B,T,D), the embedding's dropout mask or None, the final
        state).  ``d_inputs``: token ids (B,T), or the
        feature vectors x (B,T,F) of a model without an embedding (a copy: dropout p
        scales it in place).  ``state``: None, zeros made on the device and no final
        state (None); or the stack's host dict, each cell's part copied in, and the final
        state copied back into a new dict of the same keys.  A bidirectional layer's
        output is its two directions' side by side (D = 2H)."""
        B, T = d_inputs.shape[:2]
        emb = d_inputs
        if d_inputs.ndim == 2:
            emb = self.workspace.empty("emb", (B, T, self.model.config["embed_dim"]))
            ops.embedding_forward(emb, d_inputs, self.params["embed"])
        d_emb_mask = self._dropout("emb_mask", emb, p, rng)
        final = None if state is None else {key: np.empty_like(v) for key, v in state.items()}
        x, i = emb, 0
        self.layer_masks = []      # [k]: the dropout mask on layer k's output, or None
        for k, row in enumerate(self.rows):
            if k > 0:                  # the CPU stack's x * mask, drawn in layer order
                d_mask = None
                if rng is not None and self.rnn.dropout > 0:    # x stays as layer k - 1 wrote it
                    x_in = self.workspace.empty(f"layer_in{k}", x.shape)
                    d_mask = self._dropout(f"layer_mask{k}", x, self.rnn.dropout, rng, out=x_in)
                    x = x_in
                self.layer_masks.append(d_mask)
            outs = []
            for cell in row:
                st = None
                if state is not None:         # the cell's part, with the keys its kernels take
                    st = self.rnn._cell_state({key: v[i].copy() for key, v in state.items()}, B)
                outs.append(cell.forward_device(x, lengths, st, self.cell_params[i]))
                if state is not None:
                    for key in final:
                        final[key][i] = st[key]
                i += 1
            x = outs[0] if len(outs) == 1 else self._side_by_side(f"layer{k}", *outs)
        return x, d_emb_mask, final

    def _side_by_side(self, name, fwd, rev):
        """(B,T,2H) = fwd (B,T,H) and rev (B,T,H) concatenated along the last axis, in
        the workspace buffer ``name`` (a layer's own: the next layer's cells keep it as
        their input for the backward pass)."""
        B, T, H = fwd.shape
        both = self.workspace.empty(name, (B, T, 2 * H))
        flat = both.reshape(both.size)
        copy_rows(flat, fwd.reshape(fwd.size), B * T, 1, 2, 1, H)          # row r -> row 2r
        copy_rows(flat[H:], rev.reshape(rev.size), B * T, 1, 2, 1, H)      # row r -> row 2r + 1
        return both

    def _stack_backward(self, dout):
        """δout (B,T,D) of the stack's output back through every layer (no gradient of
        the final state: truncated BPTT for a carried one) into the cells' gradient
        accumulators, and through the dropout between layers; returns δ of the embedding's
        output (B,T,E)."""
        i = len(self.cell_grads)
        for k in range(len(self.rows) - 1, -1, -1):
            row = self.rows[k]
            i -= len(row)
            dout = self._layer_backward(row, dout, i)
            if k > 0 and self.layer_masks[k - 1] is not None:   # _dropout in _forward
                self._mask(dout, self.layer_masks[k - 1])
        return dout

    def _layer_backward(self, row, dout, i):
        """δout (B,T,D) of one layer's output back through its cells (the state's rows i
        and, bidirectional, i + 1): δ of the layer's input."""
        ws = self.workspace
        if len(row) == 1:
            return row[0].backward_device(dout, self.cell_grads[i], None)
        B, T, D = dout.shape
        H = D // 2
        flat = dout.reshape(dout.size)
        halves = ws.empty("dout_fwd", (B, T, H)), ws.empty("dout_rev", (B, T, H))
        copy_rows(halves[0].reshape(B * T * H), flat, B * T, 1, 1, 2, H)     # row 2r -> row r
        copy_rows(halves[1].reshape(B * T * H), flat[H:], B * T, 1, 1, 2, H)  # row 2r+1 -> r
        dx_fwd = row[0].backward_device(halves[0], self.cell_grads[i], None)
        dx_rev = row[1].backward_device(halves[1], self.cell_grads[i + 1], None)
        kernels(self.dtype)["add"][grid_for(dx_fwd.size)](dx_fwd.reshape(dx_fwd.size),
                                                           dx_rev.reshape(dx_rev.size))
        return dx_fwd                         # both directions read the layer's input

    def _id_runs(self, ids):
        """The embedding gradient's id runs, sorted on the host (call it while the device
        runs the forward pass: launches return at once) and copied over."""
        order, starts, uniq = ops.id_segments(ids)
        runs = self.workspace.put_many("segments", dict(order=order, starts=starts, uniq=uniq),
                                       np.int64)
        return runs["order"], runs["starts"], runs["uniq"]

    def _head_step(self, x, d_rows, d_targets, d_ids, ids, d_emb_mask, p, rng, d_pick=None,
                   parts=1, shares=None):
        """The step after the stack's forward: the head on N rows h (N, D) gathered from
        out (B,T,D), with dropout p; softmax cross-entropy against d_targets (N,); then,
        where the mean loss is finite, BPTT back through the stack and the embedding, and
        AdamW on everything.  Each of h's rows is ``parts`` pieces of D / parts values:
        h read as (N*parts, D/parts) is the rows ``d_rows`` (N*parts,) of out read as
        (B*T*parts, D/parts) (parts = 2: a bidirectional layer's two directions, from two
        steps).  d_ids and ids: the batch's token ids on the device and the host (None for
        a model of feature vectors: no embedding gradient).  ``shares``: None (the mean
        loss), or each row's share w_i / N of the loss as in ``model.forward``, a pair
        (float64 (N,) on the host, its copy on the device, made before the forward: a copy
        now would wait for it).  Returns (mean loss, the probabilities (N, C), or the rows
        ``d_pick`` of them, on the host).  The gradient stops at the initial state
        (truncated BPTT for a carried one)."""
        k, ws, P, G = kernels(self.dtype), self.workspace, self.params, self.grads
        B, T, D = x.shape
        N, C, W = d_rows.shape[0] // parts, P["head.b"].shape[0], D // parts
        h = ws.empty("h", (N, D))                                      # out's rows
        k["gather_rows"][grid_for(N * D)](h.reshape(N * parts, W), x.reshape(B * T * parts, W), d_rows)
        d_head_mask = self._dropout("head_mask", h, p, rng)
        probs, losses = ws.empty("probs", (N, C)), ws.empty("losses", (N,))
        ops.linear_xent_forward(probs, losses, h, d_targets, P["head.W"], P["head.b"])
        picked = probs
        if d_pick is not None:
            picked = ws.empty("picked", (d_pick.shape[0], C))
            k["gather_rows"][grid_for(picked.size)](picked, probs, d_pick)
        id_runs = None if ids is None else self._id_runs(ids)
        host_losses = losses.copy_to_host()                           # the loss as model.forward's
        loss = float(host_losses.mean() if shares is None else host_losses @ shares[0])
        host_probs = picked.copy_to_host()          # now, not after the update: no wait there
        if not np.isfinite(loss):                   # the caller stops; nothing is updated
            return loss, host_probs

        clear(self.grad_flat)
        dh = ws.zeros("dh", (N, D))
        ops.linear_xent_backward(dh, G["head.W"], G["head.b"], probs, h, d_targets, P["head.W"],
                                 1.0 / N if shares is None else shares[1],
                                 dlogits=ws.empty("dlogits", (N, C)))
        if d_head_mask is not None:
            self._mask(dh, d_head_mask)
        dout = ws.zeros("dout", (B, T, D))
        k["scatter_rows"][grid_for(N * D)](dout.reshape(B * T * parts, W), dh.reshape(N * parts, W),
                                           d_rows)
        dout = self._stack_backward(dout)
        if id_runs is not None:               # δ of the features themselves is not needed
            if d_emb_mask is not None:
                self._mask(dout, d_emb_mask)
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
    model : SequenceClassifier built with device="cuda": any kind ("ql", "lstm", "psug",
        "hgr", "gru", "biql", "bilstm", "bigru"), any number of layers, token ids
        (vocab_size) or feature vectors (input_size) in
    opt : qlnumba.Adam over ``model.params``: its constants, and its m, v, t as the
        starting state
    """

    model_type = SequenceClassifier

    def step(self, ids, lengths, targets, rng=None, sample_weight=None):
        """One training step on the batch; returns (mean loss, probabilities (B, C)) like
        ``model.forward``.  ``ids``: token ids (B, T), or for a model built with
        ``input_size`` feature vectors x (B, T, input_size) of its dtype.  ``rng`` draws
        the dropout masks (in the CPU model's order); ``sample_weight`` (B,) weighs each
        row's loss, as in ``model.forward``.  A loss that is not finite is returned without
        a backward pass or an update."""
        model, ws = self.model, self.workspace
        inputs, lengths = model._check_inputs(ids, lengths)
        check_rng(rng)
        B, T = inputs.shape[:2]
        C = model.config["num_classes"]
        targets = np.asarray(targets)
        if targets.shape != (B,) or targets.dtype.kind not in "iu" or \
                targets.min() < 0 or targets.max() >= C:
            raise ValueError(f"targets must be (B,) = ({B},) integers in [0, {C})")
        shares = None
        if sample_weight is not None:                  # each row's loss share, w_i / B
            host_shares = check_sample_weight(sample_weight, B) / B
            shares = host_shares, ws.put("shares", host_shares)
        last = np.arange(B) * T + lengths - 1                 # each row's last step in (B*T)
        parts = self.rnn.directions
        if parts == 2:       # as model._last_step: the reverse direction's last step is step 0
            last = np.stack([2 * last, 2 * np.arange(B) * T + 1], axis=1).reshape(2 * B)
        ints = dict(lengths=lengths, targets=targets, last=last)
        if model.takes_ids:
            batch = ws.put_many("batch", dict(ids=inputs, **ints), np.int64)
            d_inputs, ids = batch["ids"], inputs
        else:                                          # the features: a second copy
            batch, d_inputs, ids = ws.put_many("batch", ints, np.int64), ws.put("x", inputs), None
        x, d_emb_mask, _ = self._forward(d_inputs, lengths, model.config["embed_dropout"], rng)
        return self._head_step(x, batch["last"], batch["targets"], batch.get("ids"), ids,
                               d_emb_mask, model.config["head_dropout"], rng, parts=parts,
                               shares=shares)


class CudaLMTrainer(_DeviceTrainer):
    """Train a ``LanguageModel(device="cuda")`` with parameters, activations and Adam
    state resident on the GPU; the state carried from chunk to chunk (truncated BPTT)
    is a host dict, as for ``model.forward``.

    Parameters
    ----------
    model : LanguageModel built with device="cuda", any kind ("ql", "lstm", "psug", "hgr",
        "gru")
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
        check_rng(rng)
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
