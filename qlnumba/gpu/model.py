"""A training loop that stays on the GPU: SequenceClassifier's step with every array on the device.

``CudaTrainer(model, opt)`` copies the model's parameters and the Adam state to
the device once.  Each ``step`` then runs embedding, the recurrent stack
(``CudaQLCell.forward_device`` / ``backward_device``, zero initial states made on
the device), the head, BPTT and AdamW there.  Per step, only the batch (one copy
of ids, lengths, targets; dropout masks), each layer's lengths and block closes
(one copy), the ids' sort for the embedding gradient (one copy, made on the host
while the forward runs) and Adam's constants (one copy) go to the device, and the
losses and probabilities (after the forward) and the gradient norm's partial sums
(one copy) come back.  The step's device
arrays live in a ``Workspace`` (parameters and gradients in one buffer each: one
launch clears the gradients, one sums their squares, one runs AdamW): once it has
seen its largest batch, a step allocates no device memory.
``sync_to_host`` writes parameters and optimizer state back into ``model.params``
and ``opt`` (for evaluation and checkpoints).  The arithmetic is the CPU model's:
the tests check a step against ``SequenceClassifier.forward`` / ``backward`` and
``Adam.step``.

Shapes legend (device arrays)
  B rows, T steps, E embedding width, H hidden units, C classes
  ids (B,T) int64  emb (B,T,E)  out (B,T,H)  h_last (B,H)  probs (B,C)  losses (B,)
"""
from functools import lru_cache

import numpy as np

from . import ops
from .arrays import Workspace, clear, cuda, grid_for
from ..model import dropout_mask
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
    def last_step_forward(h_last, out, lengths):
        """h_last[b] = out[b, lengths[b] - 1]."""
        B, D = h_last.shape
        for idx in range(cuda.grid(1), B * D, cuda.gridsize(1)):
            b, d = idx // D, idx % D
            h_last[b, d] = out[b, lengths[b] - 1, d]

    @cuda.jit
    def last_step_backward(dout, dh_last, lengths):
        """dout[b, lengths[b] - 1] = dh_last[b] (dout zeroed elsewhere)."""
        B, D = dh_last.shape
        for idx in range(cuda.grid(1), B * D, cuda.gridsize(1)):
            b, d = idx // D, idx % D
            dout[b, lengths[b] - 1, d] = dh_last[b, d]

    return dict(scale=scale, last_step_forward=last_step_forward,
                last_step_backward=last_step_backward)


class CudaTrainer:
    """Train a ``SequenceClassifier(device="cuda")`` with parameters, activations and Adam
    state resident on the GPU.

    Parameters
    ----------
    model : SequenceClassifier built with device="cuda", a one-direction QL-LSTM stack
        (kinds "ql", "lstm", "psug", "hgr"; any number of layers)
    opt : qlnumba.Adam over ``model.params``: its constants, and its m, v, t as the
        starting state
    """

    def __init__(self, model, opt):
        rnn = model.rnn
        cells = [row[0] for row in rnn._cells]
        if rnn.directions != 1 or not all(isinstance(c, CudaQLCell) for c in cells):
            raise ValueError("CudaTrainer trains one-direction QL-LSTM stacks built with "
                             "device='cuda' (kinds ql, lstm, psug, hgr); train bilstm and gru "
                             "with the host loop (model.forward / backward)")
        if not model.takes_ids:
            raise ValueError("CudaTrainer trains models that read token ids (built with "
                             "vocab_size); train a model of feature vectors with the host loop")
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

    def step(self, ids, lengths, targets, rng=None):
        """One training step on the batch; returns (mean loss, probabilities (B, C)) like
        ``model.forward``.  ``rng`` draws the dropout masks (in the CPU model's order).  A
        loss that is not finite is returned without a backward pass or an update."""
        model, k = self.model, kernels(self.dtype)
        ids, lengths = check_ids(ids, lengths, model.config["vocab_size"])
        B, T = ids.shape
        C, E = model.config["num_classes"], model.config["embed_dim"]
        targets = np.asarray(targets)
        if targets.shape != (B,) or targets.dtype.kind not in "iu" or \
                targets.min() < 0 or targets.max() >= C:
            raise ValueError(f"targets must be (B,) = ({B},) integers in [0, {C})")
        ws = self.workspace
        batch = ws.put_many("batch", dict(ids=ids, lengths=lengths, targets=targets), np.int64)
        d_ids, d_len, d_targets = batch["ids"], batch["lengths"], batch["targets"]
        P, G = self.params, self.grads
        emb = ws.empty("emb", (B, T, E))
        ops.embedding_forward(emb, d_ids, P["embed"])
        emb_mask = dropout_mask(rng, emb.shape, model.config["embed_dropout"], model.dtype)
        if emb_mask is not None:
            d_emb_mask = ws.put("emb_mask", emb_mask.reshape(-1))
            k["scale"][grid_for(emb.size)](emb.reshape(emb.size), d_emb_mask)
        x = emb
        for cell, cp in zip(self.cells, self.cell_params):
            x = cell.forward_device(x, lengths, None, cp)         # zero initial state
        D = x.shape[2]
        h_last = ws.empty("h_last", (B, D))
        k["last_step_forward"][grid_for(B * D)](h_last, x, d_len)
        head_mask = dropout_mask(rng, (B, D), model.config["head_dropout"], model.dtype)
        if head_mask is not None:
            d_head_mask = ws.put("head_mask", head_mask.reshape(-1))
            k["scale"][grid_for(B * D)](h_last.reshape(B * D), d_head_mask)
        probs, losses = ws.empty("probs", (B, C)), ws.empty("losses", (B,))
        ops.linear_xent_forward(probs, losses, h_last, d_targets, P["head.W"], P["head.b"])
        # the embedding gradient's id runs: sorted on the host while the device runs the
        # forward pass (launches return at once; the copy then waits for the forward)
        order, starts, uniq = ops.id_segments(ids)
        segments = ws.put_many("segments", dict(order=order, starts=starts, uniq=uniq), np.int64)
        loss = float(losses.copy_to_host().mean())                     # as model.forward
        host_probs = probs.copy_to_host()           # now, not after the update: no wait there
        if not np.isfinite(loss):                   # the caller stops; nothing is updated
            return loss, host_probs

        clear(self.grad_flat)
        dh_last = ws.zeros("dh_last", (B, D))
        ops.linear_xent_backward(dh_last, G["head.W"], G["head.b"], probs, h_last, d_targets,
                                 P["head.W"], 1.0 / B, dlogits=ws.empty("dlogits", (B, C)))
        if head_mask is not None:
            k["scale"][grid_for(B * D)](dh_last.reshape(B * D), d_head_mask)
        dout = ws.zeros("dout", (B, T, D))
        k["last_step_backward"][grid_for(B * D)](dout, dh_last, d_len)
        for cell, cg in zip(reversed(self.cells), reversed(self.cell_grads)):
            dout = cell.backward_device(dout, cg, None)           # no gradient of the final state
        if emb_mask is not None:
            k["scale"][grid_for(dout.size)](dout.reshape(dout.size), d_emb_mask)
        ops.embedding_backward(G["embed"], dout, d_ids, (segments["order"], segments["starts"],
                                                          segments["uniq"]))
        self.adam.step(G, flat_grads=self.grad_flat)
        return loss, host_probs

    def sync_to_host(self):
        """Write the device parameters and Adam state into ``model.params`` and ``opt``."""
        for key, p in self.params.items():
            self.model.params[key][...] = p.copy_to_host()
            self.opt.m[key][...] = self.adam.m[key].copy_to_host()
            self.opt.v[key][...] = self.adam.v[key].copy_to_host()
        self.opt.t = self.adam.t

