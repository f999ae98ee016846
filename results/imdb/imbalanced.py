"""IMDB with few positive reviews: QLLSTMClassifier with and without balanced sample weights.

The record of the sample_weight table in results/imdb.md: `python results/imdb/imbalanced.py`
(about 5 minutes on 2 cores; the IMDB folder found as train/imdb.py finds it).
"""
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.utils.class_weight import compute_sample_weight

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from qlnumba import QLLSTMClassifier  # noqa: E402
from qlnumba.config import set_num_threads  # noqa: E402
from qlnumba.data import load_imdb  # noqa: E402

set_num_threads(2)
data = load_imdb(None, ("train", "test"))
(train_x, train_y), (test_x, test_y) = data["train"], data["test"]
rng = np.random.default_rng(0)
neg, pos = np.flatnonzero(train_y == 0), np.flatnonzero(train_y == 1)
rows = np.concatenate([rng.choice(neg, 10000, replace=False), rng.choice(pos, 500, replace=False)])
X, y = [train_x[i] for i in rows], train_y[rows]
test = rng.choice(len(test_y), 10000, replace=False)
Xt, yt = [test_x[i] for i in test], test_y[test]
for seed in (0, 1):
    for name, w in (("none", None), ("balanced", compute_sample_weight("balanced", y))):
        t0 = time.time()
        clf = QLLSTMClassifier(max_len=256, max_epochs=8, early_stopping=True, n_iter_no_change=2,
                               embed_dropout=0.3, head_dropout=0.3, lr=2e-3, random_state=seed)
        clf.fit(X, y, sample_weight=w)
        p = clf.predict(Xt)
        print(f"seed {seed} weights {name}: accuracy {np.mean(p == yt):.4f}, balanced accuracy "
              f"{balanced_accuracy_score(yt, p):.4f}, macro-F1 {f1_score(yt, p, average='macro'):.4f}, "
              f"recall of positives {np.mean(p[yt == 1] == 1):.4f}, predicted positive "
              f"{np.mean(p == 1):.4f}, epochs {clf.n_iter_}, {time.time() - t0:.0f} s", flush=True)
