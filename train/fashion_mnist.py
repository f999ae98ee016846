"""Classify Fashion-MNIST images read as sequences, with qlnumba.QLLSTMClassifier.

    python train/fashion_mnist.py                    # 28 steps of 28 pixels (image rows)
    python train/fashion_mnist.py --steps pixels     # 784 steps of one pixel: long sequences
    python train/fashion_mnist.py --model lstm --hidden 64 --limit 5000

Pixels are scaled to [0, 1] and standardised with the training images' mean and
deviation.  The estimator holds out a fixed part of the training images, keeps the
epoch with the best accuracy on it and stops early; the test split is evaluated once.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

# ---- defaults ------------------------------------------------------------------------------
STEPS = "rows"          # rows: 28 steps x 28 pixels | pixels: 784 steps x 1 pixel
MODEL = "ql"            # ql | lstm | gru | psug | hgr, or bidirectional biql | bilstm | bigru
HIDDEN = 128
LAYERS = 1
BLOCK_SIZE = 0          # HGR-ASC block length K; 0: 7 for rows (4 blocks), 28 for pixels
BATCH_SIZE = 64
EPOCHS = 10
LR = 2e-3
WEIGHT_DECAY = 0.0
CLIP = 5.0
HEAD_DROPOUT = 0.1
LAYER_DROPOUT = 0.0     # between stacked layers (with --layers 2 or more)
PATIENCE = 2            # epochs without a better validation accuracy before stopping
VAL_FRACTION = 0.1
SEED = 0
THREADS = 2
OUT = "runs/fashion-mnist"
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--steps", default=STEPS, choices=["rows", "pixels"], help="what one step of a sequence is")
    a("--model", default=MODEL, choices=["ql", "lstm", "gru", "psug", "hgr", "biql", "bilstm", "bigru"])
    a("--hidden", type=int, default=HIDDEN, help="hidden size H (per direction)")
    a("--layers", type=int, default=LAYERS)
    a("--block-size", type=int, default=BLOCK_SIZE, help="HGR-ASC block length K (0: by --steps)")
    a("--batch-size", type=int, default=BATCH_SIZE)
    a("--epochs", type=int, default=EPOCHS, help="most epochs to train")
    a("--lr", type=float, default=LR, help="Adam learning rate")
    a("--weight-decay", type=float, default=WEIGHT_DECAY)
    a("--clip", type=float, default=CLIP, help="global gradient-norm clip (0 = none)")
    a("--head-dropout", type=float, default=HEAD_DROPOUT)
    a("--layer-dropout", type=float, default=LAYER_DROPOUT, help="between stacked layers")
    a("--patience", type=int, default=PATIENCE)
    a("--val-fraction", type=float, default=VAL_FRACTION)
    a("--seed", type=int, default=SEED)
    a("--threads", type=int, default=THREADS, help="threads for Numba and BLAS")
    a("--device", default="cpu", choices=["cpu", "cuda"],
      help="cuda: train with every array on the GPU (qlnumba.gpu.model.CudaTrainer)")
    a("--limit", type=int, default=None, help="use a fixed sample of N images of each split")
    a("--data-dir", default=None,
      help="folder with the four *-idx?-ubyte.gz files (default: $QLNUMBA_FASHION_MNIST_DIR, "
           "$QLNUMBA_DATA_DIR/fashion-mnist, then ../shared/data/fashion-mnist)")
    a("--out", default=OUT, help="folder for model.npz and summary.json")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qlnumba.cli import exit_status         # data, checkpoint and option errors: one line
    return exit_status(lambda: run(args), "", "; or train on the CPU with --device cpu")


def run(args):
    from qlnumba import MODEL_KINDS, QLLSTMClassifier
    from qlnumba.cli import check_options
    from qlnumba.config import set_num_threads
    from qlnumba.data import load_fashion_mnist
    from qlnumba.data.fashion_mnist import CLASSES, as_sequences

    check_options(args, counts=("epochs", "batch_size", "patience", "limit", "hidden", "layers"),
                  naturals=("seed", "block_size"), fractions=("val_fraction",), positives=("lr",),
                  non_negatives=("weight_decay", "clip"), dropouts=("head_dropout", "layer_dropout"))
    set_num_threads(args.threads)
    t_start = time.time()
    data = load_fashion_mnist(args.data_dir, ("train", "test"), args.limit)
    (train_images, y_train), (test_images, y_test) = data["train"], data["test"]
    x_train, x_test = as_sequences(train_images, args.steps), as_sequences(test_images, args.steps)
    mean, std = x_train.mean(), x_train.std()            # one scale for every pixel
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    block = args.block_size or (7 if args.steps == "rows" else 28)
    clf = QLLSTMClassifier(kind=args.model, hidden_size=args.hidden, num_layers=args.layers,
                           block_size=block, input="features", batch_size=args.batch_size,
                           max_epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                           clip=args.clip or None, head_dropout=args.head_dropout,
                           layer_dropout=args.layer_dropout,
                           early_stopping=True, validation_fraction=args.val_fraction,
                           n_iter_no_change=args.patience, random_state=args.seed, verbose=1,
                           device=args.device)
    steps = x_train.shape[1]
    print(f"{args.model}, {len(x_train)} training images as {steps} steps of "
          f"{x_train.shape[2] if x_train.ndim == 3 else 1} pixels"
          + (f", K = {block}" if MODEL_KINDS[args.model][1].get("hgr") else ""))
    t0 = time.time()
    clf.fit(x_train, y_train)
    train_seconds = time.time() - t0
    pred = clf.predict(x_test)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    clf.save(out_dir / "model.npz")
    n_fit = len(x_train) - max(1, int(round(args.val_fraction * len(x_train))))
    summary = {"model": args.model, "steps": args.steps, "seed": args.seed,
               "params": clf.model_.param_counts(), "epochs_run": clf.n_iter_,
               "best_epoch": clf.validation_scores_.index(clf.best_validation_score_) + 1,
               "best_val_accuracy": clf.best_validation_score_,
               "test_accuracy": float((pred == y_test).mean()),
               "test_accuracy_by_class": {name: float((pred[y_test == c] == c).mean())
                                          for c, name in enumerate(CLASSES) if (y_test == c).any()},
               "train_seconds": train_seconds, "wall_seconds": time.time() - t_start,
               "train_steps_per_s": n_fit * steps * clf.n_iter_ / train_seconds,
               "args": vars(args)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"test accuracy {summary['test_accuracy']:.4f} (epoch {summary['best_epoch']} of "
          f"{clf.n_iter_}, validation accuracy {clf.best_validation_score_:.4f}, "
          f"{summary['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
