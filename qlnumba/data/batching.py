"""Batches of similar length, so that padding stays small."""
import numpy as np

from ..validate import check_size


def _check_lengths(lengths):
    """``lengths`` as a 1-D integer array (a corpus's ``lengths``)."""
    lengths = np.asarray(lengths) if isinstance(lengths, (list, tuple, np.ndarray)) else None
    if lengths is None or lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
        raise ValueError("lengths must be a 1-D array of integers (a corpus's lengths)")
    return lengths


def bucket_batches(lengths, batch_size, rng, pool_batches=50):
    """Training order: every index exactly once, in batches of similar length.

    Shuffle, cut into pools of ``pool_batches`` batches, sort each pool by
    length, cut it into batches, then shuffle the order of all batches.
    """
    lengths = _check_lengths(lengths)
    batch_size, pool_batches = check_size(batch_size, "batch_size"), check_size(pool_batches, "pool_batches")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_batches(lengths, batch_size):
    """Evaluation order: sorted by length, deterministic."""
    lengths, batch_size = _check_lengths(lengths), check_size(batch_size, "batch_size")
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(corpus, index):
    """ids (B, T_max) int64 padded with 0, and lengths (B,), for the rows ``index``.

    A corpus of feature vectors gives x (B, T_max, E) in its own dtype, padded with zeros.
    """
    index = np.asarray(index) if isinstance(index, (list, tuple, np.ndarray)) else None
    if index is None or index.ndim != 1 or index.size == 0 or index.dtype.kind not in "iu" \
            or index.min() < -len(corpus) or index.max() >= len(corpus):
        raise ValueError(f"index must be a non-empty 1-D array of row numbers below {len(corpus)}")
    lengths = corpus.lengths[index]
    steps = corpus.ids
    dtype = np.int64 if steps.dtype.kind in "iu" else steps.dtype
    ids = np.zeros((len(index), int(lengths.max())) + steps.shape[1:], dtype=dtype)
    for r, i in enumerate(index):
        ids[r, :lengths[r]] = corpus.row(i)
    return ids, lengths
