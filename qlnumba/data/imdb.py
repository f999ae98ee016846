"""The IMDB reviews (gzipped JSON Lines), read from local files with ``datasets``.

Where the data is looked for, first match wins:
  1. the ``data_dir`` argument (``--data-dir`` on the command line);
  2. the environment variable ``QLNUMBA_IMDB_DIR``;
  3. ``$QLNUMBA_DATA_DIR/imdb``;
  4. ``../shared/data/imdb`` beside the repository checkout.
Nothing is ever downloaded.
"""
import os

import numpy as np

from .paths import DataError, check_path, check_limit, check_splits, default_data_dir

SPLIT_FILES = {"train": "train.jsonl.gz", "test": "test.jsonl.gz"}


def default_imdb_dir():
    return default_data_dir("imdb", "QLNUMBA_IMDB_DIR")


def load_imdb(data_dir=None, splits=("train", "test"), limit=None):
    """{split: (texts, labels)} with texts a list of str and labels int64 (0 neg, 1 pos).

    ``limit`` keeps a fixed random sample of ``limit`` rows of each split, in file order
    (for tests and smoke runs; the files are sorted by label, so a plain head would be one class).
    """
    splits, limit = check_splits(splits, SPLIT_FILES, "IMDB"), check_limit(limit)
    data_dir = check_path(data_dir, "data_dir") if data_dir is not None else default_imdb_dir()
    if not data_dir.is_dir():
        raise DataError(f"IMDB data folder not found: {data_dir}. Point --data-dir or QLNUMBA_IMDB_DIR "
                        f"at the folder holding {', '.join(SPLIT_FILES.values())}.")
    files = {}
    for split in splits:
        path = data_dir / SPLIT_FILES[split]
        if not path.is_file():
            raise DataError(f"IMDB file missing: {path} (expected {SPLIT_FILES[split]} in {data_dir})")
        files[split] = str(path)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")          # never reach for the network
    import datasets

    datasets.disable_progress_bars()
    out = {}
    for split, path in files.items():
        try:
            ds = datasets.load_dataset("json", data_files={split: path}, split=split)
        except Exception as exc:                                 # datasets raises many kinds
            raise DataError(f"could not read {path} as gzipped JSON Lines: {exc}") from None
        if limit is not None and limit < len(ds):
            ds = ds.select(np.sort(np.random.default_rng(0).choice(len(ds), limit, replace=False)))
        missing = {"text", "label"} - set(ds.column_names)
        if missing:
            raise DataError(f"{path} lacks the column(s) {sorted(missing)}; found {ds.column_names}")
        texts, labels = ds["text"], np.asarray(ds["label"])
        if len(texts) == 0:
            raise DataError(f"{path} holds no reviews")
        if labels.dtype.kind not in "iu" or not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: every label must be 0 or 1")
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path}: every text must be a string")
        out[split] = (list(texts), labels.astype(np.int64))
    return out
