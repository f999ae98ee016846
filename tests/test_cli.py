"""The qlnumba command: info, predict, evaluate, and one-line errors."""
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_rng
from qlnumba.cli import main
from qlnumba.estimator import QLLSTMClassifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A small text classifier that learned 'good' -> pos, 'bad' -> neg, saved."""
    rng = make_rng(11)
    texts, labels = [], []
    for _ in range(160):
        label = rng.integers(0, 2)
        words = list(rng.choice(["the", "film", "was", "plot", "it"], 4))
        words.insert(rng.integers(0, 5), "good" if label else "bad")
        texts.append(" ".join(words))
        labels.append("pos" if label else "neg")
    clf = QLLSTMClassifier(hidden_size=8, embed_dim=8, max_epochs=6, lr=0.02, random_state=0)
    path = tmp_path_factory.mktemp("cli") / "model.npz"
    clf.fit(texts, labels).save(path)
    return path, clf


def test_info_lists_the_checkpoint(text_model, capsys):
    path, clf = text_model
    assert main(["info", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input"] == "text" and report["classes"] == ["neg", "pos"]
    assert report["vocabulary"] == len(clf.vocabulary_) and report["epochs"] == 6
    assert report["parameters"]["total"] == sum(p.size for p in clf.model_.params.values())
    assert main(["info", str(path)]) == 0
    assert "classes: [\"neg\", \"pos\"]" in capsys.readouterr().out


def test_predict_texts_from_a_file_and_from_stdin(text_model, tmp_path, capsys, monkeypatch):
    path, clf = text_model
    capsys.readouterr()
    lines = ["it was good", "the plot was bad", ""]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(path), str(tmp_path / "in.txt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [o.split("\t")[0] for o in out] == list(clf.predict(lines))
    probs = clf.predict_proba(lines)
    assert [float(o.split("\t")[1]) for o in out] == pytest.approx(probs.max(1), abs=1e-4)
    monkeypatch.setattr(sys, "stdin", io.StringIO("good\nbad\n"))
    assert main(["predict", str(path), "--proba"]) == 0
    rows = [json.loads(o) for o in capsys.readouterr().out.splitlines()]
    assert set(rows[0]) == {"neg", "pos"} and rows[0]["pos"] > 0.5 > rows[1]["pos"]


def test_predict_refuses_what_is_not_text_in_one_line(text_model, tmp_path, capsys, monkeypatch):
    """An array given to a model of text printed Python's own 'utf-8 codec can't decode'."""
    path, _ = text_model
    np.save(tmp_path / "x.npy", np.ones((2, 3)))
    capsys.readouterr()
    assert main(["predict", str(path), str(tmp_path / "x.npy")]) == 2
    assert capsys.readouterr().err == (f"qlnumba predict: error: {tmp_path / 'x.npy'} is not UTF-8 "
                                       "text (byte 0x93: invalid start byte); a model of text reads "
                                       "lines of UTF-8 text\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good \xff film\n"), encoding="utf-8"))
    assert main(["predict", str(path)]) == 2
    assert "standard input is not UTF-8 text (byte 0xff" in capsys.readouterr().err


def test_predict_arrays_for_a_feature_model(tmp_path, capsys):
    x = make_rng(12).standard_normal((20, 5))
    clf = QLLSTMClassifier(hidden_size=4, max_epochs=1).fit(x, np.arange(20) % 2)
    clf.save(tmp_path / "f.npz")
    np.save(tmp_path / "x.npy", x[:3])
    capsys.readouterr()                                 # the seed line
    assert main(["predict", str(tmp_path / "f.npz"), str(tmp_path / "x.npy")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [int(o.split("\t")[0]) for o in out] == list(clf.predict(x[:3]))
    assert main(["predict", str(tmp_path / "f.npz")]) == 2
    assert "give .npy files" in capsys.readouterr().err
    np.save(tmp_path / "wide.npy", x[:, :4])
    assert main(["predict", str(tmp_path / "f.npz"), str(tmp_path / "wide.npy")]) == 2
    assert "X has 4 features" in capsys.readouterr().err
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    assert main(["predict", str(tmp_path / "f.npz"), str(tmp_path / "objects.npy")]) == 2
    assert f"{tmp_path / 'objects.npy'} is not a .npy array of numbers" in capsys.readouterr().err
    np.save(tmp_path / "scalar.npy", np.array(3.0))                # was a TypeError from len()
    assert main(["predict", str(tmp_path / "f.npz"), str(tmp_path / "scalar.npy")]) == 2
    assert "scalar.npy is not a .npy array of one or more sequences" in capsys.readouterr().err


def test_predict_padded_ids_for_a_model_of_ids(tmp_path, capsys):
    rows = [np.array([1, 2, 3]), np.array([4, 1]), np.array([2]), np.array([3, 3, 4, 1])]
    clf = QLLSTMClassifier(hidden_size=4, embed_dim=4, max_epochs=1).fit(rows, [0, 1, 0, 1])
    clf.save(tmp_path / "ids.npz")
    padded = np.zeros((4, 4), np.int64)
    for i, r in enumerate(rows):
        padded[i, :len(r)] = r
    np.save(tmp_path / "ids.npy", padded)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "ids.npz"), str(tmp_path / "ids.npy"), "--proba"]) == 0
    got = [json.loads(line)["1"] for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(got, clf.predict_proba(rows)[:, 1], atol=1e-6)


def test_evaluate_labelled_json_lines(text_model, tmp_path, capsys):
    path, clf = text_model
    records = [{"text": "good film", "label": "pos"}, {"text": "bad plot", "label": "neg"},
               {"text": "it was good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    with gzip.open(tmp_path / "test.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["evaluate", str(path), str(tmp_path / "test.jsonl.gz")]) == 0
    report = json.loads(capsys.readouterr().out)
    want = np.mean(clf.predict([r["text"] for r in records]) == [r["label"] for r in records])
    assert report["n"] == 4 and report["accuracy"] == pytest.approx(want)
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    assert main(["evaluate", str(path), str(tmp_path / "bad.jsonl")]) == 2
    assert "line 1: not a JSON object with 'text' and 'label'" in capsys.readouterr().err
    (tmp_path / "odd.jsonl").write_text('{"text": "x", "label": "meh"}\n')
    assert main(["evaluate", str(path), str(tmp_path / "odd.jsonl")]) == 2
    assert "labels ['meh'] that the model does not know" in capsys.readouterr().err
    # a list or an object as the label was a TypeError traceback; true was taken as 1
    for record, message in [('{"text": "x", "label": ["pos"]}', """'label' must be a string or a number, got ["pos"]"""),
                            ('{"text": "x", "label": true}', "'label' must be a string or a number, got true"),
                            ('{"text": 5, "label": "pos"}', "'text' must be a string, got 5")]:
        (tmp_path / "odd.jsonl").write_text('{"text": "good", "label": "pos"}\n' + record + "\n")
        assert main(["evaluate", str(path), str(tmp_path / "odd.jsonl")]) == 2
        assert capsys.readouterr().err == f"qlnumba evaluate: error: {tmp_path / 'odd.jsonl'}, line 2: {message}\n"


def test_ctrl_c_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C printed a traceback from wherever the run was (often deep in a kernel)."""
    import qlnumba.cli as cli

    def stopped(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "info", stopped)
    assert main(["info", str(tmp_path / "m.npz")]) == 130
    assert capsys.readouterr().err == "\nqlnumba info: interrupted\n"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import imdb as train_imdb
    monkeypatch.setattr(train_imdb, "run", stopped)
    assert train_imdb.main(["--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err == (f"\ninterrupted (--resume {tmp_path / 'run' / 'last.npz'} goes "
                                       "on after the last whole epoch, once one has ended)\n")


def test_errors_are_one_line_without_a_traceback(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qlnumba info: error: checkpoint not found") and "Traceback" not in err
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "junk.npz"), "-"]) == 2
    err = capsys.readouterr().err
    assert "not a readable qlnumba checkpoint (not an .npz archive)" in err
    assert "allow_pickle" not in err                 # no hint to load it unsafely
    np.save(tmp_path / "array.npy", np.zeros(3))      # one array, not an archive
    assert main(["info", str(tmp_path / "array.npy")]) == 2
    assert "not an .npz archive" in capsys.readouterr().err


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "qlnumba", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "predict" in done.stdout and "evaluate" in done.stdout


def test_device_option_reads_a_model_where_asked(text_model, tmp_path, capsys, monkeypatch):
    """--device cpu builds the layers on the CPU whatever the file says; a GPU-trained model
    asked for where there is no GPU is one line that names --device cpu."""
    import qlnumba.checkpoint as checkpoint
    path, clf = text_model
    capsys.readouterr()
    load = checkpoint.load_checkpoint
    from qlnumba.gpu import CudaUnavailable

    def no_gpu(p, device=None):
        if device != "cpu":
            raise CudaUnavailable("no CUDA GPU is available")
        return load(p, device)

    monkeypatch.setattr(checkpoint, "load_checkpoint", no_gpu)
    monkeypatch.setattr("qlnumba.estimator.load_checkpoint", no_gpu)
    monkeypatch.setattr(sys, "stdin", io.StringIO("good\n"))
    assert main(["predict", str(path)]) == 2
    assert "no CUDA GPU is available (or read the model with --device cpu)" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO("good\n"))
    assert main(["predict", str(path), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == clf.predict(["good"])[0]


def test_generate_from_a_language_model(tmp_path, capsys):
    from qlnumba.checkpoint import save_checkpoint
    from qlnumba.data.shakespeare import char_vocabulary
    from qlnumba.lm import LanguageModel
    vocab = char_vocabulary("to be or not")
    model = LanguageModel(len(vocab), embed_dim=3, hidden_size=4, seed=0)
    save_checkpoint(tmp_path / "lm.npz", model, vocab, meta={"epoch": 1, "val_loss": 2.0})
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "lm.npz"), "--prompt", "to ", "--chars", "20",
                 "--seed", "3"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    assert out.startswith("to ") and len(out) == 23 and set(out) <= set("to be or n")
    assert main(["generate", str(tmp_path / "lm.npz"), "--prompt", "to ", "--chars", "20",
                 "--seed", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip("\n") == out and captured.err == ""    # seeded
    assert main(["generate", str(tmp_path / "lm.npz"), "--prompt", "TO zz", "--chars", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("TO zz") and "never saw 'OTz'" in captured.err
    assert main(["info", str(tmp_path / "lm.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["architecture"] == "language_model" and report["val_loss"] == 2.0
    assert main(["predict", str(tmp_path / "lm.npz"), "-"]) == 2
    assert "holds a LanguageModel, not a classifier" in capsys.readouterr().err


def test_evaluate_a_language_model_on_a_text(tmp_path, capsys):
    """evaluate on a language model: the mean loss per character of the whole text, left
    to right (model.score), and how many of its characters the vocabulary lacks."""
    from qlnumba.checkpoint import save_checkpoint
    from qlnumba.data.shakespeare import char_vocabulary, encode_chars
    from qlnumba.lm import LanguageModel
    vocab = char_vocabulary("to be or not\n")
    model = LanguageModel(len(vocab), embed_dim=3, hidden_size=4, seed=0)
    save_checkpoint(tmp_path / "lm.npz", model, vocab)
    text = "not to be, or to be\nto be\n"                   # ',' is not in the vocabulary
    with gzip.open(tmp_path / "play.txt.gz", "wt") as f:
        f.write(text)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "lm.npz"), str(tmp_path / "play.txt.gz")]) == 0
    report = json.loads(capsys.readouterr().out)
    want = model.score(encode_chars(text, vocab))
    assert report["chars"] == len(text) - 1 and report["unknown_chars"] == 1
    assert report["nats_per_char"] == pytest.approx(want, rel=1e-12)
    assert report["bits_per_char"] == pytest.approx(want / np.log(2), rel=1e-12)
    assert main(["evaluate", str(tmp_path / "lm.npz"), str(tmp_path / "play.txt.gz"),
                 "--streams", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chars"] == 24                                   # 2 parts of 12 predictions
    assert report["nats_per_char"] == pytest.approx(model.score(encode_chars(text, vocab), 2),
                                                    rel=1e-12)
    assert main(["evaluate", str(tmp_path / "lm.npz"), str(tmp_path / "play.txt.gz"),
                 "--streams", "0"]) == 2
    assert "streams must be an integer >= 1" in capsys.readouterr().err
    from qlnumba import config
    assert main(["evaluate", str(tmp_path / "lm.npz"), str(tmp_path / "play.txt.gz"),
                 "--threads", "1"]) == 0 and config.get_num_threads() == 1
    assert json.loads(capsys.readouterr().out)["nats_per_char"] == pytest.approx(want, rel=1e-6)
    assert main(["evaluate", str(tmp_path / "lm.npz"), str(tmp_path / "play.txt.gz"),
                 "--threads", "0"]) == 2
    assert "thread count must be an integer >= 1" in capsys.readouterr().err
    (tmp_path / "one.txt").write_text("t")
    assert main(["evaluate", str(tmp_path / "lm.npz"), str(tmp_path / "one.txt")]) == 2
    assert "fewer than 2 characters" in capsys.readouterr().err


def test_generate_refuses_a_classifier(text_model, capsys):
    path, _ = text_model
    assert main(["generate", str(path)]) == 2
    assert "not a language model" in capsys.readouterr().err


def test_exit_status_reports_a_gpu_out_of_memory(capsys):
    """A device allocation that does not fit (numba-cuda's CudaAPIError, CUDA_ERROR_OUT_OF_MEMORY)
    ends a program with one line and status 2; other device errors are not hidden."""
    driver = pytest.importorskip("numba.cuda.cudadrv.driver")
    from qlnumba.cli import exit_status

    def out_of_memory():
        raise driver.CudaAPIError(2, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")

    assert exit_status(out_of_memory, "imdb.py: ", "; or train on the CPU with --device cpu") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imdb.py: error: the GPU ran out of memory")
    assert err[0].endswith("try smaller batches or shorter sequences; or train on the CPU with --device cpu")

    def illegal_address():
        raise driver.CudaAPIError(700, "Call to cuCtxSynchronize results in CUDA_ERROR_ILLEGAL_ADDRESS")

    with pytest.raises(driver.CudaAPIError):
        exit_status(illegal_address, "", "")
