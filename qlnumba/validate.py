"""Input checks shared by the layers, the model and the optimizer.

Every failure is a ``ValueError`` whose message names the argument, what was
expected and what came in.  Kernels never check anything; these do.
"""
import math

import numpy as np

from .config import DTYPES


def is_real(value):
    """True for a finite int or float (numpy's too), not a bool, NaN or inf."""
    return isinstance(value, (int, float, np.integer, np.floating)) and \
        not isinstance(value, bool) and math.isfinite(value)


def check_size(value, name, minimum=1):
    """A size or count: an integer (not a bool) >= minimum, as an int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_dtype(dtype):
    """The numpy scalar type for ``dtype``, which must be float32 or float64."""
    try:                                             # (None is numpy's default, float64)
        known = np.dtype(dtype) in [np.dtype(d) for d in DTYPES]
    except TypeError:                                # not a dtype at all: "x", 1.5, True
        known = False
    if not known:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(dtype).type


def check_float_array(arr, name, ndim, dtype, shape=None):
    """Return ``arr`` as a C-contiguous array after checking it.

    ``shape`` may hold ``None`` for dimensions that are free.  NaN or inf
    anywhere is refused.
    """
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name} (the layer's dtype), "
                         f"got {arr.dtype.name}; convert with .astype(np.{np.dtype(dtype).name})")
    if shape is not None:
        for axis, (got, want) in enumerate(zip(arr.shape, shape)):
            if want is not None and got != want:
                raise ValueError(f"{name} has shape {arr.shape}, expected {_shape_text(shape)} "
                                 f"(axis {axis} must be {want})")
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    # min and max are NaN if any element is, ±inf if any is: no temporary array
    if not (np.isfinite(arr.min()) and np.isfinite(arr.max())):
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(arr)


def check_seed(seed, name="seed"):
    """A numpy Generator from ``seed``: None (fresh entropy), an integer >= 0, or what numpy
    seeds from itself (a Generator, used as is; a BitGenerator or SeedSequence)."""
    seeds = (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)
    if not (seed is None or isinstance(seed, seeds) or (isinstance(seed, (int, np.integer))
                                                         and not isinstance(seed, bool) and seed >= 0)):
        raise ValueError(f"{name} must be None, an integer >= 0 or a numpy Generator, got {seed!r}")
    return np.random.default_rng(seed)


def generator_from_state(state, name="rng_state"):
    """A numpy Generator in ``state``, a ``Generator.bit_generator.state`` saved before (a
    checkpoint's: training goes on with the draws it would have made)."""
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} is not the state of a numpy Generator ({exc!r:.80})") from None
    return rng


def check_rng(rng):
    """``rng`` itself, which must be None (evaluation: no dropout) or a numpy Generator
    (training: the dropout masks are drawn from it)."""
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be None or a numpy Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")
    return rng


def check_lengths(lengths, batch, steps):
    """Per-row lengths as int64 (B,), each in [1, steps]; None means all ``steps``."""
    if lengths is None:
        return np.full(batch, steps, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},) to match the batch, got {lengths.shape}")
    if lengths.min() < 1 or lengths.max() > steps:
        raise ValueError(f"lengths must lie in [1, {steps}] (1 <= length <= T), "
                         f"got min {lengths.min()} and max {lengths.max()}")
    return lengths.astype(np.int64)


def check_sample_weight(sample_weight, batch):
    """Each row's weight in the loss as float64 (B,): finite numbers >= 0."""
    w = np.asarray(sample_weight)
    if w.shape != (batch,) or w.dtype.kind not in "iuf":
        raise ValueError(f"sample_weight must be ({batch},) numbers, one per row, got "
                         f"{w.dtype} {w.shape}")
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("sample_weight must be finite and >= 0")
    return w.astype(np.float64)


def check_ids(ids, lengths, vocab_size):
    """Token ids as C-contiguous int64 (B, T), each in [0, vocab_size), and lengths (B,)."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be a 2-D integer array (B, T), got {ids.dtype} {ids.shape}")
    if 0 in ids.shape:
        raise ValueError(f"ids is empty (shape {ids.shape})")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"ids must lie in [0, {vocab_size}) (the vocabulary), got "
                         f"{ids.min()}..{ids.max()}")
    lengths = check_lengths(lengths, *ids.shape)
    return np.ascontiguousarray(ids, dtype=np.int64), lengths


def _shape_text(shape):
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
