"""Tokenizer, vocabulary and compact encoded corpora (flat ids + offsets)."""
import re
from collections import Counter

import numpy as np

PAD, UNK = 0, 1
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# a word (letters or digits, with inner apostrophes: don't, rock'n'roll) or one punctuation mark
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")


def tokenize(text):
    """Lower-cased words and punctuation marks, with HTML line breaks removed."""
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


class Vocabulary:
    """Token <-> id.  Id 0 is padding, id 1 stands for every unknown token."""

    def __init__(self, tokens):
        tokens = list(tokens)
        if tokens[:2] != ["<pad>", "<unk>"] or len(set(tokens)) != len(tokens) \
                or not all(isinstance(t, str) for t in tokens):
            raise ValueError("a vocabulary is strings that start with '<pad>', '<unk>', with no "
                             "duplicates")
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def build(cls, token_lists, max_size=None, min_freq=1):
        """The most frequent tokens (ties broken alphabetically), at most ``max_size`` ids in all."""
        counts = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            if max_size < 2:
                raise ValueError(f"max_size must be >= 2 (pad and unk), got {max_size}")
            kept = kept[:max_size - 2]
        return cls(["<pad>", "<unk>"] + kept)

    def __len__(self):
        return len(self.itos)

    def encode(self, tokens):
        stoi = self.stoi
        return np.array([stoi.get(t, UNK) for t in tokens], dtype=np.int32)


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
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    rows = []
    for tokens in token_lists:
        ids = vocab.encode(tokens) if tokens else np.array([UNK], dtype=np.int32)
        if max_len is not None and len(ids) > max_len:
            ids = ids[:max_len] if keep == "start" else ids[-max_len:]
        rows.append(ids)
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int32)
    return EncodedCorpus(flat, offsets)
