"""Embedding, softmax cross-entropy head and AdamW on the GPU (numba-cuda).

The same arithmetic as ``qlnumba/kernels/embedding.py``, ``head.py`` and
``adam.py``; argument order as there (outputs, inputs, parameters, sizes).  No
atomics: every sum runs in a fixed order, so results are deterministic.  Every
kernel loops with a grid stride, so any launch shape is correct.

Shapes legend (device arrays, C order)
  ids (B,T) int64  table (V,E)  emb (B,T,E)
  embedding backward: the B*T positions sorted by id (stable): order (B*T,) int64,
    segment s holds positions order[starts[s]:starts[s+1]] of id uniq[s]; starts (S+1,)
  h (N,D)  W (C,D)  b (C)  targets (N,) int64  probs (N,C)  losses (N,)  dlogits (N,C)
  Adam: p, m, v, g (P,) flat; consts (8,) as in kernels/adam.py; partial (NPART,) sums
"""
import math
from functools import lru_cache

import numpy as np

from ..optim import check_adam_constants
from . import get_cuda
from .recurrent import SIM, THREADS, grid_for

cuda = get_cuda()
NPART = 4 if SIM else 256                 # blocks of the first sum-of-squares pass


@lru_cache(maxsize=None)
def kernels(dtype):
    """Compile the kernels for one float dtype."""
    from numba import float32, float64

    ftype = float32 if np.dtype(dtype) == np.float32 else float64

    @cuda.jit
    def embedding_forward(out, ids, table):
        B, T = ids.shape
        E = table.shape[1]
        for idx in range(cuda.grid(1), B * T * E, cuda.gridsize(1)):
            pos, e = idx // E, idx % E
            k = ids[pos // T, pos % T]
            out[pos // T, pos % T, e] = table[k, e] if k != 0 else 0.0   # id 0 is padding

    @cuda.jit
    def embedding_backward(dtable, dout, ids, order, starts, uniq):
        """dtable[uniq[s]] += sum of dout over segment s (positions in order): one thread per (s, e)."""
        B, T = ids.shape
        E = dtable.shape[1]
        S = uniq.shape[0]
        for idx in range(cuda.grid(1), S * E, cuda.gridsize(1)):
            s, e = idx // E, idx % E
            k = uniq[s]
            if k == 0:
                continue
            acc = ftype(0.0)
            for q in range(starts[s], starts[s + 1]):
                pos = order[q]
                acc += dout[pos // T, pos % T, e]
            dtable[k, e] += acc

    @cuda.jit
    def linear_xent_forward(probs, losses, h, targets, W, b):
        N, C = probs.shape
        D = h.shape[1]
        for i in range(cuda.grid(1), N, cuda.gridsize(1)):
            top = -math.inf
            for k in range(C):                            # logits = h W^T + b
                acc = b[k]
                for d in range(D):
                    acc += h[i, d] * W[k, d]
                probs[i, k] = acc
                top = max(top, acc)
            total = ftype(0.0)
            for k in range(C):                            # softmax, shifted by the max
                e = math.exp(probs[i, k] - top)
                probs[i, k] = e
                total += e
            for k in range(C):
                probs[i, k] /= total
            losses[i] = -math.log(max(probs[i, targets[i]], 1e-300))

    @cuda.jit
    def xent_dlogits(dlogits, probs, targets, weight):
        N, C = probs.shape
        for idx in range(cuda.grid(1), N * C, cuda.gridsize(1)):
            i, k = idx // C, idx % C
            onehot = 1.0 if targets[i] == k else 0.0
            dlogits[i, k] = (probs[i, k] - onehot) * weight   # δlogits = (p - onehot) * weight

    @cuda.jit
    def linear_backward(dh, dW, db, dlogits, h, W):
        """dh += δ W (one thread per (i, d)); dW += δ^T h and db += Σ δ (one per (k, d), rows in order)."""
        N, C = dlogits.shape
        D = h.shape[1]
        for idx in range(cuda.grid(1), N * D + C * D + C, cuda.gridsize(1)):
            if idx < N * D:
                i, d = idx // D, idx % D
                acc = ftype(0.0)
                for k in range(C):
                    acc += dlogits[i, k] * W[k, d]
                dh[i, d] += acc
            elif idx < N * D + C * D:
                k, d = (idx - N * D) // D, (idx - N * D) % D
                acc = ftype(0.0)
                for i in range(N):
                    acc += dlogits[i, k] * h[i, d]
                dW[k, d] += acc
            else:
                k = idx - N * D - C * D
                acc = ftype(0.0)
                for i in range(N):
                    acc += dlogits[i, k]
                db[k] += acc

    @cuda.jit
    def sum_of_squares_partial(partial, g):
        """partial[blk] = sum of g[i]^2 over this block's grid-stride share, reduced in a fixed tree."""
        buf = cuda.shared.array(THREADS, float64)
        tid = cuda.threadIdx.x
        acc = 0.0
        for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
            acc += float64(g[i]) * float64(g[i])
        buf[tid] = acc
        cuda.syncthreads()
        width = THREADS // 2
        while width > 0:
            if tid < width:
                buf[tid] += buf[tid + width]
            cuda.syncthreads()
            width //= 2
        if tid == 0:
            partial[cuda.blockIdx.x] = buf[0]

    @cuda.jit
    def adam_step(p, m, v, g, consts):
        lr, beta1, beta2, eps, weight_decay = consts[0], consts[1], consts[2], consts[3], consts[4]
        c1, c2, grad_scale = consts[5], consts[6], consts[7]     # bias corrections 1 - beta^t
        one = ftype(1.0)
        for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):
            gi = g[i] * grad_scale
            m[i] = beta1 * m[i] + (one - beta1) * gi
            v[i] = beta2 * v[i] + (one - beta2) * gi * gi
            update = (m[i] / c1) / (math.sqrt(v[i] / c2) + eps)
            p[i] -= lr * (update + weight_decay * p[i])         # decoupled decay: not through m, v

    return dict(embedding_forward=embedding_forward, embedding_backward=embedding_backward,
                linear_xent_forward=linear_xent_forward, xent_dlogits=xent_dlogits,
                linear_backward=linear_backward, sum_of_squares_partial=sum_of_squares_partial,
                adam_step=adam_step)


def _launch(kernel, n, *args):
    blocks, threads = grid_for(n)
    kernel[blocks, threads](*args)


def embedding_forward(out, ids, table):
    """Device arrays: out (B,T,E) = table[ids], zero where ids == 0."""
    _launch(kernels(table.dtype)["embedding_forward"], out.size, out, ids, table)


def id_segments(ids):
    """Host: (order, starts, uniq) for ``embedding_backward`` from the host ids (B,T)."""
    flat = np.asarray(ids).reshape(-1)
    order = np.argsort(flat, kind="stable").astype(np.int64)
    uniq, starts = np.unique(flat[order], return_index=True)
    starts = np.append(starts, flat.size).astype(np.int64)
    return order, starts, uniq.astype(np.int64)


def embedding_backward(dtable, dout, ids, segments):
    """dtable (V,E) += scatter of dout (B,T,E); ``segments`` = id_segments(host ids), on device or host."""
    order, starts, uniq = (cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in segments)
    _launch(kernels(dtable.dtype)["embedding_backward"], uniq.shape[0] * dtable.shape[1],
            dtable, dout, ids, order, starts, uniq)


def linear_xent_forward(probs, losses, h, targets, W, b):
    _launch(kernels(h.dtype)["linear_xent_forward"], probs.shape[0], probs, losses, h, targets, W, b)


def linear_xent_backward(dh, dW, db, probs, h, targets, W, weight, dlogits=None):
    """Accumulates into dh, dW, db like the CPU kernel; ``weight`` is each row's loss share.
    ``dlogits``: a device buffer shaped like probs for δlogits (else one is allocated)."""
    k = kernels(h.dtype)
    if dlogits is None:
        dlogits = cuda.device_array(probs.shape, dtype=probs.dtype)
    _launch(k["xent_dlogits"], probs.size, dlogits, probs, targets, probs.dtype.type(weight))
    N, C = probs.shape
    D = h.shape[1]
    _launch(k["linear_backward"], N * D + C * D + C, dh, dW, db, dlogits, h, W)


def sum_of_squares(g, partial=None):
    """sum of g^2 (flat device array) in float64, in a fixed order (deterministic).

    With ``partial`` (a device array of NPART float64) the block sums are left there and
    nothing is returned: the caller downloads several arrays' sums in one copy."""
    out = cuda.device_array(NPART, dtype=np.float64) if partial is None else partial
    kernels(g.dtype)["sum_of_squares_partial"][NPART, THREADS](out, g)
    if partial is None:
        return float(np.sum(out.copy_to_host()))


def adam_step(p, m, v, g, consts):
    """One AdamW step on flat device arrays; ``consts`` as in kernels/adam.py (host or device)."""
    if isinstance(consts, np.ndarray):
        consts = cuda.to_device(consts)
    _launch(kernels(p.dtype)["adam_step"], p.shape[0], p, m, v, g, consts)


class CudaAdam:
    """AdamW with global-norm clipping over a dict of device arrays (see ``qlnumba.Adam``).

    The parameters, the moments and the gradients stay on the device.  Per step the
    partial sums of squares of every gradient array (NPART floats each) come back to
    the host in one copy, for the global norm, and the step's constants go to the
    device in one copy; both buffers are allocated once.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 clip_norm=None):
        if not params:
            raise ValueError("CudaAdam needs at least one parameter array")
        for name, p in params.items():
            on_device = hasattr(p, "copy_to_host") and not isinstance(p, np.ndarray)
            if not on_device or np.dtype(p.dtype).kind != "f":
                raise ValueError(f"parameter {name!r} must be a float device array")
        check_adam_constants(lr, betas, eps, weight_decay, clip_norm)
        self.params, self.lr, self.betas, self.eps = params, float(lr), tuple(betas), float(eps)
        self.weight_decay, self.clip_norm, self.t = float(weight_decay), clip_norm, 0
        self.m = {k: cuda.to_device(np.zeros(p.shape, p.dtype)) for k, p in params.items()}
        self.v = {k: cuda.to_device(np.zeros(p.shape, p.dtype)) for k, p in params.items()}
        self.partial = cuda.device_array((len(params), NPART), np.float64)   # row i: param i's sums
        # row i: param i's 8 constants, in a buffer of the parameter's dtype
        self.consts = {p.dtype.str: cuda.device_array((len(params), 8), p.dtype)
                       for p in params.values()}

    def step(self, grads):
        """One update; returns the global gradient norm before clipping (NaN/inf raise)."""
        if set(grads) != set(self.params):
            raise ValueError("grads must have exactly the keys of params")
        names = list(self.params)
        for i, k in enumerate(names):
            sum_of_squares(grads[k].reshape(grads[k].size), self.partial[i])
        partial = self.partial.copy_to_host()
        norm = math.sqrt(sum(float(np.sum(partial[i])) for i in range(len(names))))
        if not math.isfinite(norm):
            raise ValueError("gradients contain NaN or inf; parameters left unchanged")
        scale = self.clip_norm / norm if self.clip_norm is not None and norm > self.clip_norm else 1.0
        self.t += 1
        b1, b2 = self.betas
        consts = {}
        for key, buf in self.consts.items():
            host = np.array([[self.lr, b1, b2, self.eps,
                              self.weight_decay if len(self.params[k].shape) >= 2 else 0.0,
                              1 - b1 ** self.t, 1 - b2 ** self.t, scale] for k in names], dtype=buf.dtype)
            buf.copy_to_device(host)
            consts[key] = buf
        for i, k in enumerate(names):
            p = self.params[k]
            adam_step(p.reshape(p.size), self.m[k].reshape(p.size), self.v[k].reshape(p.size),
                      grads[k].reshape(p.size), consts[p.dtype.str][i])
        return norm
