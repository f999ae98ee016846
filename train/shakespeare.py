"""Character-level language model on Tiny Shakespeare with qlnumba.LanguageModel.

    python train/shakespeare.py                     # the QL-LSTM with the defaults below
    python train/shakespeare.py --model lstm
    python train/shakespeare.py --device cuda      # parameters and Adam state on the GPU
    python train/shakespeare.py --sample runs/shakespeare/best.npz --prompt "ROMEO:"
    python train/shakespeare.py --epochs 20 --resume runs/shakespeare/last.npz   # train on

The text's first 90% trains, the last 10% validates (nanoGPT's split).  Training reads
the text as BATCH_SIZE parallel streams in chunks of STEPS characters, carrying the state
from chunk to chunk (truncated BPTT); validation reads its part the same way, without
dropout, and reports the mean loss per character in nats and in bits.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

# ---- defaults ------------------------------------------------------------------------------
MODEL = "ql"            # ql | lstm | gru | psug | hgr
EMBED_DIM = 64
HIDDEN = 256
LAYERS = 1
BLOCK_SIZE = 32         # HGR-ASC block length K
BATCH_SIZE = 32         # parallel streams
STEPS = 128             # characters per chunk (truncated BPTT length)
EPOCHS = 10
LR = 2e-3
CLIP = 5.0
DROPOUT = 0.1
LAYER_DROPOUT = 0.0     # between stacked layers (with --layers 2 or more)
VAL_FRACTION = 0.1
SEED = 0
THREADS = 2
DEVICE = "cpu"          # cpu | cuda
PROMPT = "ROMEO:"
SAMPLE_CHARS = 400
TEMPERATURE = 0.8
OUT = "runs/shakespeare"
# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--model", default=MODEL, choices=["ql", "lstm", "gru", "psug", "hgr"])
    a("--embed-dim", type=int, default=EMBED_DIM)
    a("--hidden", type=int, default=HIDDEN, help="hidden size H")
    a("--layers", type=int, default=LAYERS)
    a("--block-size", type=int, default=BLOCK_SIZE, help="HGR-ASC block length K (ql, hgr)")
    a("--batch-size", type=int, default=BATCH_SIZE, help="parallel streams of text")
    a("--steps", type=int, default=STEPS, help="characters per chunk (truncated BPTT length)")
    a("--epochs", type=int, default=EPOCHS, help="passes over the training text")
    a("--lr", type=float, default=LR, help="Adam learning rate")
    a("--clip", type=float, default=CLIP, help="global gradient-norm clip (0 = none)")
    a("--dropout", type=float, default=DROPOUT, help="on the embeddings and the head's input")
    a("--layer-dropout", type=float, default=LAYER_DROPOUT, help="between stacked layers")
    a("--val-fraction", type=float, default=VAL_FRACTION, help="the text's last part, held out")
    a("--seed", type=int, default=SEED)
    a("--threads", type=int, default=THREADS, help="threads for Numba and BLAS")
    a("--device", default=DEVICE, choices=["cpu", "cuda"],
      help="cuda: train with every array on the GPU (qlnumba.gpu.model.CudaLMTrainer), any --model")
    a("--limit", type=int, default=None, help="use only the first N characters (smoke runs)")
    a("--prompt", default=PROMPT, help="the start of the sample printed at the end")
    a("--sample-chars", type=int, default=SAMPLE_CHARS)
    a("--temperature", type=float, default=TEMPERATURE, help="below 1: safer samples")
    a("--sample", default=None, metavar="CKPT", help="only print a sample from a saved model")
    a("--data-dir", default=None,
      help="folder with input.txt (default: $QLNUMBA_SHAKESPEARE_DIR, "
           "$QLNUMBA_DATA_DIR/tinyshakespeare, then ../shared/data/tinyshakespeare)")
    a("--out", default=OUT, help="folder for best.npz, last.npz, log.jsonl and summary.json")
    a("--resume", default=None, metavar="CKPT",
      help="continue training from a checkpoint (OUT/last.npz: after the last finished epoch): "
           "its model, optimizer state and random state, so that the run trains on exactly as "
           "it would have without the stop; the text must be the same, and model options "
           "given must be the checkpoint's")
    args = ap.parse_args(argv)
    # the options given on the command line (a resumed run checks them): parsed again into a
    # namespace that already holds every option as None, so argparse fills in no defaults
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))
    args.given = sorted(k for k, v in vars(ap.parse_args(argv, unset)).items() if v is not None)
    return args


# a resumed run's model is the checkpoint's: these options, given, must agree with it
MODEL_OPTIONS = dict(model="kind", embed_dim="embed_dim", hidden="hidden_size", layers="num_layers",
                     block_size="block_size", dropout="dropout", layer_dropout="layer_dropout")


def new_optimizer(model, args, opt_state=None, epochs_done=0):
    """Adam over the model's parameters with the options' constants; its t, m and v from
    ``opt_state`` (the resumed checkpoint's, ``epochs_done`` epochs into its run) when there is
    one; ValueError where there is none and the run has trained."""
    from qlnumba.cli import new_adam
    return new_adam(model, opt_state, args.resume, epochs_done, lr=args.lr,
                    clip_norm=args.clip or None)


def load_resumed(args, vocab):
    """(model, optimizer, meta) of ``args.resume``, checked: a language model of this text's
    characters, built with the model options given, with a training state of the right types;
    the model options of ``args`` become the checkpoint's.  meta["rng"] is the run's Generator
    as the checkpoint's epoch left it."""
    from qlnumba.checkpoint import load_checkpoint
    from qlnumba.cli import check_resume_left, take_resumed_options
    from qlnumba.lm import LanguageModel
    from qlnumba.validate import check_size, generator_from_state, is_real
    model, saved_vocab, opt_state, meta = load_checkpoint(args.resume, device=args.device)
    if not isinstance(model, LanguageModel) or saved_vocab is None:
        raise ValueError(f"{args.resume} is not a language model with its vocabulary")
    if saved_vocab.itos != vocab.itos:
        raise ValueError(f"{args.resume} was trained on a text of other characters; resume on "
                         "the same text (--data-dir, --limit)")
    take_resumed_options(args, model.config, MODEL_OPTIONS)
    try:
        check_size(meta.get("epoch"), "epoch", 0)
        history = meta.get("history")
        if not isinstance(history, list) or len(history) != meta["epoch"] \
                or not all(isinstance(r, dict) and is_real(r.get("val_loss")) for r in history):
            raise ValueError(f"history must be one record of val_loss per epoch, got {history!r:.80}")
        rng = generator_from_state(meta.get("rng_state"))
    except ValueError as exc:
        raise ValueError(f"{args.resume}: corrupt training state ({exc})") from None
    check_resume_left(args, meta["epoch"], meta["epoch"] > 0, "--sample prints a sample")
    return model, new_optimizer(model, args, opt_state, meta["epoch"]), dict(meta, rng=rng)


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qlnumba.cli import exit_status         # data, checkpoint and option errors: one line
    return exit_status(lambda: run(args), "", "; or train on the CPU with --device cpu")


def sample(model, vocab, args, seed):
    import numpy as np

    from qlnumba.data import PAD, UNK
    from qlnumba.data.shakespeare import decode_chars, encode_chars
    prompt = encode_chars(args.prompt or "\n", vocab)
    ids = model.generate(prompt, args.sample_chars, np.random.default_rng(seed), args.temperature,
                         exclude=(PAD, UNK))
    return (args.prompt or "") + decode_chars(ids, vocab)


def run(args):
    import numpy as np

    from qlnumba.checkpoint import load_checkpoint, save_checkpoint
    from qlnumba.cli import check_options
    from qlnumba.config import set_num_threads
    from qlnumba.model import make_trainer
    from qlnumba.optim import NonFiniteGradients
    from qlnumba.data import load_shakespeare
    from qlnumba.data.shakespeare import char_vocabulary, encode_chars, split_ids, stream_batches
    from qlnumba.lm import LanguageModel

    check_options(args, counts=("batch_size", "steps", "epochs", "limit", "embed_dim", "hidden",
                                "layers", "block_size"),
                  naturals=("seed", "sample_chars"), fractions=("val_fraction",),
                  positives=("lr", "temperature"), non_negatives=("clip",),
                  dropouts=("dropout", "layer_dropout"))
    set_num_threads(args.threads)
    if args.sample:
        model, vocab, _, _ = load_checkpoint(args.sample, device=args.device)
        if not isinstance(model, LanguageModel) or vocab is None:
            raise ValueError(f"{args.sample} is not a language model with its vocabulary")
        print(sample(model, vocab, args, args.seed))
        return 0

    t_start = time.time()
    text = load_shakespeare(args.data_dir)[:args.limit]
    vocab = char_vocabulary(text)
    train, val = split_ids(encode_chars(text, vocab), args.val_fraction)
    if args.resume:
        model, opt, meta = load_resumed(args, vocab)
    else:
        model = LanguageModel(len(vocab), args.embed_dim, args.hidden, kind=args.model,
                              num_layers=args.layers, block_size=args.block_size,
                              dropout=args.dropout, layer_dropout=args.layer_dropout,
                              seed=args.seed, device=args.device)
        opt = new_optimizer(model, args)
        meta = {"epoch": 0, "history": [], "rng": np.random.default_rng(args.seed)}
    trainer = make_trainer(model, opt)             # with --device cuda: every array on the GPU
    rng = meta["rng"]       # chunk borders and dropout; a resumed run's: where it stopped
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "log.jsonl", "a" if args.resume else "w")
    print(f"{model.config['kind']}: parameters {model.param_counts()}; {len(vocab) - 2} characters; "
          f"train {len(train)} / validation {len(val)} characters")

    history = meta["history"]
    best = min([math.inf] + [r["val_loss"] for r in history])
    train_time, seen_all = 0.0, 0
    for epoch in range(meta["epoch"] + 1, args.epochs + 1):
        t0, total, seen, state = time.time(), 0.0, 0, None
        offset = int(rng.integers(0, args.steps))    # other chunk borders each epoch
        for x, y, lengths in stream_batches(train, args.batch_size, args.steps, offset):
            try:
                loss, _, state = trainer.step(x, lengths, y, state, rng=rng)   # and the update
                diverged = None if math.isfinite(loss) else f"the loss became {loss}"
            except NonFiniteGradients:                  # (the parameters were left as they were)
                diverged = "the gradients held NaN or inf"
            if diverged:
                print(f"error: {diverged} in epoch {epoch}; try a smaller --lr", file=sys.stderr)
                return 1
            total, seen = total + loss * x.size, seen + x.size
        trainer.sync_to_host()                         # a GPU's: for validation and the checkpoint
        seconds = time.time() - t0
        train_time, seen_all = train_time + seconds, seen_all + seen
        val_loss = model.score(val, args.batch_size, args.steps)
        record = {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss,
                  "val_bits_per_char": val_loss / math.log(2), "epoch_seconds": seconds,
                  "train_chars_per_s": seen / seconds}
        history.append(record)
        print(json.dumps(record), file=log, flush=True)
        print(json.dumps(record))
        saved = {"epoch": epoch, "val_loss": val_loss, "history": history,
                 "rng_state": rng.bit_generator.state, "args": vars(args)}
        save_checkpoint(out_dir / "last.npz", model, vocab, opt, meta=saved)   # for --resume
        if val_loss < best:
            best = val_loss
            save_checkpoint(out_dir / "best.npz", model, vocab, opt, meta=saved)

    # the sample on the CPU: generation is one character per call, and a device model's layer
    # API copies the parameters over on each call
    model, vocab, _, meta = load_checkpoint(out_dir / "best.npz", device="cpu")
    summary = {"model": model.config["kind"], "seed": args.seed, "params": model.param_counts(),
               "best_epoch": meta["epoch"], "best_val_loss": best,
               "best_val_bits_per_char": best / math.log(2), "epochs": history,
               "train_seconds": train_time, "wall_seconds": time.time() - t_start,
               "train_chars_per_s": seen_all / train_time, "args": vars(args),
               "sample": sample(model, vocab, args, args.seed)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(summary["sample"])
    print(f"best validation loss {best:.4f} nats/char ({summary['best_val_bits_per_char']:.3f} "
          f"bits/char) at epoch {meta['epoch']}, {summary['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
