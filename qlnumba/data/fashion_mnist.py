"""Fashion-MNIST (gzipped IDX files): 28 x 28 grey images of clothing, 10 classes.

Read as sequences it is a long-sequence task: 784 steps of one pixel ("pixels"), or
28 steps of 28 pixels, one image row per step ("rows").

Where the files are looked for, first match wins:
  1. the ``data_dir`` argument (``--data-dir`` on the command line);
  2. the environment variable ``QLNUMBA_FASHION_MNIST_DIR``;
  3. ``$QLNUMBA_DATA_DIR/fashion-mnist``;
  4. ``../shared/data/fashion-mnist`` beside the repository checkout.
Nothing is ever downloaded.
"""
import gzip
import zlib

import numpy as np

from .paths import DataError, check_path, check_limit, check_splits, default_data_dir

SPLIT_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049          # IDX: uint8 data, 3 and 1 dimensions


def default_fashion_mnist_dir():
    return default_data_dir("fashion-mnist", "QLNUMBA_FASHION_MNIST_DIR")


def load_fashion_mnist(data_dir=None, splits=("train", "test"), limit=None):
    """{split: (images (n, 28, 28) uint8, labels (n,) int64 in 0..9)}.

    ``limit`` keeps a fixed random sample of ``limit`` images of each split, in file order.
    """
    splits, limit = check_splits(splits, SPLIT_FILES, "Fashion-MNIST"), check_limit(limit)
    data_dir = check_path(data_dir, "data_dir") if data_dir is not None else default_fashion_mnist_dir()
    if not data_dir.is_dir():
        raise DataError(f"Fashion-MNIST folder not found: {data_dir}. Point --data-dir or "
                        "QLNUMBA_FASHION_MNIST_DIR at the folder holding the four "
                        "*-idx?-ubyte.gz files.")
    out = {}
    for split in splits:
        image_file, label_file = (data_dir / name for name in SPLIT_FILES[split])
        images = _read_idx(image_file, IMAGES_MAGIC)
        labels = _read_idx(label_file, LABELS_MAGIC)
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DataError(f"{image_file.name} holds {images.shape} images and "
                            f"{label_file.name} {len(labels)} labels; expected n x 28 x 28 and n")
        if labels.max(initial=0) > 9:
            raise DataError(f"{label_file}: labels must lie in 0..9, found {labels.max()}")
        if limit is not None and limit < len(labels):
            keep = np.sort(np.random.default_rng(0).choice(len(labels), limit, replace=False))
            images, labels = images[keep], labels[keep]
        out[split] = (images, labels.astype(np.int64))
    return out


def _read_idx(path, magic):
    """The uint8 array of an IDX file: big-endian int32 magic and sizes, then the data."""
    if not path.is_file():
        raise DataError(f"Fashion-MNIST file missing: {path}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"could not read {path} as a gzipped IDX file: {exc}") from None
    ndim = magic - 2048
    header = 4 * (1 + ndim)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an IDX file of {ndim}-D uint8 data (magic {magic})")
    shape = tuple(int.from_bytes(raw[4 * (i + 1):4 * (i + 2)], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but {len(raw) - header} bytes follow")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def as_sequences(images, steps="rows"):
    """Images (n, 28, 28) uint8 as float32 sequences in [0, 1]: "rows" (n, 28, 28), one image
    row per step, or "pixels" (n, 784), one pixel per step."""
    if steps not in ("rows", "pixels"):
        raise ValueError(f"steps must be 'rows' or 'pixels', got {steps!r}")
    x = images.astype(np.float32) / np.float32(255.0)
    return x.reshape(len(images), -1) if steps == "pixels" else x
