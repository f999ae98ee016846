"""Tokenizer, vocabulary and compact encoded corpora (flat ids + offsets)."""
import re
from collections import Counter

import numpy as np

from ..validate import check_size

PAD, UNK = 0, 1
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# a word (letters or digits, with inner apostrophes: don't, rock'n'roll) or one punctuation mark
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")


def tokenize(text):
    """Lower-cased words and punctuation marks, with HTML line breaks removed."""
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


def _token_list(tokens, name):
    """``tokens`` if it is a sequence to iterate over, not a str (a text is tokenized
    first: its characters are not its tokens)."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, (list, tuple, np.ndarray)) \
            or getattr(tokens, "ndim", 1) != 1:
        raise ValueError(f"{name} must be a list of tokens (tokenize a text first), got "
                         f"{type(tokens).__name__}")
    return tokens


class Vocabulary:
    """Token <-> id.  Id 0 is padding, id 1 stands for every unknown token."""

    def __init__(self, tokens):
        tokens = list(_token_list(tokens, "tokens"))
        if not all(isinstance(t, str) for t in tokens) or tokens[:2] != ["<pad>", "<unk>"] \
                or len(set(tokens)) != len(tokens):             # (str first: set() hashes them)
            raise ValueError("a vocabulary is strings that start with '<pad>', '<unk>', with no "
                             "duplicates")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists, max_size=None, min_freq=1):
        """The most frequent tokens (ties broken alphabetically), at most ``max_size`` ids in all."""
        if max_size is not None:
            max_size = check_size(max_size, "max_size (with pad and unk)", 2)
        min_freq = check_size(min_freq, "min_freq")
        counts = Counter()
        try:                                            # (a list among the tokens: unhashable)
            for tokens in _token_list(token_lists, "token_lists"):
                counts.update(_token_list(tokens, "each of token_lists"))
        except TypeError as exc:
            raise ValueError(f"tokens must be str ({exc})") from None
        if not all(isinstance(t, str) for t in counts):
            raise ValueError("tokens must be str, got "
                             f"{next(type(t).__name__ for t in counts if not isinstance(t, str))}")
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size - 2]
        return cls(["<pad>", "<unk>"] + kept)

    def __len__(self):
        return len(self.itos)

    def encode(self, tokens):
        """int32 ids of a list of tokens (UNK for a token the vocabulary lacks)."""
        stoi = self.stoi
        try:                                            # a list or an array cell: unhashable
            ids = np.array([stoi.get(t, UNK) for t in _token_list(tokens, "tokens")], dtype=np.int32)
        except TypeError:
            ids = None
        # a number or a tuple would have been UNK (only the unknown ones need the check)
        if ids is None or not all(isinstance(tokens[i], str) for i in np.flatnonzero(ids == UNK)):
            raise ValueError("tokens must be str (a vocabulary holds str tokens)")
        return ids


class EncodedCorpus:
    """Many sequences in two arrays: ``ids`` (every step of every sequence, one after the
    other: token ids (total,) int32, or feature vectors (total, E) float) and ``offsets``
    (N+1, int64): sequence i is ``ids[offsets[i]:offsets[i + 1]]``."""

    def __init__(self, ids, offsets):
        self.ids, self.offsets = ids, offsets

    def __len__(self):
        return len(self.offsets) - 1

    @property
    def lengths(self):
        return np.diff(self.offsets)

    def row(self, i):
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


def encode_corpus(token_lists, vocab, max_len=None, keep="start"):
    """Encode and truncate; ``keep`` = "start" or "end" says which part of a long text stays.

    A text with no tokens becomes the single id UNK, so no sequence is empty.
    """
    if keep not in ("start", "end"):
        raise ValueError(f"keep must be 'start' or 'end', got {keep!r}")
    if max_len is not None:
        max_len = check_size(max_len, "max_len")
    rows = []
    for tokens in _token_list(token_lists, "token_lists"):
        ids = vocab.encode(tokens)
        if len(ids) == 0:
            ids = np.array([UNK], dtype=np.int32)
        if max_len is not None and len(ids) > max_len:
            ids = ids[:max_len] if keep == "start" else ids[-max_len:]
        rows.append(ids)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int32)
    return EncodedCorpus(flat, offsets)
