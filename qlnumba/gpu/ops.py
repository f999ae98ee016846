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
  Adam: p, m, v, g flat; S segments of them, segs (S, 2) int64 (start, length);
    consts (S, 8) as in kernels/adam.py, one row per segment; partial (S, NPART) sums
"""
import math
from functools import lru_cache

import numpy as np

from ..optim import NonFiniteGradients, check_adam_constants
from . import get_cuda
from .arrays import SIM, THREADS, grid_for

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
    def xent_dlogits(dlogits, probs, targets, weight, weights):
        """δlogits = (p - onehot) * each row's loss share: weights[i], or (weights empty)
        the one share ``weight`` of every row."""
        N, C = probs.shape
        for idx in range(cuda.grid(1), N * C, cuda.gridsize(1)):
            i, k = idx // C, idx % C
            onehot = 1.0 if targets[i] == k else 0.0
            share = weights[i] if weights.shape[0] > 0 else weight
            dlogits[i, k] = (probs[i, k] - onehot) * share

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
    def sum_of_squares_partial(partial, g, segs):
        """partial[s, blk] = sum of g[i]^2 over block blk's grid-stride share of segment s
        (blockIdx.y) of the flat g, reduced in a fixed tree: the same sums however many
        segments one launch covers."""
        buf = cuda.shared.array(THREADS, float64)
        tid = cuda.threadIdx.x
        s = cuda.blockIdx.y
        base = segs[s, 0]
        acc = 0.0
        for i in range(cuda.blockIdx.x * THREADS + tid, segs[s, 1], cuda.gridDim.x * THREADS):
            acc += float64(g[base + i]) * float64(g[base + i])
        buf[tid] = acc
        cuda.syncthreads()
        width = THREADS // 2
        while width > 0:
            if tid < width:
                buf[tid] += buf[tid + width]
            cuda.syncthreads()
            width //= 2
        if tid == 0:
            partial[s, cuda.blockIdx.x] = buf[0]

    @cuda.jit
    def adam_step(p, m, v, g, consts, segs):
        """AdamW on segment s (blockIdx.y) of the flat p, m, v, g, with the constants consts[s]."""
        s = cuda.blockIdx.y
        lr, beta1, beta2, eps, weight_decay = consts[s, 0], consts[s, 1], consts[s, 2], consts[s, 3], consts[s, 4]
        c1, c2, grad_scale = consts[s, 5], consts[s, 6], consts[s, 7]     # bias corrections 1 - beta^t
        one = ftype(1.0)
        base = segs[s, 0]
        for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, segs[s, 1],
                       cuda.gridDim.x * cuda.blockDim.x):
            j = base + i
            gi = g[j] * grad_scale
            m[j] = beta1 * m[j] + (one - beta1) * gi
            v[j] = beta2 * v[j] + (one - beta2) * gi * gi
            update = (m[j] / c1) / (math.sqrt(v[j] / c2) + eps)
            p[j] -= lr * (update + weight_decay * p[j])         # decoupled decay: not through m, v

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
    """Host: (order, starts, uniq) for ``embedding_backward`` from the host ids (B,T):
    positions in id order (stable), where each distinct id's run starts (and the end),
    the distinct ids.  One sort; the runs are read off the sorted ids."""
    flat = np.asarray(ids).reshape(-1)
    order = np.argsort(flat, kind="stable").astype(np.int64)
    in_order = flat[order]
    first = np.empty(flat.size, bool)                  # first[i]: a new id starts at i
    first[:1] = True
    np.not_equal(in_order[1:], in_order[:-1], out=first[1:])
    starts = np.append(np.flatnonzero(first), flat.size).astype(np.int64)
    return order, starts, in_order[first].astype(np.int64)


def embedding_backward(dtable, dout, ids, segments):
    """dtable (V,E) += scatter of dout (B,T,E); ``segments`` = id_segments(host ids), on device or host."""
    order, starts, uniq = (cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in segments)
    _launch(kernels(dtable.dtype)["embedding_backward"], uniq.shape[0] * dtable.shape[1],
            dtable, dout, ids, order, starts, uniq)


def linear_xent_forward(probs, losses, h, targets, W, b):
    _launch(kernels(h.dtype)["linear_xent_forward"], probs.shape[0], probs, losses, h, targets, W, b)


def linear_xent_backward(dh, dW, db, probs, h, targets, W, weights, dlogits=None):
    """Accumulates into dh, dW, db like the CPU kernel.  ``weights``: each row's loss
    share, as a device array (N,), or as one number for every row (1/N for the mean: then
    nothing is copied to the device).  ``dlogits``: a device buffer shaped like probs for
    δlogits (else one is allocated)."""
    k = kernels(h.dtype)
    if dlogits is None:
        dlogits = cuda.device_array(probs.shape, dtype=probs.dtype)
    if np.isscalar(weights):
        weight, weights = probs.dtype.type(weights), _no_weights(np.dtype(probs.dtype).name)
    else:
        weight = probs.dtype.type(0)
    _launch(k["xent_dlogits"], probs.size, dlogits, probs, targets, weight, weights)
    N, C = probs.shape
    D = h.shape[1]
    _launch(k["linear_backward"], N * D + C * D + C, dh, dW, db, dlogits, h, W)


@lru_cache(maxsize=None)
def _no_weights(dtype):
    """An empty device array: xent_dlogits then gives every row one share."""
    return cuda.device_array(0, dtype=dtype)


def whole(n):
    """The segment table (1, 2) of one whole flat array of n values, on the device."""
    return cuda.to_device(np.array([[0, n]], np.int64))


def sum_of_squares(g, partial=None, segs=None):
    """sum of g^2 (flat device array) in float64, in a fixed order (deterministic).

    With ``partial`` (a device array (S, NPART) of float64) and ``segs`` (S, 2) the block
    sums of each segment are left there and nothing is returned: one launch for every
    segment, and the caller downloads them in one copy."""
    if partial is None:
        partial, segs = cuda.device_array((1, NPART), dtype=np.float64), whole(g.shape[0])
        kernels(g.dtype)["sum_of_squares_partial"][(NPART, 1), THREADS](partial, g, segs)
        return float(np.sum(partial.copy_to_host()))
    kernels(g.dtype)["sum_of_squares_partial"][(NPART, segs.shape[0]), THREADS](partial, g, segs)


def adam_step(p, m, v, g, consts, segs=None, longest=None):
    """AdamW on flat device arrays: the whole of them with ``consts`` (8,) as in
    kernels/adam.py (host or device), or each segment s of ``segs`` (S, 2) with consts[s]
    (``longest``: the longest segment's length), all in one launch."""
    if segs is None:
        consts = consts.reshape(1, 8)                    # one segment: the whole arrays
        segs, longest = whole(p.shape[0]), p.shape[0]
    if isinstance(consts, np.ndarray):
        consts = cuda.to_device(consts)
    blocks, threads = grid_for(longest)
    kernels(p.dtype)["adam_step"][(blocks, segs.shape[0]), threads](p, m, v, g, consts, segs)


def device_address(arr):
    """Where a device array's first value lies (the simulator's arrays are numpy arrays)."""
    iface = getattr(arr, "__cuda_array_interface__", None) or arr.__array_interface__
    return iface["data"][0]


def laid_out_in(arrays, flat, starts):
    """Whether each of ``arrays`` (in order) is the contiguous view of ``flat`` at its start."""
    base, size = device_address(flat), np.dtype(flat.dtype).itemsize
    return all(a.size == 0 or (a.dtype == flat.dtype and a.is_c_contiguous()
                               and device_address(a) == base + st * size and st + a.size <= flat.size)
               for a, st in zip(arrays, starts))


class CudaAdam:
    """AdamW with global-norm clipping over a dict of device arrays (see ``qlnumba.Adam``).

    The parameters, the moments and the gradients stay on the device.  Per step the
    partial sums of squares of every gradient array (NPART floats each) come back to
    the host in one copy, for the global norm, and the step's constants go to the
    device in one copy; both buffers are allocated once.

    ``arena=(flat, starts)`` says that the parameters are views of one flat device
    array, ``params[k]`` starting at ``starts[i]`` (i in dict order).  The moments are
    then laid out alike, and ``step(grads, flat_grads)``, with the gradients laid out
    alike in ``flat_grads``, sums and updates every parameter in one launch each
    instead of one per array (same arithmetic).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 clip_norm=None, arena=None):
        if not params:
            raise ValueError("CudaAdam needs at least one parameter array")
        for name, p in params.items():
            on_device = hasattr(p, "copy_to_host") and not isinstance(p, np.ndarray)
            if not on_device or np.dtype(p.dtype).kind != "f":
                raise ValueError(f"parameter {name!r} must be a float device array")
        check_adam_constants(lr, betas, eps, weight_decay, clip_norm)
        self.params, self.lr, self.betas, self.eps = params, float(lr), tuple(betas), float(eps)
        self.weight_decay, self.clip_norm, self.t = float(weight_decay), clip_norm, 0
        sizes = np.array([p.size for p in params.values()], np.int64)
        self.longest = int(sizes.max())
        # segment tables (S, 2): each array whole (for one launch per array), and where
        # each lies in the arena
        self.segs_each = cuda.to_device(np.stack([np.zeros_like(sizes), sizes], axis=1))
        self.arena, self._checked = arena, ()
        if arena is None:
            self.m = {k: cuda.to_device(np.zeros(p.shape, p.dtype)) for k, p in params.items()}
            self.v = {k: cuda.to_device(np.zeros(p.shape, p.dtype)) for k, p in params.items()}
        else:
            flat, starts = arena
            if len(starts) != len(params) or not laid_out_in(params.values(), flat, starts):
                raise ValueError("arena must be (flat, starts) with each parameter the view of flat "
                                 "at its start (one start per parameter, flat's dtype)")
            self.segs = cuda.to_device(np.stack([np.asarray(starts, np.int64), sizes], axis=1))
            self.m_flat = cuda.to_device(np.zeros(flat.size, flat.dtype))
            self.v_flat = cuda.to_device(np.zeros(flat.size, flat.dtype))
            self.m = {k: self.m_flat[st:st + p.size].reshape(p.shape)
                      for (k, p), st in zip(params.items(), starts)}
            self.v = {k: self.v_flat[st:st + p.size].reshape(p.shape)
                      for (k, p), st in zip(params.items(), starts)}
        self.partial = cuda.device_array((len(params), NPART), np.float64)   # row i: param i's sums
        # row i: param i's 8 constants, in a buffer of the parameter's dtype
        self.consts = {p.dtype.str: cuda.device_array((len(params), 8), p.dtype)
                       for p in params.values()}

    def step(self, grads, flat_grads=None):
        """One update; returns the global gradient norm before clipping (NaN/inf raise).
        ``flat_grads``: with ``arena``, the gradients laid out as the parameters are."""
        if set(grads) != set(self.params):
            raise ValueError("grads must have exactly the keys of params")
        fused = self.arena is not None and flat_grads is not None
        checked = (flat_grads, *(grads[k] for k in self.params))
        if fused and not (len(self._checked) == len(checked)
                          and all(x is y for x, y in zip(checked, self._checked))):
            flat, starts = self.arena
            if flat_grads.size != flat.size or flat_grads.dtype != flat.dtype or \
                    not laid_out_in(checked[1:], flat_grads, starts):
                raise ValueError("flat_grads must be laid out as the arena: the arena's size and "
                                 "dtype, each gradient the view of it at its parameter's start")
            self._checked = checked                         # the same arrays every step: once
        names = list(self.params)
        if fused:
            sum_of_squares(flat_grads, self.partial, self.segs)
        else:
            for i, k in enumerate(names):
                sum_of_squares(grads[k].reshape(grads[k].size), self.partial[i:i + 1],
                               self.segs_each[i:i + 1])
        partial = self.partial.copy_to_host()
        norm = math.sqrt(sum(float(np.sum(partial[i])) for i in range(len(names))))
        if not math.isfinite(norm):
            raise NonFiniteGradients("gradients contain NaN or inf; parameters left unchanged")
        scale = self.clip_norm / norm if self.clip_norm is not None and norm > self.clip_norm else 1.0
        self.t += 1
        b1, b2 = self.betas
        for buf in self.consts.values():                 # one copy per parameter dtype
            buf.copy_to_device(np.array([[self.lr, b1, b2, self.eps,
                                          self.weight_decay if len(self.params[k].shape) >= 2 else 0.0,
                                          1 - b1 ** self.t, 1 - b2 ** self.t, scale] for k in names],
                                        dtype=buf.dtype))
        if fused:
            flat = self.arena[0]
            adam_step(flat, self.m_flat, self.v_flat, flat_grads, self.consts[flat.dtype.str], self.segs,
                      self.longest)
            return norm
        for i, k in enumerate(names):
            p = self.params[k]
            adam_step(p.reshape(p.size), self.m[k].reshape(p.size), self.v[k].reshape(p.size),
                      grads[k].reshape(p.size), self.consts[p.dtype.str][i:i + 1],
                      self.segs_each[i:i + 1], p.size)
        return norm
