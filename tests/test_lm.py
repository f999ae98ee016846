"""LanguageModel: gradients against finite differences, chunked reading equals one call,
a short run whose loss falls, generation, checkpoints; Tiny Shakespeare reading and the
training program."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import qlnumba
from helpers import assert_close, gpu_usable, make_rng, numeric_grad
from qlnumba.checkpoint import load_checkpoint, save_checkpoint
from qlnumba.data import DataError, default_shakespeare_dir, load_shakespeare
from qlnumba.data.shakespeare import (char_vocabulary, decode_chars, encode_chars, split_ids,
                                      stream_batches)
from qlnumba.lm import LM_KINDS, LanguageModel, draw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import shakespeare as train_shakespeare  # noqa: E402

HAVE_TEXT = (default_shakespeare_dir() / "input.txt").is_file()


@pytest.mark.parametrize("num_layers,layer_dropout", [(1, 0.0), (2, 0.4)])
@pytest.mark.parametrize("kind", LM_KINDS)
def test_gradients_match_finite_differences(kind, num_layers, layer_dropout):
    """Ragged rows, a carried initial state, dropout (and between two layers): every
    parameter's gradient."""
    rng = make_rng(50)
    model = LanguageModel(6, embed_dim=3, hidden_size=3, kind=kind, block_size=2, dropout=0.25,
                          num_layers=num_layers, layer_dropout=layer_dropout, dtype=np.float64,
                          seed=1)
    ids = rng.integers(1, 6, (3, 5))
    targets = rng.integers(1, 6, (3, 5))
    lengths = np.array([5, 2, 4])
    _, _, state = model.forward(rng.integers(1, 6, (3, 3)))       # a state from earlier text
    state = {k: v.copy() for k, v in state.items()}

    def loss():
        return model.forward(ids, lengths, targets, state, rng=np.random.default_rng(7))[0]

    loss()
    grads = model.backward()
    assert set(grads) == set(model.params) and (grads["embed"][0] == 0).all()
    for name, p in model.params.items():
        assert_close(grads[name], numeric_grad(loss, p), 1e-5, 1e-8, name)


@pytest.mark.parametrize("kind", ["ql", "gru"])
def test_reading_in_chunks_equals_one_call(kind):
    """Loss, last-step probabilities and state: two chunks with the state carried equal one
    call over the whole text (HGR-ASC's block counter included: the cut is inside a block)."""
    rng = make_rng(51)
    model = LanguageModel(9, embed_dim=4, hidden_size=5, kind=kind, block_size=3,
                          dtype=np.float64, seed=2)
    ids, targets = rng.integers(1, 9, (2, 11)), rng.integers(1, 9, (2, 11))
    whole, probs, final = model.forward(ids, targets=targets, need_grad=False)
    first, _, state = model.forward(ids[:, :4], targets=targets[:, :4], need_grad=False)
    second, probs2, final2 = model.forward(ids[:, 4:], targets=targets[:, 4:], state=state,
                                           need_grad=False)
    assert (4 * first + 7 * second) / 11 == pytest.approx(whole, rel=1e-12)
    np.testing.assert_allclose(probs2, probs, rtol=1e-12)
    for k in final:
        np.testing.assert_allclose(final2[k], final[k], rtol=1e-12)
    # need_grad=False gives the same loss as the training path, and keeps nothing
    assert model.forward(ids, targets=targets)[0] == pytest.approx(whole, rel=1e-12)
    model.forward(ids, targets=targets, need_grad=False)
    with pytest.raises(ValueError, match="backward"):
        model.backward()


def test_short_training_run_loss_falls():
    """A repeating 7-character text: 60 Adam steps of truncated BPTT learn it."""
    vocab = char_vocabulary("abcdefg")
    ids = encode_chars("abcdefg" * 200, vocab)
    model = LanguageModel(len(vocab), embed_dim=8, hidden_size=16, kind="ql", block_size=4, seed=3)
    opt = qlnumba.Adam(model.params, lr=0.02, clip_norm=5.0)
    losses, state = [], None
    for _ in range(4):
        for x, y, lengths in stream_batches(ids, 8, 10):
            loss, _, state = model.forward(x, lengths, y, state)
            opt.step(model.backward())
            losses.append(loss)
    print(losses)
    assert np.mean(losses[-5:]) < 0.1 * np.mean(losses[:5])
    out = model.generate(encode_chars("abc", vocab), 14, np.random.default_rng(0), 0.5)
    assert decode_chars(out, vocab) == "defgabcdefgabc"


def test_score_is_the_mean_loss_over_every_predicted_token():
    """score(ids): one stream equals one forward over the whole sequence for any chunk
    length; streams read equal parts, each from zeros; bad input is refused."""
    rng = make_rng(31)
    model = LanguageModel(7, embed_dim=3, hidden_size=5, kind="ql", block_size=3,
                          dtype=np.float64, seed=2)
    ids = rng.integers(1, 7, 41)
    whole, _, _ = model.forward(ids[None, :-1], None, ids[None, 1:])
    for steps in (1, 7, 40, 100):
        assert model.score(ids, steps=steps) == pytest.approx(whole, rel=1e-12)
    parts = ids[:41].reshape(-1)                          # 2 streams of 20 predictions each
    a, _, _ = model.forward(parts[None, :20], None, parts[None, 1:21])
    b, _, _ = model.forward(parts[None, 20:40], None, parts[None, 21:41])
    assert model.score(ids, streams=2, steps=6) == pytest.approx((a + b) / 2, rel=1e-12)
    for bad, match in [(ids[:1], "at least 2 ids"), (ids.reshape(1, -1), "1-D integer"),
                       (ids.astype(float), "1-D integer"), (np.array([1, 7]), "vocab"),
                       (np.array([0, 1]), ">= 1")]:
        with pytest.raises(ValueError, match=match):
            model.score(bad)
    with pytest.raises(ValueError, match="streams must be an integer >= 1"):
        model.score(ids, streams=0)
    with pytest.raises(ValueError, match="too few"):
        model.score(ids[:3], streams=3)


def test_generation_is_seeded_and_stays_in_the_vocabulary():
    model = LanguageModel(7, embed_dim=3, hidden_size=4, seed=4)
    a = model.generate(np.array([1, 2]), 30, np.random.default_rng(5))
    b = model.generate(np.array([1, 2]), 30, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 1 and a.max() < 7 and len(a) == 30
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([1]), 3, np.random.default_rng(0), temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([1]), 3, np.random.default_rng(0), temperature=np.inf)
    with pytest.raises(ValueError, match="Generator"):
        model.generate(np.array([1]), 3, 0)
    with pytest.raises(ValueError, match="non-empty"):
        model.generate(np.array([], np.int64), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="padding"):
        model.generate(np.array([0, 2]), 3, np.random.default_rng(0))
    c = model.generate(np.array([1, 2]), 200, np.random.default_rng(5), exclude=(0, 1, 3))
    assert not set(c.tolist()) & {0, 1, 3}
    with pytest.raises(ValueError, match="exclude"):
        model.generate(np.array([1]), 3, np.random.default_rng(0), exclude=(1,))
    with pytest.raises(ValueError, match="exclude"):
        model.generate(np.array([1]), 3, np.random.default_rng(0), exclude=tuple(range(7)))
    for bad in ((0, 7), (0, -1), (0, 1.5), None, (0, "a")):     # (0, 7) was an IndexError, None a TypeError
        with pytest.raises(ValueError, match=r"exclude must hold 0 \(padding\) and other ids in \[0, 7\)"):
            model.generate(np.array([1]), 3, np.random.default_rng(0), exclude=bad)
    d = model.generate(np.array([1, 2]), 50, np.random.default_rng(5), exclude={0, np.int64(1)})
    assert 0 not in d and 1 not in d
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([1]), 3, np.random.default_rng(0), temperature="1")
    with pytest.raises(ValueError, match="steps must be an integer >= 0"):
        model.generate(np.array([1]), -1, np.random.default_rng(0))
    assert len(model.generate(np.array([1]), 0, np.random.default_rng(0))) == 0


def test_generation_at_a_tiny_temperature_is_greedy():
    """p^(1/T) underflows in float64 for T = 1e-3; the draw is made in log space, so it is
    the most likely id left after ``exclude``, not whatever id an all-zero vector gives."""
    model = LanguageModel(7, embed_dim=3, hidden_size=4, seed=4)
    prompt = np.array([1, 2])
    out = model.generate(prompt, 5, np.random.default_rng(0), temperature=1e-3, exclude=(0, 3))
    ids, state = prompt, None
    for drawn in out:
        _, probs, state = model.forward(ids[None, :], state=state)
        p = probs[0].astype(np.float64)
        p[[0, 3]] = -1.0
        assert drawn == p.argmax()
        ids = np.array([drawn])


def test_generation_when_every_id_left_has_probability_zero(monkeypatch):
    """All the mass on excluded ids (float32 rounds the rest to 0): the draw is uniform over the
    ids left, never an excluded id and never NaN."""
    model = LanguageModel(5, embed_dim=2, hidden_size=2, seed=0)
    forward = model.forward

    def peaked(*args, **kwargs):
        loss, probs, state = forward(*args, **kwargs)
        probs = np.zeros_like(probs)
        probs[:, 1] = 1.0
        return loss, probs, state
    monkeypatch.setattr(model, "forward", peaked)
    out = model.generate(np.array([2]), 60, np.random.default_rng(0), exclude=(0, 1))
    assert set(out.tolist()) == {2, 3, 4}


def test_a_draw_never_lands_on_a_weight_of_zero():
    """u * weights.sum() (pairwise, in another order than cumsum) could pass the last partial
    sum: searchsorted then gave len(weights), clamped to the last id, here of weight 0."""
    seed = 0
    print("seed", seed)
    rng, top = np.random.default_rng(seed), np.nextafter(1.0, 0.0)   # rng.random()'s largest
    found = 0
    for _ in range(200):
        w = np.append(rng.random(64), 0.0)                  # the last id excluded
        if np.searchsorted(np.cumsum(w), top * w.sum(), side="right") == len(w):
            found += 1                                      # the old draw's case
        assert draw(w, top) == 63 and draw(w, 0.0) == 0
    assert found > 0
    w = np.array([0.0, 0.25, 0.0, 0.75, 0.0])
    assert [draw(w, u) for u in (0.0, 0.2499, 0.25, 0.9, top)] == [1, 1, 3, 3, 3]


def test_bad_input_is_refused():
    model = LanguageModel(5, embed_dim=2, hidden_size=2, seed=0)
    with pytest.raises(ValueError, match="one direction"):
        LanguageModel(5, kind="bilstm")
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward(np.array([[1, 5]]))
    with pytest.raises(ValueError, match="targets must be integers of shape"):
        model.forward(np.array([[1, 2]]), targets=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"targets must lie in \[1, 5\)"):
        model.forward(np.array([[1, 2]]), targets=np.array([[1, 0]]))
    model.forward(np.array([[1, 2]]), np.array([1]), targets=np.array([[1, 0]]))   # padding: free
    with pytest.raises(ValueError, match="needs targets"):
        model.forward(np.array([[1, 2]]), need_grad=True)
    with pytest.raises(ValueError, match="dropout"):
        LanguageModel(5, dropout=1.0)
    with pytest.raises(ValueError, match="rng must be None or a numpy Generator"):
        model.forward(np.array([[1, 2]]), targets=np.array([[2, 3]]), rng=1)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 2, got 5.5"):
        LanguageModel(5.5)                                  # was a TypeError
    with pytest.raises(ValueError, match="embed_dim must be an integer >= 1, got 0"):
        LanguageModel(5, embed_dim=0)                       # was named input_size
    with pytest.raises(ValueError, match="rng must be a numpy Generator .*got None"):
        model.generate(np.array([1]), 3, None)


def test_repr_names_the_arguments_that_build_the_model():
    model = LanguageModel(9, embed_dim=3, hidden_size=4, kind="gru", num_layers=2, dropout=0.1)
    assert repr(model).startswith("LanguageModel(vocab_size=9, embed_dim=3, hidden_size=4, kind='gru'")
    assert eval(repr(model), {"LanguageModel": LanguageModel}).config == model.config


def test_checkpoint_round_trip(tmp_path):
    vocab = char_vocabulary("hello")
    model = LanguageModel(len(vocab), embed_dim=3, hidden_size=4, kind="lstm", seed=6)
    save_checkpoint(tmp_path / "lm.npz", model, vocab, meta={"epoch": 2})
    back, back_vocab, _, meta = load_checkpoint(tmp_path / "lm.npz")
    assert isinstance(back, LanguageModel) and back_vocab.itos == vocab.itos and meta["epoch"] == 2
    ids = encode_chars("hello", vocab)[None, :]
    np.testing.assert_array_equal(back.forward(ids)[1], model.forward(ids)[1])
    assert qlnumba.count_params(back) == model.param_counts()


def test_text_helpers():
    vocab = char_vocabulary("to be, or not")
    assert vocab.itos[:2] == ["<pad>", "<unk>"] and len(vocab) == 2 + len(set("to be, or not"))
    ids = encode_chars("not to be!", vocab)
    assert decode_chars(ids, vocab) == "not to be?"                 # '!' was never seen
    train, val = split_ids(np.arange(100), 0.1)
    assert len(train) == 90 and val[0] == 90
    chunks = list(stream_batches(np.arange(1, 42), 4, 3))
    x0, y0, lengths = chunks[0]
    assert x0.tolist()[1] == [11, 12, 13] and y0.tolist()[1] == [12, 13, 14]
    assert [c[0].shape[1] for c in chunks] == [3, 3, 3, 1] and lengths.tolist() == [3] * 4
    with pytest.raises(ValueError, match="too few"):
        list(stream_batches(np.arange(3), 4, 3))


def test_missing_text_gives_clear_errors(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_shakespeare(tmp_path / "nowhere")
    with pytest.raises(DataError, match="file missing"):
        load_shakespeare(tmp_path)
    (tmp_path / "input.txt").write_bytes(b"\xff\xfe not utf-8 \xff")
    with pytest.raises(DataError, match="not UTF-8"):
        load_shakespeare(tmp_path)
    assert train_shakespeare.main(["--data-dir", str(tmp_path / "nowhere"), "--threads", "1"]) == 2


def test_training_program_refuses_bad_counts(tmp_path, capsys):
    """--batch-size 0 was a ZeroDivisionError traceback, --steps 0 numpy's "high <= 0"."""
    for option, message in [("--batch-size", "--batch-size must be >= 1, got 0"),
                            ("--steps", "--steps must be >= 1, got 0"),
                            ("--epochs", "--epochs must be >= 1, got 0")]:
        assert train_shakespeare.main(["--data-dir", str(tmp_path), "--threads", "1", option, "0"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"
    assert train_shakespeare.main(["--data-dir", str(tmp_path), "--threads", "1",
                                   "--layer-dropout", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --layer-dropout must lie in [0, 1), got 1.0"
    # --temperature 0 and --sample-chars -1 trained every epoch and then failed at the sample
    for option, value, message in [("--temperature", "0", "--temperature must be a finite number > 0, got 0.0"),
                                   ("--sample-chars", "-1", "--sample-chars must be >= 0, got -1"),
                                   ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
                                   ("--clip", "-1", "--clip must be a finite number >= 0, got -1.0"),
                                   ("--hidden", "0", "--hidden must be >= 1, got 0")]:
        assert train_shakespeare.main(["--data-dir", str(tmp_path), "--threads", "1", option, value]) == 2
        assert capsys.readouterr().err.strip() == f"error: {message}"


def test_training_program_on_a_text_the_test_wrote(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("To be, or not to be: that is the question.\n" * 60)
    out = tmp_path / "run"
    rc = train_shakespeare.main(["--data-dir", str(tmp_path / "data"), "--epochs", "3",
                                 "--hidden", "16", "--embed-dim", "8", "--batch-size", "4",
                                 "--steps", "16", "--lr", "0.01", "--sample-chars", "40",
                                 "--prompt", "To", "--out", str(out), "--threads", "1"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    losses = [e["val_loss"] for e in summary["epochs"]]
    assert losses[-1] < losses[0] and summary["best_val_loss"] == min(losses)
    assert summary["sample"].startswith("To") and len(summary["sample"]) == 42
    capsys.readouterr()
    assert train_shakespeare.main(["--sample", str(out / "best.npz"), "--prompt", "To",
                                   "--sample-chars", "40", "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == summary["sample"].strip()
    rc = train_shakespeare.main(["--data-dir", str(tmp_path / "data"), "--epochs", "3",
                                 "--hidden", "16", "--embed-dim", "8", "--batch-size", "4",
                                 "--steps", "16", "--lr", "1e30", "--clip", "0",
                                 "--out", str(tmp_path / "diverged"), "--threads", "1"])
    err = capsys.readouterr().err                    # a diverging run: one line, status 1
    assert rc == 1 and re.search(r"error: the (loss became nan|gradients held NaN or inf) in "
                                 r"epoch \d; try a smaller --lr", err), err


def test_training_program_resumes_exactly_and_refuses_another_run(tmp_path, capsys):
    """Stopped after epoch 2 and resumed (--resume OUT/last.npz), a run trains what it would
    have without the stop: the Generator (chunk borders, dropout) and Adam's state are in the
    checkpoint.  Another text, other model options, no epoch left, an --out without the
    run's best.npz, or a checkpoint without Adam's state are refused in one line."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("To be, or not to be: that is the question.\n" * 40)
    common = ["--data-dir", str(tmp_path / "data"), "--hidden", "8", "--embed-dim", "4",
              "--batch-size", "4", "--steps", "16", "--sample-chars", "5", "--threads", "1",
              "--dropout", "0.2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_shakespeare.main(common + ["--epochs", "3", "--out", str(whole)]) == 0
    assert train_shakespeare.main(common + ["--epochs", "2", "--out", str(parts)]) == 0
    assert train_shakespeare.main(common[:-2] + ["--epochs", "3", "--out", str(parts),   # no --dropout
                                                 "--resume", str(parts / "last.npz")]) == 0, \
        capsys.readouterr().err
    summaries = [json.loads((run / "summary.json").read_text()) for run in (whole, parts)]
    assert summaries[1]["args"]["dropout"] == 0.2        # the checkpoint's, not the default
    assert [r["val_loss"] for r in summaries[0]["epochs"]] == \
        [r["val_loss"] for r in summaries[1]["epochs"]]
    assert summaries[0]["sample"] == summaries[1]["sample"]
    (model, *_), (model2, *_) = (load_checkpoint(run / "last.npz") for run in (whole, parts))
    for k in model.params:
        np.testing.assert_array_equal(model.params[k], model2.params[k], err_msg=k)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "input.txt").write_text("Something else entirely, said Hamlet!\n" * 40)
    with np.load(parts / "last.npz") as z:                 # a trained run's, Adam's state taken out
        np.savez(parts / "no_adam.npz", **{k: v for k, v in z.items() if not k.startswith("opt/")})
    capsys.readouterr()
    resume = ["--resume", str(parts / "last.npz"), "--out", str(parts)]
    for argv, message in (
            (common[2:] + resume + ["--epochs", "4", "--data-dir", str(tmp_path / "other")],
             "was trained on a text of other characters"),
            (common + resume + ["--epochs", "4", "--hidden", "16"],
             r"was built with other model options: --hidden 16 \(the checkpoint's: 8\)"),
            (common + resume + ["--epochs", "3"], "has trained 3 epochs; --epochs 3 leaves none"),
            (common + resume[:2] + ["--epochs", "4", "--out", str(tmp_path / "new")],
             "best.npz, the run's best model so far, is missing"),
            (common + ["--resume", str(parts / "no_adam.npz"), "--out", str(parts), "--epochs", "4"],
             r"has trained 3 epochs but holds no optimizer state \(Adam's t, m and v\)")):
        assert train_shakespeare.main(argv) == 2, message
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(message, err), (message, err)


@pytest.mark.skipif(gpu_usable(), reason="a GPU is here: --device cuda would train on it")
def test_training_program_without_a_gpu_says_so(tmp_path, capsys):
    (tmp_path / "input.txt").write_text("To be, or not to be.\n" * 20)
    rc = train_shakespeare.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "run"),
                                 "--threads", "1", "--device", "cuda"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--device cpu" in err and "Traceback" not in err


@pytest.mark.skipif(not HAVE_TEXT, reason="Tiny Shakespeare not found beside the checkout")
def test_the_real_text_loads():
    text = load_shakespeare()
    assert len(text) == 1_115_394 and len(set(text)) == 65
