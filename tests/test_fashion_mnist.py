"""Fashion-MNIST: reading IDX files the test writes, clear errors, the training program."""
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import gpu_usable, make_rng
from qlnumba.data import DataError, default_fashion_mnist_dir, load_fashion_mnist
from qlnumba.data.fashion_mnist import SPLIT_FILES, as_sequences
from qlnumba.estimator import QLLSTMClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import fashion_mnist as train_fashion  # noqa: E402

HAVE_DATA = (default_fashion_mnist_dir() / SPLIT_FILES["train"][0]).is_file()


def write_idx(path, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_split(folder, split, images, labels):
    image_file, label_file = SPLIT_FILES[split]
    write_idx(folder / image_file, images, 2051)
    write_idx(folder / label_file, labels, 2049)


@pytest.fixture
def tiny_fashion(tmp_path):
    """Two classes a recurrent layer can tell apart: bright top half (0) or bright bottom (1)."""
    rng = make_rng(40)
    for split, n in (("train", 80), ("test", 20)):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 14 * label:14 * label + 14] += 180
        write_split(tmp_path, split, images, labels)
    return tmp_path


def test_load_from_files_the_test_wrote(tiny_fashion, monkeypatch):
    data = load_fashion_mnist(tiny_fashion)
    images, labels = data["train"]
    assert images.shape == (80, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert len(data["test"][1]) == 20
    sample, sample_labels = load_fashion_mnist(tiny_fashion, ("train",), limit=10)["train"]
    assert len(sample) == 10 and set(sample_labels) <= set(labels)
    monkeypatch.setenv("QLNUMBA_FASHION_MNIST_DIR", str(tiny_fashion))
    assert len(load_fashion_mnist(splits=("test",))["test"][0]) == 20
    monkeypatch.delenv("QLNUMBA_FASHION_MNIST_DIR")
    monkeypatch.setenv("QLNUMBA_DATA_DIR", str(tiny_fashion.parent))
    assert default_fashion_mnist_dir() == tiny_fashion.parent / "fashion-mnist"


def test_as_sequences_rows_and_pixels():
    images = np.arange(2 * 784).reshape(2, 28, 28) % 256
    rows, pixels = as_sequences(images, "rows"), as_sequences(images, "pixels")
    assert rows.shape == (2, 28, 28) and pixels.shape == (2, 784) and rows.dtype == np.float32
    np.testing.assert_array_equal(pixels[1, 28:56], rows[1, 1])
    assert pixels.max() == 1.0 and pixels.min() == 0.0
    with pytest.raises(ValueError, match="rows' or 'pixels"):
        as_sequences(images, "columns")


def test_missing_and_malformed_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="file missing"):
        load_fashion_mnist(tmp_path)
    images, labels = np.zeros((3, 28, 28)), np.zeros(3)
    write_split(tmp_path, "train", images, labels)
    (tmp_path / SPLIT_FILES["train"][0]).write_bytes(b"not gzip")
    with pytest.raises(DataError, match="could not read"):
        load_fashion_mnist(tmp_path, ("train",))
    write_idx(tmp_path / SPLIT_FILES["train"][0], images, 2049)
    with pytest.raises(DataError, match="not an IDX file"):
        load_fashion_mnist(tmp_path, ("train",))
    write_split(tmp_path, "train", images, np.zeros(4))
    with pytest.raises(DataError, match="expected n x 28 x 28 and n"):
        load_fashion_mnist(tmp_path, ("train",))
    write_split(tmp_path, "train", images, np.array([0, 3, 12]))
    with pytest.raises(DataError, match="0..9"):
        load_fashion_mnist(tmp_path, ("train",))
    with gzip.open(tmp_path / SPLIT_FILES["train"][1], "wb") as f:
        f.write((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + b"\0\0")
    with pytest.raises(DataError, match="header says"):
        load_fashion_mnist(tmp_path, ("train",))
    with pytest.raises(DataError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist(tmp_path, ("validation",))


def test_training_program_on_files_the_test_wrote(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "run"
    rc = train_fashion.main(["--data-dir", str(tiny_fashion), "--epochs", "3", "--hidden", "8",
                             "--batch-size", "16", "--lr", "0.02", "--val-fraction", "0.2",
                             "--out", str(out), "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.9 and summary["steps"] == "rows"
    assert set(summary["test_accuracy_by_class"]) == {"T-shirt/top", "Trouser"}
    clf = QLLSTMClassifier.load(out / "model.npz")
    assert clf.input_ == "features" and clf.model_.config["input_size"] == 28
    assert clf.n_iter_ == summary["epochs_run"] and clf.block_size == 7
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"]


def test_training_program_reports_missing_data_without_traceback(tmp_path, capsys):
    assert train_fashion.main(["--data-dir", str(tmp_path / "nowhere"), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST folder not found" in err and "Traceback" not in err
    assert train_fashion.main(["--data-dir", str(tmp_path / "nowhere"), "--threads", "1",
                               "--layer-dropout", "1"]) == 2                 # before the data
    assert capsys.readouterr().err.strip() == "error: --layer-dropout must lie in [0, 1), got 1.0"
    for option, value, message in [("--lr", "0", "--lr must be a finite number > 0, got 0.0"),
                                   ("--hidden", "0", "--hidden must be >= 1, got 0"),
                                   ("--block-size", "-1", "--block-size must be >= 0, got -1"),
                                   ("--val-fraction", "0", "--val-fraction must lie in (0, 1), got 0.0")]:
        assert train_fashion.main(["--data-dir", str(tmp_path / "nowhere"), "--threads", "1",
                                   option, value]) == 2        # these were found after the data
        assert capsys.readouterr().err.strip() == f"error: {message}"


@pytest.mark.skipif(gpu_usable(), reason="a GPU is here: --device cuda would train on it")
def test_training_program_without_a_gpu_says_so(tiny_fashion, tmp_path, capsys):
    rc = train_fashion.main(["--data-dir", str(tiny_fashion), "--out", str(tmp_path), "--threads", "1",
                             "--device", "cuda"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--device cpu" in err and "Traceback" not in err


@pytest.mark.skipif(not HAVE_DATA, reason="real Fashion-MNIST data not found beside the checkout")
def test_short_run_on_real_images_learns(tmp_path, capsys):
    """3000 real images as 28 rows, 3 epochs of a small QL-LSTM: far above chance (10%)."""
    rc = train_fashion.main(["--limit", "3000", "--epochs", "3", "--hidden", "32",
                             "--out", str(tmp_path), "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    print(summary)
    assert summary["test_accuracy"] > 0.65
