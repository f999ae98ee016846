"""AdamW over a dict of parameter arrays, with global-norm gradient clipping."""
import math

import numpy as np

from .config import get_num_threads, row_blocks, threads_region
from .kernels.adam import adam_step, adam_step_split, sum_of_squares, sum_of_squares_split
from .validate import is_real


class NonFiniteGradients(ValueError):
    """A step's gradients hold NaN or inf (the loss has diverged); the parameters and the
    optimizer's state are left as they were."""


SPLIT_MIN = 1 << 16     # parameters of a tensor for which Adam's step and its norm run on every thread


def global_norm(grads):
    """sqrt of the sum of squares of every gradient array (a large one summed in eight parts
    on every thread: the same result on any number of threads)."""
    import numba
    total = 0.0
    for g in grads.values():
        if g.size >= SPLIT_MIN:
            with threads_region(numba.get_num_threads()):
                total += sum_of_squares_split(g.reshape(-1))
        else:
            total += sum_of_squares(g.reshape(-1))
    return math.sqrt(total)


def check_adam_constants(lr, betas, eps, weight_decay, clip_norm):
    """ValueError unless lr > 0, betas two numbers in [0, 1), eps >= 0 and weight_decay >= 0
    (each finite), and clip_norm None or > 0.  A NaN or infinite lr or decay would turn
    every parameter NaN at the first step."""
    if not (is_real(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2
            and all(is_real(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (is_real(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (is_real(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if clip_norm is not None and not (is_real(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be None or a finite number > 0, got {clip_norm!r}")


class Adam:
    """Adam with bias correction and decoupled weight decay (AdamW).

    Parameters
    ----------
    params : dict name -> ndarray, updated in place by :meth:`step`
    lr, betas, eps : the usual Adam constants
    weight_decay : decoupled decay, applied to matrices only (ndim >= 2), not to
        biases, gate scales or offsets
    clip_norm : if set, gradients are scaled so that their global norm is at most this

    Attributes
    ----------
    t : int, steps taken
    m, v : dict name -> ndarray, first and second moment estimates
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 clip_norm=None):
        if not isinstance(params, dict) or not params:
            raise ValueError("Adam needs a dict of parameter arrays (name -> array), got "
                             f"{type(params).__name__}{' (empty)' if not params else ''}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or not p.flags.c_contiguous or p.dtype.kind != "f":
                raise ValueError(f"parameter {name!r} must be a C-contiguous float array")
        check_adam_constants(lr, betas, eps, weight_decay, clip_norm)
        self.params = params
        self.lr, self.betas, self.eps = float(lr), tuple(map(float, betas)), float(eps)
        self.weight_decay = float(weight_decay)
        self.clip_norm = clip_norm
        self.t = 0
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}

    def __repr__(self):
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay}, clip_norm={self.clip_norm}; t={self.t}, "
                f"{len(self.params)} parameter arrays)")

    def step(self, grads):
        """Apply one update; returns the gradients' global norm before clipping.

        A non-finite norm raises ``ValueError`` and leaves the parameters untouched.
        """
        if not isinstance(grads, dict):
            raise ValueError(f"grads must be a dict name -> array, got {type(grads).__name__}")
        if set(grads) != set(self.params):
            missing = sorted(set(self.params) - set(grads))
            extra = sorted(set(grads) - set(self.params))
            raise ValueError(f"grads must have the keys of params; missing {missing}, extra {extra}")
        for k, g in grads.items():
            if not isinstance(g, np.ndarray):
                raise ValueError(f"grad {k!r} must be a numpy array, got {type(g).__name__}")
            if g.shape != self.params[k].shape or g.dtype != self.params[k].dtype:
                raise ValueError(f"grad {k!r} is {g.dtype} {g.shape}, parameter is "
                                 f"{self.params[k].dtype} {self.params[k].shape}")
        norm = global_norm(grads)
        if not math.isfinite(norm):
            raise NonFiniteGradients("gradients contain NaN or inf; parameters left unchanged")
        scale = 1.0
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / norm
        self.t += 1
        b1, b2 = self.betas
        for k, p in self.params.items():
            wd = self.weight_decay if p.ndim >= 2 else 0.0
            consts = np.array([self.lr, b1, b2, self.eps, wd, 1 - b1 ** self.t, 1 - b2 ** self.t,
                               scale], dtype=p.dtype)
            args = (p.reshape(-1), self.m[k].reshape(-1), self.v[k].reshape(-1),
                    np.ascontiguousarray(grads[k]).reshape(-1), consts)
            if p.size >= SPLIT_MIN and get_num_threads() > 1:     # big tensors: every thread
                bounds = row_blocks(p.size)
                with threads_region(len(bounds) - 1):
                    adam_step_split(*args, bounds)
            else:
                adam_step(*args)
        return norm

    def state_dict(self):
        """Arrays for a checkpoint: t, and m/v per parameter."""
        out = {"t": np.array(self.t)}
        for k in self.params:
            out[f"m/{k}"] = self.m[k]
            out[f"v/{k}"] = self.v[k]
        return out

    def load_state_dict(self, arrays):
        """Take t, m and v from ``arrays`` (what :meth:`state_dict` returned, for these
        parameters).  Everything is checked before anything is written: missing or extra
        keys, a shape or dtype other than the parameter's, NaN or inf, a negative v or t
        raise ``ValueError`` and leave the optimizer as it was."""
        wanted = {"t"} | {f"{name}/{k}" for k in self.params for name in ("m", "v")}
        if not isinstance(arrays, dict):
            raise ValueError(f"optimizer state must be a dict of arrays, got {type(arrays).__name__}")
        if set(arrays) != wanted:
            missing, extra = sorted(wanted - set(arrays)), sorted(set(arrays) - wanted)
            raise ValueError("optimizer state does not match the parameters: "
                             f"missing {missing[:5]}, extra {extra[:5]}")
        t = np.asarray(arrays["t"])
        if t.shape != () or t.dtype.kind not in "iu" or t < 0:
            raise ValueError(f"optimizer state t must be an integer >= 0, got {t!r}")
        for k, p in self.params.items():
            for name in ("m", "v"):
                a = np.asarray(arrays[f"{name}/{k}"])
                if a.shape != p.shape or a.dtype != p.dtype:
                    raise ValueError(f"optimizer state {name}/{k} is {a.dtype} {a.shape}, "
                                     f"expected {p.dtype} {p.shape}")
                if not np.isfinite(a).all() or (name == "v" and (a < 0).any()):
                    raise ValueError(f"optimizer state {name}/{k} holds NaN, inf"
                                     f"{' or negative values' if name == 'v' else ''}")
        for k in self.params:
            self.m[k][...] = arrays[f"m/{k}"]
            self.v[k][...] = arrays[f"v/{k}"]
        self.t = int(t)
