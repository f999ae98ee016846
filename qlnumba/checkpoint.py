"""Checkpoints: one .npz file, versioned, read without pickle.

Layout: ``__format__`` (the string below), ``__version__``, ``__meta__`` (JSON:
model config, training state, anything JSON-able), ``__vocab__`` (JSON list of
tokens, optional), ``param/<name>`` for every model parameter and
``opt/<key>`` for the optimizer's state.  A save writes ``<path>.partial`` and renames it
over ``path``, so a save that is interrupted leaves the previous checkpoint whole.
"""
import json
import os
import zipfile

import numpy as np

FORMAT = "qlnumba-checkpoint"
VERSION = 1


def save_checkpoint(path, model, vocab=None, optimizer=None, meta=None):
    """Write ``model`` (a SequenceClassifier or a LanguageModel), its vocabulary and optimizer
    state to ``path``.  ``meta``: a dict of JSON values (epoch, scores, ...), returned by
    :func:`load_checkpoint`.  What would not load again is refused with a ``ValueError``."""
    _check_save(path, model, vocab, optimizer, meta)
    arrays = {"__format__": np.array(FORMAT), "__version__": np.array(VERSION),
              "__meta__": np.array(json.dumps(dict(meta or {}, model_config=model.config)))}
    if vocab is not None:
        arrays["__vocab__"] = np.array(json.dumps(vocab.itos))
    arrays.update({f"param/{k}": v for k, v in model.params.items()})
    if optimizer is not None:
        arrays.update({f"opt/{k}": v for k, v in optimizer.state_dict().items()})
    # written beside it and renamed over it: a run stopped while writing (or a full disk)
    # leaves the previous checkpoint whole, never half of the new one
    path = str(path)
    partial = f"{path}.partial"
    try:
        with open(partial, "wb") as f:             # np.savez would append .npz to other names
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _check_save(path, model, vocab, optimizer, meta):
    """ValueError for what ``load_checkpoint`` would refuse to read back."""
    from .data.paths import check_path
    from .data.text import Vocabulary
    from .lm import LanguageModel
    from .model import SequenceClassifier
    check_path(path, "path")
    if not isinstance(model, (SequenceClassifier, LanguageModel)):
        raise ValueError(f"save_checkpoint saves a SequenceClassifier or a LanguageModel, got "
                         f"{type(model).__name__}")
    if vocab is not None and (not isinstance(vocab, Vocabulary)
                              or len(vocab) != model.config.get("vocab_size")):
        raise ValueError(f"vocab must be None or the model's Vocabulary of "
                         f"{model.config.get('vocab_size')} tokens, got {vocab!r:.60}")
    if optimizer is not None and set(getattr(optimizer, "params", ())) != set(model.params):
        raise ValueError("optimizer must be None or an Adam over the model's parameters")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"meta must be None or a dict, got {type(meta).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must hold JSON values only (str, numbers, lists, dicts): {exc}") from None


def load_checkpoint(path, device=None):
    """Return (model, vocab or None, optimizer state dict or None, meta dict).

    ``device`` ("cpu" or "cuda") builds the model for that device instead of the one it
    was saved from (a model trained on a GPU, read on a machine without one).

    Anything that is not a readable checkpoint of this format and version
    raises ``ValueError`` naming the file and the problem; a GPU model read where there is
    no GPU (``device`` None), ``CudaUnavailable`` naming ``device='cpu'``.
    """
    from .data.text import Vocabulary
    from .gpu import CudaUnavailable
    from .lm import LanguageModel
    from .model import SequenceClassifier

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":               # np.load would take a .npy, or try pickle
            raise ValueError("not an .npz archive")
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ValueError(f"checkpoint not found: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a readable qlnumba checkpoint ({exc})") from None
    if arrays.get("__format__") is None or str(arrays["__format__"]) != FORMAT:
        raise ValueError(f"{path} is not a qlnumba checkpoint (no '{FORMAT}' marker)")
    version = arrays.get("__version__")
    if version is None or version.shape != () or version.dtype.kind not in "iu":
        raise ValueError(f"{path}: corrupt checkpoint (no integer '__version__', got "
                         f"{None if version is None else f'{version.dtype} {version.shape}'})")
    version = int(version)
    if version != VERSION:
        raise ValueError(f"{path} has checkpoint version {version}; this qlnumba reads version {VERSION}")
    try:
        meta = json.loads(str(arrays["__meta__"]))
        config = dict(meta["model_config"])
        vocab = Vocabulary(json.loads(str(arrays["__vocab__"]))) if "__vocab__" in arrays else None
        config["dtype"] = np.dtype(config["dtype"]).type
        if device is not None:
            config["device"] = device
        architecture = config.pop("architecture", "classifier")
        if architecture not in ("classifier", "language_model"):
            raise ValueError(f"unknown architecture {architecture!r}")
        model = (LanguageModel if architecture == "language_model" else SequenceClassifier)(**config)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    except CudaUnavailable as exc:
        if device is not None:                   # asked for: the caller's to mend
            raise
        raise CudaUnavailable(f"{path} holds a model saved from a GPU, and {exc}; "
                              "device='cpu' reads it on the CPU") from None
    stored = {k[len("param/"):] for k in arrays if k.startswith("param/")}
    if stored != set(model.params):
        raise ValueError(f"{path}: parameters {sorted(stored ^ set(model.params))} do not match the model")
    for k, p in model.params.items():
        a = arrays[f"param/{k}"]
        if a.shape != p.shape or a.dtype != p.dtype:
            raise ValueError(f"{path}: parameter {k} is {a.dtype} {a.shape}, expected {p.dtype} {p.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: parameter {k} contains NaN or inf")
        p[...] = a
    if vocab is not None and len(vocab) != model.config["vocab_size"]:
        raise ValueError(f"{path}: vocabulary has {len(vocab)} tokens, model expects {model.config['vocab_size']}")
    opt = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")} or None
    return model, vocab, opt, meta
