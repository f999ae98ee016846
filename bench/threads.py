"""Thread settings side by side: the library's default against ``set_num_threads(n)``.

By default the kernels run serially and BLAS keeps its own threads.  ``set_num_threads(n)``
runs the kernels on n Numba threads and pins BLAS to one.  This times, in one process,

- a character language model's forward with targets (``need_grad=False``: scoring) at
  B = 1, 8 and 32 rows of T = 256 steps (E = 64, H = 128, 67 symbols, as
  ``train/shakespeare.py --hidden 128``), and
- a classifier's training step (forward, backward; B = 32, T = 256, E = 128, H = 256)

for each setting, in that order (``set_num_threads`` cannot be undone for BLAS: the
default runs first).  Compilation is excluded (warm-up first); each figure is a median,
reported as tokens/s and as a ratio to the default.

    python bench/threads.py [--threads 1,2] [--repeats 7] [--json]
"""
import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numba  # noqa: E402
import numpy as np  # noqa: E402

import qlnumba  # noqa: E402
from qlnumba.config import set_num_threads  # noqa: E402
from qlnumba.lm import LanguageModel  # noqa: E402
from timing import median_time  # noqa: E402  (bench/ is the script's folder)


def cases(rng):
    """name -> (callable, tokens per call)."""
    out = {}
    lm = LanguageModel(67, embed_dim=64, hidden_size=128, kind="ql", seed=0)
    for B in (1, 8, 32):
        x, y = rng.integers(1, 67, (B, 256)), rng.integers(1, 67, (B, 256))
        out[f"lm_score_B{B}"] = (lambda x=x, y=y: lm.forward(x, None, y, need_grad=False), B * 256)
    for kind in ("ql", "lstm"):
        clf = qlnumba.SequenceClassifier(5000, embed_dim=128, hidden_size=256, kind=kind, seed=0)
        x, y = rng.integers(1, 5000, (32, 256)), rng.integers(0, 2, 32)

        def step(clf=clf, x=x, y=y):
            clf.forward(x, None, y)
            clf.backward()
        out[f"{kind}_train_B32"] = (step, 32 * 256)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="the set_num_threads counts to time")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.repeats < 1 or not all(n.isdigit() and int(n) >= 1 for n in args.threads.split(",")):
        ap.error(f"--repeats must be >= 1 and --threads counts >= 1, got {args.repeats} and {args.threads}")
    from threadpoolctl import threadpool_info
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's BLAS: loaded, so that it is listed)
    todo = cases(np.random.default_rng(0))
    settings = ["default"] + [f"threads{n}" for n in args.threads.split(",")]
    blas = [{k: d.get(k) for k in ("internal_api", "num_threads", "version")} for d in threadpool_info()
            if d.get("user_api") == "blas"]
    rates = {}
    for setting in settings:
        if setting != "default":
            set_num_threads(int(setting[len("threads"):]))
        rates[setting] = {name: tokens / median_time(fn, args.repeats)
                          for name, (fn, tokens) in todo.items()}
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "python": platform.python_version(),
              "numpy": np.__version__, "numba": numba.__version__, "blas_at_start": blas,
              "repeats": args.repeats, "tokens_per_s": rates,
              "ratio_to_default": {s: {n: rates[s][n] / rates["default"][n] for n in todo}
                                   for s in settings}}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print({k: v for k, v in report.items() if k not in ("tokens_per_s", "ratio_to_default")})
    print(f"{'case':16s}" + "".join(f"{s:>22s}" for s in settings))
    for name in todo:
        print(f"{name:16s}" + "".join(f"{rates[s][name]:>12.0f} ({rates[s][name] / rates['default'][name]:4.2f}x)"
                                      for s in settings))


if __name__ == "__main__":
    main()
