"""Where the data sets live, and the error for data that is missing or malformed."""
import os
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(ValueError):
    """Data missing or malformed; the message says what to do."""


def check_path(path, name):
    """``path`` (a str or an os.PathLike) as a Path."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def check_splits(splits, known, what):
    """``splits`` as a tuple, each one of ``known``'s keys."""
    if not isinstance(splits, (list, tuple)):
        raise ValueError(f"splits must be a list or tuple of split names, got {splits!r}")
    for split in splits:
        if not isinstance(split, str) or split not in known:
            raise DataError(f"unknown {what} split {split!r}; known: {sorted(known)}")
    return tuple(splits)


def check_limit(limit):
    """None (every row) or a row count >= 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
    return limit


def default_data_dir(folder, env_var):
    """``$env_var``, else ``$QLNUMBA_DATA_DIR/folder``, else ``../shared/data/folder``
    beside the repository checkout."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    if os.environ.get("QLNUMBA_DATA_DIR"):
        return Path(os.environ["QLNUMBA_DATA_DIR"]) / folder
    return REPO_ROOT.parent / "shared" / "data" / folder
