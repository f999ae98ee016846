"""Batches of similar length, so that padding stays small."""
import numpy as np


def bucket_batches(lengths, batch_size, rng, pool_batches=50):
    """Training order: every index exactly once, in batches of similar length.

    Shuffle, cut into pools of ``pool_batches`` batches, sort each pool by
    length, cut it into batches, then shuffle the order of all batches.
    """
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
    order = np.argsort(lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(corpus, index):
    """ids (B, T_max) int64 padded with 0, and lengths (B,), for the rows ``index``.

    A corpus of feature vectors gives x (B, T_max, E) in its own dtype, padded with zeros.
    """
    lengths = corpus.lengths[index]
    steps = corpus.ids
    dtype = np.int64 if steps.dtype.kind in "iu" else steps.dtype
    ids = np.zeros((len(index), int(lengths.max())) + steps.shape[1:], dtype=dtype)
    for r, i in enumerate(index):
        ids[r, :lengths[r]] = corpus.row(i)
    return ids, lengths
