"""Train a sentiment classifier on IMDB with qlnumba (no deep-learning framework).

    python train/imdb.py                       # the headline QL-LSTM with the defaults below
    python train/imdb.py --model lstm --seed 1
    python train/imdb.py --eval runs/imdb/best.npz

Pipeline: reviews -> tokens -> ids (vocabulary from the training part only) ->
embedding -> recurrent layer -> linear head on the last valid step. A fixed
seed holds out a validation part of the train split; it picks the best epoch
and stops training early. The test split is evaluated once, at the end.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# ---- defaults: the headline configuration -------------------------------------------------
MODEL = "ql"            # ql | lstm | gru | psug | hgr, or bidirectional biql | bilstm | bigru
EMBED_DIM = 128
HIDDEN = 128
LAYERS = 1
BLOCK_SIZE = 4          # HGR-ASC block length K (32 until the thirty-sixth session; results/imdb.md)
VOCAB_SIZE = 25_000     # ids in all, pad and unk included
MIN_FREQ = 2
MAX_LEN = 1024          # tokens kept per review (longer ones keep their end)
KEEP = "end"            # which part of a long review stays: start | end
BATCH_SIZE = 32
EPOCHS = 8
LR = 2e-3
WEIGHT_DECAY = 0.0
CLIP = 5.0              # global gradient-norm clip
EMBED_DROPOUT = 0.3
HEAD_DROPOUT = 0.3
LAYER_DROPOUT = 0.0     # between stacked layers (with --layers 2 or more)
PATIENCE = 2            # epochs without a better validation accuracy before stopping
VAL_FRACTION = 0.1
SPLIT_SEED = 1234       # the validation hold-out; fixed across training seeds
SEED = 0
THREADS = 2
OUT = "runs/imdb"
# --------------------------------------------------------------------------------------------

LENGTH_BUCKETS = [(1, 256), (257, 512), (513, 1024), (1025, None)]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--model", default=MODEL, choices=["ql", "lstm", "gru", "psug", "hgr", "biql", "bilstm", "bigru"],
      help="recurrent layer: ql = QL-LSTM, psug / hgr = one component only, lstm, gru; "
           "bi*: both directions")
    a("--embed-dim", type=int, default=EMBED_DIM, help="embedding width E")
    a("--hidden", type=int, default=HIDDEN, help="hidden size H (per direction)")
    a("--layers", type=int, default=LAYERS, help="stacked recurrent layers")
    a("--block-size", type=int, default=BLOCK_SIZE, help="HGR-ASC block length K (ql, hgr)")
    a("--vocab-size", type=int, default=VOCAB_SIZE, help="vocabulary size, pad and unk included")
    a("--min-freq", type=int, default=MIN_FREQ, help="minimum count of a token in the training part")
    a("--max-len", type=int, default=MAX_LEN, help="tokens kept per review")
    a("--keep", default=KEEP, choices=["start", "end"], help="part of a long review to keep")
    a("--batch-size", type=int, default=BATCH_SIZE)
    a("--epochs", type=int, default=EPOCHS, help="most epochs to train")
    a("--lr", type=float, default=LR, help="Adam learning rate")
    a("--weight-decay", type=float, default=WEIGHT_DECAY, help="AdamW decoupled decay (matrices only)")
    a("--clip", type=float, default=CLIP, help="global gradient-norm clip (0 = none)")
    a("--embed-dropout", type=float, default=EMBED_DROPOUT)
    a("--head-dropout", type=float, default=HEAD_DROPOUT)
    a("--layer-dropout", type=float, default=LAYER_DROPOUT, help="between stacked layers")
    a("--patience", type=int, default=PATIENCE, help="early stopping: epochs without improvement")
    a("--val-fraction", type=float, default=VAL_FRACTION, help="part of train held out for validation")
    a("--split-seed", type=int, default=SPLIT_SEED, help="seed of the validation hold-out")
    a("--seed", type=int, default=SEED, help="seed of initialisation, shuffling and dropout")
    a("--threads", type=int, default=THREADS, help="threads for Numba and BLAS")
    a("--data-dir", default=None,
      help="folder with train.jsonl.gz and test.jsonl.gz (default: $QLNUMBA_IMDB_DIR, "
           "$QLNUMBA_DATA_DIR/imdb, then ../shared/data/imdb beside the checkout)")
    a("--out", default=OUT, help="folder for best.npz, last.npz, log.jsonl and summary.json")
    a("--resume", default=None, metavar="CKPT",
      help="continue training from a checkpoint (OUT/last.npz: after the last finished epoch): "
           "its model, vocabulary, optimizer state, random state and early-stopping count, so "
           "the run trains on exactly as it would have without the stop; model options given "
           "must be its own")
    a("--eval", default=None, metavar="CKPT", help="only evaluate a saved model on the test split")
    a("--limit", type=int, default=None, help="use only the first N reviews of each split (smoke runs)")
    a("--dtype", default="float32", choices=["float32", "float64"])
    a("--device", default="cpu", choices=["cpu", "cuda"],
      help="cuda: train with every array on the GPU (qlnumba.gpu.model.CudaTrainer), any --model")
    a("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    # the options given on the command line (a resumed run checks them): parsed again into a
    # namespace that already holds every option as None, so argparse fills in no defaults
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))
    args.given = sorted(k for k, v in vars(ap.parse_args(argv, unset)).items() if v is not None)
    return args


# a resumed run's model is the checkpoint's: these options, given, must agree with it
MODEL_OPTIONS = dict(model="kind", embed_dim="embed_dim", hidden="hidden_size", layers="num_layers",
                     block_size="block_size", embed_dropout="embed_dropout",
                     head_dropout="head_dropout", layer_dropout="layer_dropout", dtype="dtype")


def new_optimizer(model, args, opt_state=None, path=None, epochs_done=0):
    """AdamW over the model's parameters with the options' constants; its t, m and v from
    ``opt_state`` (a resumed checkpoint's, read from ``path``, ``epochs_done`` epochs into its
    run) when there is one; ValueError where there is none and the run has trained."""
    from qlnumba.cli import new_adam
    return new_adam(model, opt_state, path, epochs_done, lr=args.lr,
                    weight_decay=args.weight_decay, clip_norm=args.clip or None)


def load_imdb_checkpoint(path, device):
    """``load_checkpoint(path, device)`` for --eval and --resume, checked: a classifier of text
    (with its vocabulary) into IMDB's labels 0 and 1, with a training state of the right
    types (``QLLSTMClassifier.from_loaded``'s checks).  Returns (model, vocab, optimizer
    state, meta) with meta["epoch"] (0 if none), meta["best_val_accuracy"] (-1 if none),
    meta["data"] (max_len and keep; a QLLSTMClassifier's own, from its parameters),
    meta["epochs_since_best"] (0 if none) and meta["rng"] (the run's Generator as the
    checkpoint's epoch left it; None if the checkpoint has none) filled in."""
    from qlnumba import QLLSTMClassifier
    from qlnumba.checkpoint import load_checkpoint
    from qlnumba.model import SequenceClassifier
    from qlnumba.validate import check_size, generator_from_state
    model, vocab, opt_state, meta = load_checkpoint(path, device)
    if not isinstance(model, SequenceClassifier) or vocab is None:
        what = "language model" if not isinstance(model, SequenceClassifier) else \
            "classifier of ids or features (no vocabulary)"
        raise ValueError(f"{path} holds a {what}; IMDB needs a classifier of text")
    ours = "estimator" not in meta            # this program's checkpoint: its epochs, best, rng
    if ours and model.config["num_classes"] != 2:
        raise ValueError(f"{path} classifies into {model.config['num_classes']} classes, not "
                         "IMDB's labels 0 and 1")
    clf = QLLSTMClassifier.from_loaded(path, (model, vocab, None, meta))
    if clf.classes_.tolist() != [0, 1]:
        raise ValueError(f"{path} classifies into the labels {clf.classes_.tolist()}, not IMDB's "
                         "labels 0 and 1")
    best = clf.best_validation_score_ if ours else None
    since_best, rng = meta.get("epochs_since_best", 0), None
    try:
        check_size(since_best, "epochs_since_best", 0)
        if "rng_state" in meta:              # the Generator as the epoch left it: resume exactly
            rng = generator_from_state(meta["rng_state"])
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt training state ({exc})") from None
    return model, vocab, opt_state, dict(meta, epoch=clf.n_iter_ if ours else 0,
                                         best_val_accuracy=-1.0 if best is None else best,
                                         data={"max_len": clf.max_len, "keep": clf.keep},
                                         epochs_since_best=since_best, rng=rng)


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qlnumba.cli import exit_status         # data, checkpoint and option errors: one line
    return exit_status(lambda: run(args), "", "; or train on the CPU with --device cpu",
                       f" (--resume {Path(args.out) / 'last.npz'} goes on after the last whole "
                       "epoch, once one has ended)")


def run(args):
    import numpy as np
    from sklearn.metrics import f1_score
    from tqdm import tqdm

    import qlnumba
    from qlnumba.checkpoint import load_checkpoint, save_checkpoint
    from qlnumba.cli import check_options, check_resume_left, take_resumed_options
    from qlnumba.config import set_num_threads
    from qlnumba.model import make_trainer
    from qlnumba.optim import NonFiniteGradients
    from qlnumba.data import (Vocabulary, bucket_batches, encode_corpus, load_imdb, pad_batch,
                              sorted_batches, tokenize)

    check_options(args, counts=("epochs", "batch_size", "patience", "min_freq", "limit", "embed_dim",
                                "hidden", "layers", "block_size", "max_len"),
                  naturals=("seed", "split_seed"), vocab_sizes=("vocab_size",),
                  fractions=("val_fraction",), positives=("lr",),
                  non_negatives=("weight_decay", "clip"),
                  dropouts=("embed_dropout", "head_dropout", "layer_dropout"))
    set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type
    out_dir = Path(args.out)
    t_start = time.time()

    def evaluate(model, corpus, labels):
        """Accuracy, macro-F1 and predictions, in length-sorted batches."""
        pred = np.empty(len(corpus), np.int64)
        for idx in sorted_batches(corpus.lengths, 256):
            ids, lengths = pad_batch(corpus, idx)
            pred[idx] = model.forward(ids, lengths)[1].argmax(axis=1)
        return float((pred == labels).mean()), float(f1_score(labels, pred, average="macro")), pred

    def test_report(model, vocab, max_len, keep):
        (texts, labels), = load_imdb(args.data_dir, ("test",), args.limit).values()
        tokens = [tokenize(t) for t in texts]
        corpus = encode_corpus(tokens, vocab, max_len, keep)
        acc, f1, pred = evaluate(model, corpus, labels)
        full_len = np.array([max(len(t), 1) for t in tokens])
        by_length = {}
        for lo, hi in LENGTH_BUCKETS:
            sel = (full_len >= lo) & (full_len <= (hi or full_len.max()))
            if sel.any():
                name = f"{lo}-{hi}" if hi else f">{lo - 1}"
                by_length[name] = {"n": int(sel.sum()), "accuracy": float((pred[sel] == labels[sel]).mean())}
        return {"test_accuracy": acc, "test_macro_f1": f1, "test_by_length": by_length}

    if args.eval:
        model, vocab, _, meta = load_imdb_checkpoint(args.eval, args.device)
        data = meta["data"]
        report = test_report(model, vocab, data.get("max_len", args.max_len), data.get("keep", args.keep))
        print(json.dumps(report, indent=1))
        return 0

    resumed = load_imdb_checkpoint(args.resume, args.device) if args.resume else None
    if resumed:
        take_resumed_options(args, resumed[0].config, MODEL_OPTIONS)
        check_resume_left(args, resumed[3]["epoch"], resumed[3]["best_val_accuracy"] >= 0,
                          "--eval evaluates a checkpoint")
        opt = new_optimizer(resumed[0], args, resumed[2], args.resume,   # checked before the data
                            resumed[3]["epoch"])

    # ---- data ----
    (texts, labels), = load_imdb(args.data_dir, ("train",), args.limit).values()
    split_rng = np.random.default_rng(args.split_seed)
    order = split_rng.permutation(len(texts))
    n_val = max(1, int(round(args.val_fraction * len(texts))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    tokens = [tokenize(t) for t in texts]
    train_tokens = [tokens[i] for i in train_idx]
    vocab = resumed[1] if resumed else Vocabulary.build(train_tokens, args.vocab_size, args.min_freq)
    train = encode_corpus(train_tokens, vocab, args.max_len, args.keep)
    val = encode_corpus([tokens[i] for i in val_idx], vocab, args.max_len, args.keep)
    y_train, y_val = labels[train_idx], labels[val_idx]

    # ---- model ----
    if resumed:
        model, _, _, meta = resumed
    else:
        model = qlnumba.SequenceClassifier(
            len(vocab), args.embed_dim, args.hidden, 2, kind=args.model, num_layers=args.layers,
            block_size=args.block_size, embed_dropout=args.embed_dropout,
            head_dropout=args.head_dropout, layer_dropout=args.layer_dropout, dtype=dtype,
            seed=args.seed, device=args.device)
        opt, meta = new_optimizer(model, args), {}
    trainer = make_trainer(model, opt)             # with --device cuda: every array on the GPU
    counts = model.param_counts()
    first_epoch = meta.get("epoch", 0) + 1                  # a resumed run's: checked
    best_val = meta.get("best_val_accuracy", -1.0)
    # batch order and dropout; a resumed run goes on with the Generator where it stopped, so
    # that it trains what the run without the stop would have trained
    rng = meta.get("rng") or np.random.default_rng([args.seed, first_epoch])
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "best.npz"
    log = open(out_dir / "log.jsonl", "a")
    print(f"model {model.config['kind']}: parameters {counts}; vocabulary {len(vocab)}; "
          f"train {len(train)} / val {len(val)} reviews, {int(train.lengths.sum())} tokens per epoch")

    # ---- training ----
    since_best, train_time, train_tokens_seen = meta.get("epochs_since_best", 0), 0.0, 0
    epoch = first_epoch - 1
    for epoch in range(first_epoch, args.epochs + 1):
        batches = bucket_batches(train.lengths, args.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}", disable=args.no_progress, mininterval=1.0)
        t0, seen, loss_sum, correct, n = time.time(), 0, 0.0, 0, 0
        for idx in bar:
            ids, lengths = pad_batch(train, idx)
            try:
                loss, probs = trainer.step(ids, lengths, y_train[idx], rng=rng)   # and the update
                diverged = None if math.isfinite(loss) else f"the loss became {loss}"
            except NonFiniteGradients:                  # (the parameters were left as they were)
                diverged = "the gradients held NaN or inf"
            if diverged:
                print(f"error: {diverged} at epoch {epoch}; stopping. Try a smaller --lr or "
                      f"--clip.", file=sys.stderr)
                return 1
            seen += int(lengths.sum())
            loss_sum += loss * len(idx)
            correct += int((probs.argmax(1) == y_train[idx]).sum())
            n += len(idx)
            bar.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{correct / n:.4f}",
                            tok_s=f"{seen / (time.time() - t0):.0f}", refresh=False)
        epoch_time = time.time() - t0
        trainer.sync_to_host()                         # a GPU's: for evaluation and the checkpoints
        train_time += epoch_time
        train_tokens_seen += seen
        val_acc, val_f1, _ = evaluate(model, val, y_val)
        record = {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy": correct / n,
                  "val_accuracy": val_acc, "val_macro_f1": val_f1, "epoch_seconds": epoch_time,
                  "train_tokens_per_s": seen / epoch_time}
        print(json.dumps(record), file=log, flush=True)
        print(json.dumps(record))
        improved = val_acc > best_val
        best_val = max(best_val, val_acc)
        since_best = 0 if improved else since_best + 1
        meta = {"epoch": epoch, "best_val_accuracy": best_val, "epochs_since_best": since_best,
                "rng_state": rng.bit_generator.state, "args": vars(args),
                "data": {"max_len": args.max_len, "keep": args.keep}}
        save_checkpoint(out_dir / "last.npz", model, vocab, opt, meta=meta)   # for --resume
        if improved:
            save_checkpoint(ckpt, model, vocab, opt, meta=meta)
        elif since_best >= args.patience:
            print(f"early stop: no better validation accuracy for {since_best} epochs")
            break

    # ---- the test split, once, with the best model ----
    best, _, _, best_meta = load_checkpoint(ckpt)
    summary = {"model": args.model, "seed": args.seed, "params": counts, "epochs_run": epoch,
               "best_epoch": best_meta["epoch"], "best_val_accuracy": best_val,
               "train_seconds": train_time, "wall_seconds": time.time() - t_start,
               "train_tokens_per_s": train_tokens_seen / max(train_time, 1e-9), "args": vars(args)}
    summary.update(test_report(best, vocab, args.max_len, args.keep))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"test accuracy {summary['test_accuracy']:.4f}  macro-F1 {summary['test_macro_f1']:.4f}  "
          f"(best epoch {summary['best_epoch']}, {summary['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
