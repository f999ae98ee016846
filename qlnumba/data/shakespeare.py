"""Tiny Shakespeare (one text file), read as characters for a character-level language model.

Where the text is looked for, first match wins:
  1. the ``data_dir`` argument (``--data-dir`` on the command line);
  2. the environment variable ``QLNUMBA_SHAKESPEARE_DIR``;
  3. ``$QLNUMBA_DATA_DIR/tinyshakespeare``;
  4. ``../shared/data/tinyshakespeare`` beside the repository checkout.
Nothing is ever downloaded.  The usual split (nanoGPT's): the first 90% of the characters
train, the last 10% validate.
"""

import numpy as np

from ..validate import check_size, is_real
from .paths import DataError, check_path, default_data_dir
from .text import Vocabulary

FILE = "input.txt"


def default_shakespeare_dir():
    return default_data_dir("tinyshakespeare", "QLNUMBA_SHAKESPEARE_DIR")


def load_shakespeare(data_dir=None):
    """The whole text, a str."""
    data_dir = check_path(data_dir, "data_dir") if data_dir is not None else default_shakespeare_dir()
    if not data_dir.is_dir():
        raise DataError(f"Tiny Shakespeare folder not found: {data_dir}. Point --data-dir or "
                        f"QLNUMBA_SHAKESPEARE_DIR at the folder holding {FILE}.")
    path = data_dir / FILE
    if not path.is_file():
        raise DataError(f"Tiny Shakespeare file missing: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc})") from None
    if len(text) < 2:
        raise DataError(f"{path} holds {len(text)} characters; a language model needs at least 2")
    return text


def char_vocabulary(text):
    """A Vocabulary of the characters of ``text``, sorted: id 0 padding, 1 unknown, then
    one id per character."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return Vocabulary(["<pad>", "<unk>"] + sorted(set(text) - {"<pad>", "<unk>"}))


def encode_chars(text, vocab):
    """The ids of ``text``'s characters, int32 (unknown characters get id 1)."""
    if not isinstance(text, str) or not isinstance(vocab, Vocabulary):
        raise ValueError(f"encode_chars takes a str and a Vocabulary, got {type(text).__name__} "
                         f"and {type(vocab).__name__}")
    return vocab.encode(list(text))


def decode_chars(ids, vocab):
    """The characters of ``ids`` (padding and unknown ids as '?')."""
    ids = _check_ids(ids)
    if ids.size and ids.max() >= len(vocab):
        raise ValueError(f"ids must lie in [0, {len(vocab) - 1}], got {ids.max()}")
    return "".join(vocab.itos[i] if i > 1 else "?" for i in ids.tolist())


def split_ids(ids, val_fraction=0.1):
    """(train, validation): the first and the last part of ``ids``."""
    ids = _check_ids(ids)
    if not is_real(val_fraction) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    n_val = max(2, int(round(val_fraction * len(ids))))
    if n_val > len(ids) - 2:
        raise ValueError(f"{len(ids)} ids are too few to hold out {val_fraction} of them")
    return ids[:-n_val], ids[-n_val:]


def stream_batches(ids, batch, steps, offset=0):
    """Truncated-BPTT chunks of ``batch`` parallel streams: yields (inputs, targets, lengths),
    inputs and targets (batch, <= steps) int64, targets the inputs shifted by one.

    The text after ``offset`` is cut into ``batch`` equal contiguous streams; chunk k holds
    steps k*steps .. of every stream, so the state after one chunk is the state before the
    next.  The last chunk may be shorter (all rows alike).
    """
    batch, steps = check_size(batch, "batch"), check_size(steps, "steps")
    ids = _check_ids(ids)[check_size(offset, "offset", 0):]
    per_stream = (len(ids) - 1) // batch                  # the last input needs a target
    if per_stream < 1:
        raise ValueError(f"{len(ids)} ids are too few for {batch} streams")
    streams = ids[:batch * per_stream + 1]
    inputs = streams[:-1].reshape(batch, per_stream)
    targets = streams[1:].reshape(batch, per_stream)
    for start in range(0, per_stream, steps):
        x = inputs[:, start:start + steps]
        yield x, targets[:, start:start + steps], np.full(batch, x.shape[1], np.int64)


def _check_ids(ids):
    """``ids`` as a 1-D int64 array of integers >= 0 (an empty list is an empty array)."""
    ids = np.asarray(ids) if isinstance(ids, (list, tuple, np.ndarray)) else None
    if ids is None or ids.ndim != 1 or (ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0)):
        raise ValueError("ids must be a 1-D array of integers >= 0")
    return ids.astype(np.int64, copy=False) if ids.size else np.zeros(0, np.int64)
