"""The ``qlnumba`` command: look into a checkpoint, classify with it, score it.

    qlnumba info runs/imdb/best.npz                  # model, sizes, parameters, training state
    echo "a fine, moving film" | qlnumba predict runs/imdb/best.npz
    qlnumba predict model.npz reviews.txt            # one text per line -> label, probability
    qlnumba predict model.npz x.npy                  # a model of ids or features: an array
    qlnumba evaluate runs/imdb/best.npz test.jsonl.gz   # accuracy and macro-F1 on labelled texts
    qlnumba evaluate runs/shakespeare/best.npz play.txt # a language model: bits per character
    qlnumba generate runs/shakespeare/best.npz --prompt "ROMEO:" --chars 300

Checkpoints come from ``QLLSTMClassifier.save``, ``train/imdb.py`` and
``train/fashion_mnist.py`` (classifiers) or ``train/shakespeare.py`` (a language model).
Training itself is those programs.  Errors print one line and exit with status 2.

``--threads N`` (default: ``QLNUMBA_THREADS``, else 2 or the machine's cores if fewer) runs
the kernels on N threads with BLAS on one: the library's default, serial kernels beside
multi-threaded BLAS, scores a text in one stream about 8 times slower (bench/threads.py).
"""
import argparse
import gzip
import json
import math
import os
import sys


def main(argv=None):
    args = _parser().parse_args(argv)

    def run():
        _set_threads(args.threads)
        try:
            return args.run(args)
        except BrokenPipeError:                   # `qlnumba predict ... | head`
            return 0
    return exit_status(run, f"qlnumba {args.command}: ", " (or read the model with --device cpu)")


# the rule of each kind of training option: what a value must pass, and what the message says
OPTION_RULES = {
    "counts": (lambda v: v >= 1, "must be >= 1"),
    "naturals": (lambda v: v >= 0, "must be >= 0"),
    "vocab_sizes": (lambda v: v >= 2, "must be >= 2 (padding and unknown)"),
    "fractions": (lambda v: 0 < v < 1, "must lie in (0, 1)"),
    "dropouts": (lambda v: 0 <= v < 1, "must lie in [0, 1)"),
    "positives": (lambda v: 0 < v < math.inf, "must be a finite number > 0"),
    "non_negatives": (lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
}


def check_options(args, **kinds):
    """ValueError naming the first option that breaks its kind's rule in ``OPTION_RULES``
    (NaN breaks every rule; None passes: not given).  The training programs call it before
    they read any data or train, e.g. ``check_options(args, counts=("epochs",),
    positives=("lr",))``."""
    for kind, names in kinds.items():
        passes, rule = OPTION_RULES[kind]
        for name in names:
            value = getattr(args, name)
            if value is not None and not passes(value):
                raise ValueError(f"--{name.replace('_', '-')} {rule}, got {value}")


def take_resumed_options(args, config, options):
    """Set the model options of ``args`` (``options``: option name -> the model config's key)
    to the resumed checkpoint's model ``config``, so that what the run records (its summary,
    its checkpoints' ``args``) is the model it trains, not the program's defaults.
    ValueError naming each option that ``args.given`` holds and that differs: a resumed run
    trains the checkpoint's model on."""
    differ = [f"--{name.replace('_', '-')} {getattr(args, name)} (the checkpoint's: {config[key]})"
              for name, key in options.items()
              if name in args.given and getattr(args, name) != config.get(key)]
    if differ:
        raise ValueError(f"{args.resume} was built with other model options: {', '.join(differ)}; "
                         "a resumed run trains the checkpoint's model on")
    for name, key in options.items():
        setattr(args, name, config[key])


def new_adam(model, opt_state, path, epochs_done=0, **constants):
    """``qlnumba.Adam(model.params, **constants)``, its t, m and v from ``opt_state`` (the
    optimizer state of the checkpoint at ``path``, ``epochs_done`` epochs into its run) unless
    that is None; ValueError naming ``path`` where the state does not fit the model, or where
    there is none though the run has trained (a fresh Adam would not go on as the run would
    have: its first steps, with no moments, are much larger)."""
    from .optim import Adam
    if opt_state is None and epochs_done > 0:
        raise ValueError(f"{path} has trained {epochs_done} epochs but holds no optimizer state "
                         "(Adam's t, m and v), so the run cannot go on as it would have; resume "
                         "from the run's last.npz, which has it")
    opt = Adam(model.params, **constants)
    if opt_state is not None:
        try:
            opt.load_state_dict(opt_state)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return opt


def check_resume_left(args, done, has_best, hint):
    """ValueError where a resumed run (``args.resume``, ``done`` epochs trained) cannot go on:
    its best model so far (``has_best``: the run has one) is not in ``args.out``, where the
    test or the sample at its end reads it, or ``args.epochs`` leaves no epoch to train
    (``hint``: what the program offers instead)."""
    from pathlib import Path
    best = Path(args.out) / "best.npz"
    if has_best and not best.is_file():
        raise ValueError(f"{best}, the run's best model so far, is missing; give --out the "
                         f"folder of the run that {args.resume} comes from")
    if done >= args.epochs:
        raise ValueError(f"{args.resume} has trained {done} epochs; --epochs {args.epochs} "
                         f"leaves none to run ({hint})")


def exit_status(run, prefix, cpu_hint, interrupted_hint=""):
    """``run()``'s exit status, or 2 after one line on stderr (``prefix``error: message) for
    the errors a user can mend: bad checkpoints, files, data and input (ValueError,
    OSError), a GPU asked for where there is none, and a GPU out of memory (the message,
    then ``cpu_hint``).  Ctrl-C: 130 after one line (then ``interrupted_hint``), not a
    traceback.  The ``qlnumba`` command and the training programs report their errors
    through it."""
    from .gpu import CudaUnavailable              # cheap: numba.cuda is imported only when asked for
    try:
        return run()
    except KeyboardInterrupt:
        print(f"\n{prefix}interrupted{interrupted_hint}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 2
    except CudaUnavailable as exc:
        print(f"{prefix}error: {exc}{cpu_hint}", file=sys.stderr)
        return 2
    except Exception as exc:
        if not device_out_of_memory(exc):
            raise
        print(f"{prefix}error: the GPU ran out of memory ({exc}); try smaller batches or shorter "
              f"sequences{cpu_hint}", file=sys.stderr)
        return 2


def device_out_of_memory(exc):
    """Whether ``exc`` is numba-cuda's error for a device allocation that did not fit."""
    try:
        from numba.cuda.cudadrv.driver import CudaAPIError
    except ImportError:                           # no numba-cuda: no GPU error either
        return False
    return isinstance(exc, CudaAPIError) and "OUT_OF_MEMORY" in str(exc)


def _parser():
    ap = argparse.ArgumentParser(prog="qlnumba", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="what a checkpoint holds")
    p.add_argument("checkpoint")
    _device_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(run=info)
    p = sub.add_parser("predict", help="classify texts (one per line) or a .npy array")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="*", default=["-"],
                   help="files of texts, one per line ('-' or none: standard input); for a "
                        "model of ids (2-D, padded with 0) or of features, .npy arrays (read "
                        "without pickle)")
    p.add_argument("--proba", action="store_true",
                   help="print every class's probability (JSON) instead of the best label")
    _device_option(p)
    p.set_defaults(run=predict)
    p = sub.add_parser("evaluate", help="accuracy and macro-F1 on labelled texts; a language "
                                        "model's loss per character on a text")
    p.add_argument("checkpoint")
    p.add_argument("data", help="a classifier: JSON Lines (optionally gzipped) with 'text' and "
                                "'label' fields; a language model: a text file (optionally "
                                "gzipped; '-': standard input)")
    p.add_argument("--streams", type=int, default=1,
                   help="a language model: read the text as N equal parts side by side, each "
                        "from a zero state (faster; 1, the default, reads it whole, left to right)")
    _device_option(p)
    p.set_defaults(run=evaluate)
    p = sub.add_parser("generate", help="text from a character language model")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="\n", help="the text to continue")
    p.add_argument("--chars", type=int, default=300, help="characters to add")
    p.add_argument("--temperature", type=float, default=0.8, help="below 1: safer choices")
    p.add_argument("--seed", type=int, default=0)
    _device_option(p)
    p.set_defaults(run=generate)
    return ap


def _device_option(parser):
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where the recurrent layers run (default: where the model was saved "
                             "from; cpu reads a GPU-trained model on a machine without a GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the kernels, BLAS on one (default: $QLNUMBA_THREADS, "
                             "else 2 or the cores if fewer)")


def _set_threads(n):
    from .config import set_num_threads
    if n is None:
        if "QLNUMBA_THREADS" in os.environ:        # qlnumba.config applied it at import
            return
        n = min(2, os.cpu_count() or 1)
    set_num_threads(n)


def _load(args, loaded=None):
    """The checkpoint's classifier; ``loaded``: load_checkpoint's values, where the caller
    has read the file already."""
    from .estimator import QLLSTMClassifier
    if loaded is None:
        return QLLSTMClassifier.load(args.checkpoint, device=args.device)
    return QLLSTMClassifier.from_loaded(args.checkpoint, loaded)


def info(args):
    from .checkpoint import load_checkpoint
    from .lm import LanguageModel
    loaded = load_checkpoint(args.checkpoint, args.device)
    model, vocab, opt_state, meta = loaded
    is_classifier = not isinstance(model, LanguageModel)
    clf = _load(args, loaded) if is_classifier and (meta.get("estimator") or vocab is not None) else None
    report = {"model": model.config, "parameters": model.param_counts(),
              "vocabulary": None if vocab is None else len(vocab),
              "input": clf.input_ if clf else None,
              "classes": clf.classes_.tolist() if clf else None,
              "optimizer_state": opt_state is not None}
    for key in ("epoch", "best_val_accuracy", "val_loss"):
        if key in meta:
            report[key] = meta[key]
    if clf is not None and clf.n_iter_:
        report["epochs"] = clf.n_iter_
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0


def predict(args):
    import numpy as np
    clf = _load(args)
    for source in args.inputs:
        if clf.input_ == "text":
            X = [line.rstrip("\r\n") for line in _read_lines(source)]
        elif source == "-":
            raise ValueError(f"this model reads {clf.input_}: give .npy files, not standard input")
        else:
            try:
                X = np.load(source, allow_pickle=False)
            except ValueError as exc:                  # not a .npy, or an object array
                raise ValueError(f"{source} is not a .npy array of numbers ({exc})") from None
            if not isinstance(X, np.ndarray) or X.ndim == 0:
                raise ValueError(f"{source} is not a .npy array of one or more sequences")
            if clf.input_ == "ids":
                clf.set_params(input="ids")          # a 2-D array: ids padded with 0
        if len(X) == 0:
            continue
        probs = clf.predict_proba(X)
        for row in probs:
            if args.proba:
                print(json.dumps({str(c): round(float(p), 6) for c, p in zip(clf.classes_, row)}))
            else:
                best = int(row.argmax())
                print(f"{clf.classes_[best]}\t{row[best]:.4f}")
    return 0


def evaluate(args):
    import numpy as np
    from sklearn.metrics import f1_score

    from .checkpoint import load_checkpoint
    from .lm import LanguageModel
    loaded = load_checkpoint(args.checkpoint, args.device)
    model, vocab, _, _ = loaded
    if isinstance(model, LanguageModel):
        return _evaluate_language_model(args, model, vocab)
    clf = _load(args, loaded)
    if clf.input_ != "text":
        raise ValueError(f"evaluate reads labelled texts; this model reads {clf.input_}")
    texts, labels = [], []
    for number, line in enumerate(_read_lines(args.data), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text, label = record["text"], record["label"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{args.data}, line {number}: not a JSON object with 'text' and "
                             "'label'") from None
        if not isinstance(text, str):
            raise ValueError(f"{args.data}, line {number}: 'text' must be a string, got "
                             f"{json.dumps(text)}")
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            raise ValueError(f"{args.data}, line {number}: 'label' must be a string or a "
                             f"number, got {json.dumps(label)}")
        texts.append(text)
        labels.append(label)
    if not texts:
        raise ValueError(f"{args.data} holds no records")
    labels = np.asarray(labels)
    unknown = set(labels.tolist()) - set(clf.classes_.tolist())
    if unknown:
        raise ValueError(f"{args.data} has labels {sorted(unknown, key=str)} that the model does "
                         f"not know (it knows {clf.classes_.tolist()})")
    pred = clf.predict(texts)
    print(json.dumps({"n": len(texts), "accuracy": float((pred == labels).mean()),
                      "macro_f1": float(f1_score(labels, pred, average="macro"))}))
    return 0


def _evaluate_language_model(args, model, vocab):
    """The text's mean loss per character, read left to right with the state carried."""
    import math

    from .data.shakespeare import encode_chars
    from .data.text import UNK
    if vocab is None:
        raise ValueError(f"{args.checkpoint} is a language model without its vocabulary")
    ids = encode_chars("".join(_read_lines(args.data)), vocab)
    if len(ids) < 2:
        raise ValueError(f"{args.data} holds fewer than 2 characters: nothing to predict")
    nats = model.score(ids, args.streams)
    chars = (len(ids) - 1) // args.streams * args.streams           # score leaves the rest out
    print(json.dumps({"chars": chars, "nats_per_char": nats,
                      "bits_per_char": nats / math.log(2),
                      "unknown_chars": int((ids == UNK).sum())}))
    return 0


def generate(args):
    import numpy as np

    from .checkpoint import load_checkpoint
    from .data.shakespeare import decode_chars, encode_chars
    from .data.text import PAD, UNK
    from .lm import LanguageModel
    model, vocab, _, _ = load_checkpoint(args.checkpoint, args.device)
    if not isinstance(model, LanguageModel) or vocab is None:
        raise ValueError(f"{args.checkpoint} is not a language model with its vocabulary")
    if args.chars < 0 or not args.prompt:
        raise ValueError("--chars must be >= 0 and --prompt non-empty")
    prompt = encode_chars(args.prompt, vocab)
    unknown = sorted({ch for ch, i in zip(args.prompt, prompt) if i == UNK})
    if unknown:
        print(f"qlnumba generate: note: the model never saw {''.join(unknown)!r}; those prompt "
              f"characters are read as unknown", file=sys.stderr)
    ids = model.generate(prompt, args.chars, np.random.default_rng(args.seed), args.temperature,
                         exclude=(PAD, UNK))
    print(args.prompt + decode_chars(ids, vocab))
    return 0


def _read_lines(path):
    """The lines of a text file, of a gzipped one (by its name), or of standard input ('-'),
    read as UTF-8."""
    try:
        if path == "-":
            return sys.stdin.readlines()
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return f.readlines()
    except UnicodeDecodeError as exc:
        name = "standard input" if path == "-" else path
        raise ValueError(f"{name} is not UTF-8 text (byte {exc.object[exc.start]:#04x}: "
                         f"{exc.reason}); a model of text reads lines of UTF-8 text") from None


if __name__ == "__main__":
    sys.exit(main())
