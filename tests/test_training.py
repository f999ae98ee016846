"""Checkpoints, the training program's CLI, and a short run on real IMDB reviews."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import qlnumba
from helpers import gpu_usable, make_rng
from qlnumba.checkpoint import load_checkpoint, save_checkpoint
from qlnumba.data import Vocabulary, default_imdb_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import imdb as train_imdb  # noqa: E402

HAVE_IMDB = (default_imdb_dir() / "train.jsonl.gz").is_file()


def small_model(kind="ql"):
    return qlnumba.SequenceClassifier(6, embed_dim=4, hidden_size=3, kind=kind, block_size=2, seed=0)


def test_checkpoint_round_trip(tmp_path):
    model = small_model()
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b", "c", "d"])
    opt = qlnumba.Adam(model.params)
    ids = np.array([[2, 3, 4, 5]])
    model.forward(ids, None, np.array([1]))
    opt.step(model.backward())
    path = tmp_path / "m.npz"
    save_checkpoint(path, model, vocab, opt, meta={"epoch": 3})
    loaded, vocab2, opt_state, meta = load_checkpoint(path)
    assert vocab2.itos == vocab.itos and meta["epoch"] == 3
    assert loaded.config == model.config
    for k in model.params:
        assert (loaded.params[k] == model.params[k]).all()
    assert np.allclose(loaded.forward(ids)[1], model.forward(ids)[1])
    opt2 = qlnumba.Adam(loaded.params)
    opt2.load_state_dict(opt_state)
    assert opt2.t == 1 and all((opt2.m[k] == opt.m[k]).all() for k in opt.m)


def test_a_checkpoint_write_that_fails_leaves_the_old_one_whole(tmp_path, monkeypatch):
    """The file was opened for writing in place: a run stopped in the middle of a save (or a
    full disk) left a truncated best.npz, and the previous best was lost."""
    path = tmp_path / "best.npz"
    save_checkpoint(path, small_model(), meta={"epoch": 1})
    before = path.read_bytes()

    def fails_halfway(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")
    monkeypatch.setattr(np, "savez", fails_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, small_model(), meta={"epoch": 2})
    assert path.read_bytes() == before and load_checkpoint(path)[3]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz"]      # nothing left beside it


def test_save_refuses_what_would_not_load_again(tmp_path):
    """A vocabulary of another size, an optimizer of other parameters, metadata that JSON
    cannot hold: load_checkpoint would refuse the file, so save_checkpoint refuses to write it."""
    model, other = small_model(), qlnumba.SequenceClassifier(6, embed_dim=4, hidden_size=3, seed=0)
    cases = {"vocab must be None or the model's Vocabulary of 6 tokens":
             dict(vocab=Vocabulary(["<pad>", "<unk>", "a"])),
             "optimizer must be None or an Adam over the model's parameters":
             dict(optimizer=qlnumba.Adam({"x": np.zeros(2)})),
             "meta must hold JSON values only": dict(meta={"epoch": np.zeros(2)}),
             "meta must be None or a dict, got list": dict(meta=[1])}
    for message, kwargs in cases.items():
        with pytest.raises(ValueError, match=message):
            save_checkpoint(tmp_path / "x.npz", model, **kwargs)
    with pytest.raises(ValueError, match="path must be a path"):
        save_checkpoint(3, model)
    assert not list(tmp_path.iterdir())
    save_checkpoint(tmp_path / "x.npz", other, optimizer=qlnumba.Adam(other.params))


def test_checkpoint_from_before_layer_dropout_loads(tmp_path):
    """A checkpoint whose model config has no layer_dropout (written before it existed)
    loads as a model without dropout between layers."""
    model = qlnumba.SequenceClassifier(6, embed_dim=4, hidden_size=3, num_layers=2, seed=0)
    save_checkpoint(tmp_path / "new.npz", model)
    with np.load(tmp_path / "new.npz") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["__meta__"]))
    del meta["model_config"]["layer_dropout"]
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **arrays)
    loaded = load_checkpoint(tmp_path / "old.npz")[0]
    assert loaded.config == model.config and loaded.rnn.dropout == 0.0


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(ValueError, match="not a qlnumba checkpoint"):
        load_checkpoint(foreign)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __format__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        load_checkpoint(pickled)
    good = tmp_path / "good.npz"
    save_checkpoint(good, small_model())
    with np.load(good) as z:
        arrays = dict(z)
    arrays["param/head.W"] = np.zeros((7, 7), np.float32)
    np.savez(tmp_path / "shapes.npz", **arrays)
    with pytest.raises(ValueError, match="head.W"):
        load_checkpoint(tmp_path / "shapes.npz")
    for version in (None, np.array("1"), np.array([1, 1]), np.array(1.0)):   # KeyError, ..., took 1.0
        if version is None:
            arrays.pop("__version__")
        else:
            arrays["__version__"] = version
        np.savez(tmp_path / "version.npz", **arrays)
        with pytest.raises(ValueError, match="version.npz: corrupt checkpoint .no integer '__version__'"):
            load_checkpoint(tmp_path / "version.npz")
    arrays["__version__"] = np.array(99)
    np.savez(tmp_path / "future.npz", **arrays)
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(tmp_path / "future.npz")
    with pytest.raises(ValueError, match="not found"):
        load_checkpoint(tmp_path / "absent.npz")


def test_training_cli_resume_refuses_a_corrupt_optimizer_state(tmp_path, capsys):
    """A checkpoint whose Adam state is foreign or corrupt ended --resume with a KeyError
    traceback (or took NaN moments in); now one line names the file, before any data is read."""
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b", "c", "d"])
    model = small_model()
    opt = qlnumba.Adam(model.params)
    save_checkpoint(tmp_path / "ok.npz", model, vocab, opt, meta={"epoch": 1})
    with np.load(tmp_path / "ok.npz") as z:
        arrays = dict(z)
    arrays["opt/m/head.W"] = np.full_like(arrays["opt/m/head.W"], np.nan)
    np.savez(tmp_path / "nan.npz", **arrays)
    del arrays["opt/t"]
    np.savez(tmp_path / "foreign.npz", **arrays)
    for name, message in (("nan.npz", "m/head.W holds NaN"), ("foreign.npz", "missing ['t']")):
        rc = train_imdb.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                              "--threads", "1", "--epochs", "2", "--resume", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"error: {tmp_path / name}: optimizer state") \
            and message in err and "Traceback" not in err


def test_training_cli_resume_refuses_a_trained_checkpoint_without_optimizer_state(tmp_path, capsys):
    """A checkpoint of a trained run without Adam's state went on with a fresh Adam, whose first
    steps are not the run's; now it is refused, before any data is read.  One of no epochs (a
    model saved to start from) still starts a fresh Adam."""
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b", "c", "d"])
    save_checkpoint(tmp_path / "trained.npz", small_model(), vocab, meta={"epoch": 1})
    rc = train_imdb.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                          "--threads", "1", "--epochs", "2", "--resume", str(tmp_path / "trained.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"error: {tmp_path / 'trained.npz'} has trained 1 epochs but holds no "
                               "optimizer state (Adam's t, m and v), so the run cannot go on as it "
                               "would have; resume from the run's last.npz, which has it\n")
    save_checkpoint(tmp_path / "start.npz", small_model(), vocab)
    rc = train_imdb.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                          "--threads", "1", "--epochs", "2", "--resume", str(tmp_path / "start.npz")])
    assert rc == 2 and capsys.readouterr().err.startswith("error: IMDB data folder not found")


def test_training_programs_offer_every_model_kind(capsys):
    """--model lists its choices by hand: they must be the library's kinds, no more, no less."""
    import re
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import fashion_mnist as train_fashion
    for program in (train_imdb, train_fashion):
        with pytest.raises(SystemExit):
            program.parse_args(["--help"])
        choices = re.search(r"--model \{([^}]*)\}", capsys.readouterr().out).group(1).split(",")
        assert sorted(choices) == sorted(qlnumba.MODEL_KINDS)


def test_training_cli_reports_missing_data_without_traceback(tmp_path, capsys):
    rc = train_imdb.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--threads", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "IMDB data folder not found" in err and "Traceback" not in err


@pytest.mark.parametrize("option,value,message", [
    ("--epochs", "0", "--epochs must be >= 1, got 0"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--patience", "0", "--patience must be >= 1, got 0"),
    ("--limit", "0", "--limit must be >= 1, got 0"),
    ("--val-fraction", "1", "--val-fraction must lie in (0, 1), got 1.0"),
    ("--head-dropout", "1", "--head-dropout must lie in [0, 1), got 1.0"),
    ("--layer-dropout", "-0.5", "--layer-dropout must lie in [0, 1), got -0.5"),
    # these were found only after the data had been read and tokenized
    ("--lr", "0", "--lr must be a finite number > 0, got 0.0"),
    ("--lr", "inf", "--lr must be a finite number > 0, got inf"),
    ("--weight-decay", "-0.1", "--weight-decay must be a finite number >= 0, got -0.1"),
    ("--clip", "nan", "--clip must be a finite number >= 0, got nan"),
    ("--hidden", "0", "--hidden must be >= 1, got 0"),
    ("--block-size", "0", "--block-size must be >= 1, got 0"),
    ("--max-len", "0", "--max-len must be >= 1, got 0"),
    ("--vocab-size", "1", "--vocab-size must be >= 2 (padding and unknown), got 1"),
    ("--seed", "-1", "--seed must be >= 0, got -1")])
def test_training_cli_refuses_bad_counts_before_reading_data(tmp_path, capsys, option, value, message):
    """Checked first: --epochs 0 once went on to evaluate whatever best.npz the folder held."""
    rc = train_imdb.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path),
                          "--threads", "1", option, value])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_training_cli_resume_with_no_epoch_left_says_so(tiny_imdb, tmp_path, capsys):
    common = ["--data-dir", str(tiny_imdb), "--out", str(tmp_path), "--threads", "1", "--min-freq", "1",
              "--hidden", "4", "--embed-dim", "4", "--no-progress"]
    assert train_imdb.main(common + ["--epochs", "1"]) == 0
    capsys.readouterr()
    assert train_imdb.main(common + ["--epochs", "1", "--resume", str(tmp_path / "last.npz")]) == 2
    assert "has trained 1 epochs; --epochs 1 leaves none to run" in capsys.readouterr().err
    # into another folder, a run whose epochs beat no earlier one would end on a missing best.npz
    assert train_imdb.main(common + ["--epochs", "2", "--resume", str(tmp_path / "last.npz"),
                                     "--out", str(tmp_path / "elsewhere")]) == 2
    assert "best.npz, the run's best model so far, is missing; give --out the folder of the run" \
        in capsys.readouterr().err


def test_training_cli_resume_refuses_other_model_options(tiny_imdb, tmp_path, capsys):
    """--resume trains the checkpoint's model: a model option given that differs from it was
    silently ignored; now it is refused before the data is read.  The same value passes."""
    common = ["--data-dir", str(tiny_imdb), "--out", str(tmp_path), "--threads", "1", "--min-freq", "1",
              "--embed-dim", "4", "--no-progress"]
    assert train_imdb.main(common + ["--epochs", "1", "--hidden", "4", "--layers", "2"]) == 0
    capsys.readouterr()
    resume = common + ["--epochs", "2", "--resume", str(tmp_path / "last.npz")]
    assert train_imdb.main(resume + ["--hidden", "8", "--layer-dropout", "0.2", "--model", "ql"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--hidden 8 (the checkpoint's: 4), --layer-dropout 0.2 " \
        "(the checkpoint's: 0.0)" in err and "--model" not in err
    assert train_imdb.main(resume + ["--hidden", "4"]) == 0      # its own value; --layers left out


def test_training_cli_refuses_a_checkpoint_that_is_not_an_imdb_classifier(tiny_imdb, tmp_path, capsys):
    """--resume and --eval read any qlnumba checkpoint.  A language model's --eval scored it as
    a classifier (exit 0), a 3-class model trained on as one, a features classifier's --resume
    was an AttributeError, and a non-integer epoch a TypeError.  A QLLSTMClassifier of text
    into 0 and 1 is fine."""
    from qlnumba import QLLSTMClassifier
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b", "c"])
    save_checkpoint(tmp_path / "lm.npz", qlnumba.LanguageModel(5, embed_dim=2, hidden_size=2, seed=0),
                    vocab, meta={"epoch": 1})
    QLLSTMClassifier(hidden_size=2, block_size=2, max_epochs=1).fit(
        np.zeros((3, 4)), [0, 1, 0]).save(tmp_path / "features.npz")
    QLLSTMClassifier(hidden_size=2, embed_dim=2, max_epochs=1).fit(
        ["a b", "c", "b"], [0, 1, 2]).save(tmp_path / "three.npz")
    for name, meta in (("epoch", {"epoch": "1"}), ("data", {"epoch": 1, "data": [1]}),
                       ("keep", {"epoch": 1, "data": {"keep": "middle"}}),
                       ("max_len", {"epoch": 1, "data": {"max_len": 0}}),
                       ("best", {"epoch": 1, "best_val_accuracy": "x"}),
                       ("rng", {"epoch": 1, "rng_state": {"bit_generator": "MT19937", "state": 3}}),
                       ("since", {"epoch": 1, "epochs_since_best": -1})):
        save_checkpoint(tmp_path / f"{name}.npz", small_model(), Vocabulary(vocab.itos + ["d"]),
                        meta=meta)
    cases = {"lm": "holds a language model; IMDB needs a classifier of text",
             "features": r"holds a classifier of ids or features \(no vocabulary\)",
             "three": r"classifies into the labels \[0, 1, 2\], not IMDB's labels 0 and 1",
             "epoch": r"corrupt training state \(epoch must be an integer >= 0, got '1'\)",
             "data": r"corrupt training state \(data must be a dict, got \[1\]\)",
             "keep": r"corrupt training state \(keep must be 'start' or 'end', got 'middle'\)", "max_len": "max_len must be an integer >= 1, got 0",
             "best": r"corrupt training state \(best_val_accuracy must be a number or null, got 'x'\)",
             "rng": r"corrupt training state \(rng_state is not the state of a numpy Generator ",
             "since": r"corrupt training state \(epochs_since_best must be an integer >= 0, got -1\)"}
    common = ["--data-dir", str(tiny_imdb), "--out", str(tmp_path / "out"), "--threads", "1",
              "--no-progress", "--epochs", "2"]
    for name, message in cases.items():
        for mode in ("--resume", "--eval"):
            assert train_imdb.main(common + [mode, str(tmp_path / f"{name}.npz")]) == 2, (name, mode)
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and re.search(message, err), (name, mode, err)
    QLLSTMClassifier(hidden_size=2, embed_dim=2, max_epochs=1, max_len=3).fit(
        ["a b", "c", "b"], [0, 1, 0]).save(tmp_path / "two.npz")
    assert train_imdb.main(common + ["--eval", str(tmp_path / "two.npz")]) == 0
    assert "test_accuracy" in capsys.readouterr().out


def test_training_cli_eval_takes_the_device_option(tiny_imdb, tmp_path, capsys):
    """--eval (and --resume) build the checkpoint's model on --device: a model saved from a
    GPU run is evaluated on the CPU (it was built for the GPU it was saved from)."""
    model = qlnumba.SequenceClassifier(50, embed_dim=4, hidden_size=4, seed=0)
    model.config["device"] = "cuda"                                 # as a GPU run saves it
    vocab = Vocabulary(["<pad>", "<unk>"] + [f"w{i}" for i in range(48)])
    save_checkpoint(tmp_path / "gpu.npz", model, vocab, meta={"epoch": 1})
    rc = train_imdb.main(["--data-dir", str(tiny_imdb), "--threads", "1", "--device", "cpu",
                          "--eval", str(tmp_path / "gpu.npz")])
    assert rc == 0, capsys.readouterr().err
    assert "test_accuracy" in capsys.readouterr().out


@pytest.mark.skipif(gpu_usable(), reason="a GPU is here: the GPU model loads")
def test_a_gpu_checkpoint_without_a_gpu_names_device_cpu(tmp_path):
    from qlnumba import QLLSTMClassifier
    from qlnumba.gpu import CudaUnavailable
    model = small_model()
    model.config["device"] = "cuda"                                 # as a GPU run saves it
    save_checkpoint(tmp_path / "gpu.npz", model, Vocabulary(["<pad>", "<unk>", "a", "b", "c", "d"]))
    with pytest.raises(CudaUnavailable, match=r"gpu.npz holds a model saved from a GPU, and .*; "
                                              r"device='cpu' reads it on the CPU"):
        QLLSTMClassifier.load(tmp_path / "gpu.npz")
    assert QLLSTMClassifier.load(tmp_path / "gpu.npz", device="cpu").model_.config["device"] == "cpu"


@pytest.mark.skipif(gpu_usable(), reason="a GPU is here: --device cuda would train on it")
def test_training_cli_without_a_gpu_says_so(tiny_imdb, tmp_path, capsys):
    rc = train_imdb.main(["--data-dir", str(tiny_imdb), "--out", str(tmp_path), "--threads", "1",
                          "--device", "cuda", "--min-freq", "1", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--device cpu" in err and "Traceback" not in err


@pytest.mark.skipif(not HAVE_IMDB, reason="real IMDB data not found beside the checkout")
def test_short_run_on_real_reviews_learns(tmp_path, capsys):
    """1500 real reviews, 4 epochs of a small QL-LSTM: the loss falls and held-out accuracy beats chance.
    At K = 32, the block length this run was sized with: the program's default since the
    thirty-sixth session, K = 4, starts slower on so few short reviews (training loss 0.701 ->
    0.627 in these 4 epochs, against 0.697 -> 0.537; results/imdb.md)."""
    out = tmp_path / "run"
    rc = train_imdb.main(["--block-size", "32",
                          "--limit", "1500", "--epochs", "4", "--max-len", "120", "--hidden", "32",
                          "--embed-dim", "32", "--vocab-size", "4000", "--batch-size", "16",
                          "--val-fraction", "0.2", "--patience", "4", "--out", str(out),
                          "--no-progress", "--seed", "0", "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    print(log)
    assert log[-1]["train_loss"] < log[0]["train_loss"] - 0.1
    assert max(r["val_accuracy"] for r in log) > 0.62
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.6
    assert set(summary["params"]) == {"embedding", "recurrent", "head", "total"}
    # --eval on the saved model reproduces the test accuracy
    capsys.readouterr()
    assert train_imdb.main(["--eval", str(out / "best.npz"), "--limit", "1500", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == pytest.approx(summary["test_accuracy"])


def test_resume_continues_after_the_last_epoch(tiny_imdb, tmp_path):
    """A run stopped after epoch 1 and resumed trains what the run without the stop trains:
    the same batches and dropout masks (the Generator's state is in the checkpoint), the same
    Adam state, the same early-stopping count.  (It drew epoch 2 from a fresh Generator.)
    The resumed run, not given --block-size, records the checkpoint's (not the default)."""
    common = ["--data-dir", str(tiny_imdb), "--hidden", "8", "--embed-dim", "8", "--batch-size", "2",
              "--patience", "9", "--no-progress", "--seed", "3", "--threads", "1",
              "--embed-dropout", "0.3", "--head-dropout", "0.3"]
    out, whole = tmp_path / "run", tmp_path / "whole"
    assert train_imdb.main(common + ["--epochs", "1", "--out", str(out), "--block-size", "3"]) == 0
    assert train_imdb.main(common + ["--epochs", "2", "--out", str(out),
                                     "--resume", str(out / "last.npz")]) == 0
    assert train_imdb.main(common + ["--epochs", "2", "--out", str(whole), "--block-size", "3"]) == 0
    assert train_imdb.BLOCK_SIZE != 3
    assert json.loads((out / "summary.json").read_text())["args"]["block_size"] == 3
    logs = [[json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (out, whole)]
    assert [r["epoch"] for r in logs[0]] == [1, 2]
    for resumed, uninterrupted in zip(*logs):
        for key in ("train_loss", "train_accuracy", "val_accuracy"):
            assert resumed[key] == uninterrupted[key], (resumed["epoch"], key)
    (model, _, opt_state, meta), (model2, _, opt_state2, meta2) = (
        load_checkpoint(run / "last.npz") for run in (out, whole))
    assert meta["epoch"] == 2 and int(opt_state["t"]) > 0
    assert meta["rng_state"] == meta2["rng_state"]
    assert meta["epochs_since_best"] == meta2["epochs_since_best"]
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], model2.params[k], err_msg=k)
        np.testing.assert_array_equal(opt_state[f"m/{k}"], opt_state2[f"m/{k}"], err_msg=k)


def test_early_stopping_counts_on_across_a_resume(tiny_imdb, tmp_path, capsys):
    """With a learning rate too small to change a prediction, the validation accuracy never
    beats epoch 1's: --patience 2 stops after epoch 3, in one run or resumed after epoch 2
    (the count of epochs without a better one is in the checkpoint)."""
    common = ["--data-dir", str(tiny_imdb), "--hidden", "4", "--embed-dim", "4",
              "--patience", "2", "--no-progress", "--seed", "0", "--threads", "1", "--lr", "1e-12"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_imdb.main(common + ["--epochs", "6", "--out", str(whole)]) == 0
    assert "early stop: no better validation accuracy for 2 epochs" in capsys.readouterr().out
    assert train_imdb.main(common + ["--epochs", "2", "--out", str(parts)]) == 0
    assert train_imdb.main(common + ["--epochs", "6", "--out", str(parts),
                                     "--resume", str(parts / "last.npz")]) == 0
    assert "early stop: no better validation accuracy for 2 epochs" in capsys.readouterr().out
    for run in (whole, parts):
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["epochs_run"], summary["best_epoch"]) == (3, 1), run


def test_a_diverging_run_stops_with_one_line(tiny_imdb, tmp_path, capsys):
    """A learning rate of 1e30 drives the parameters to where the gradients overflow: Adam
    refuses the step (NonFiniteGradients, a ValueError), and the program says at which epoch
    and what to try, with exit status 1 (it said only 'gradients contain NaN or inf')."""
    rc = train_imdb.main(["--data-dir", str(tiny_imdb), "--out", str(tmp_path / "out"),
                          "--threads", "1", "--no-progress", "--epochs", "3", "--batch-size", "2",
                          "--lr", "1e30", "--clip", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and re.search(r"error: the gradients held NaN or inf at epoch \d; stopping. "
                                 r"Try a smaller --lr or --clip.", err), err


def test_host_trainer_step_is_forward_backward_update():
    """make_trainer on a CPU model: HostTrainer, whose step is forward, backward and the Adam
    update, the same to the last bit as the three calls by hand; sync_to_host does nothing."""
    from qlnumba.model import HostTrainer, make_trainer
    rng = make_rng(81)
    kw = dict(embed_dim=3, hidden_size=4, kind="ql", block_size=2, embed_dropout=0.2, seed=2)
    by_hand, model = qlnumba.SequenceClassifier(9, **kw), qlnumba.SequenceClassifier(9, **kw)
    opt_hand, opt = qlnumba.Adam(by_hand.params, lr=0.05), qlnumba.Adam(model.params, lr=0.05)
    trainer = make_trainer(model, opt)
    assert isinstance(trainer, HostTrainer)
    rng_hand, rng_step = np.random.default_rng(4), np.random.default_rng(4)
    for _ in range(2):
        ids, lengths, y = rng.integers(1, 9, (3, 5)), np.array([5, 2, 4]), rng.integers(0, 2, 3)
        loss_hand, probs_hand = by_hand.forward(ids, lengths, y, rng=rng_hand)
        opt_hand.step(by_hand.backward())
        loss, probs = trainer.step(ids, lengths, y, rng=rng_step)
        assert loss == loss_hand and np.array_equal(probs, probs_hand)
    trainer.sync_to_host()
    for k in model.params:
        assert np.array_equal(model.params[k], by_hand.params[k]), k


def test_report_command_shows_the_options_given():
    import report
    args = dict(model="ql", hidden=128, seed=0, threads=2, layers=2, layer_dropout=0.3,
                given=["layer_dropout", "layers", "no_progress", "out", "seed", "threads"])
    assert report.command({"args": args}) == \
        "`python train/imdb.py --model ql --layer-dropout 0.3 --layers 2 --seed 0 --threads 2`"
    old = dict(model="gru", hidden=192, seed=1, threads=1)              # before "given"
    assert report.command({"args": old}) == "`python train/imdb.py --model gru --hidden 192 --seed 1 --threads 1`"
