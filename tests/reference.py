"""Slow, obvious float64 twins of every cell, written straight from docs/model.md.

One row at a time, one step at a time, plain numpy; no buffers, no tricks.
The kernels are tested against these and nothing here imports the library.
"""
import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ql_row(x, length, p, st, K, psug, hgr, reverse):
    """One row of one QL-LSTM direction.

    x (T, E); p: W, U, b (+ gamma, beta) (+ V_s, V_m, b_r); st: h, c (+ m, a, n).
    Returns out (T, H) and the final state.
    """
    T = x.shape[0]
    H = p["U"].shape[1]
    h, c = st["h"].astype(np.float64), st["c"].astype(np.float64)
    if hgr:
        m, a, n = st["m"].astype(np.float64), st["a"].astype(np.float64), int(st["n"])
    out = np.zeros((T, H))
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        z = p["W"] @ x[t] + p["U"] @ h + p["b"]
        if psug:
            gam, bet = p["gamma"], p["beta"]
            i = sigmoid(gam[0] * z + bet[0])
            f = sigmoid(gam[1] * z + bet[1])
            g = np.tanh(gam[2] * z + bet[2])
            o = sigmoid(gam[3] * z + bet[3])
        else:
            i, f, g, o = sigmoid(z[:H]), sigmoid(z[H:2 * H]), np.tanh(z[2 * H:3 * H]), sigmoid(z[3 * H:])
        c = f * c + i * g
        hhat = o * np.tanh(c)
        if hgr:
            h = hhat + m
            a = a + hhat
            n += 1
            if n == K:
                s = a / K
                r = sigmoid(p["V_s"] @ s + p["V_m"] @ m + p["b_r"])
                m = r * m + (1 - r) * s
                a = np.zeros(H)
                n = 0
        else:
            h = hhat
        out[t] = h
    final = {"h": h, "c": c}
    if hgr:
        final.update(m=m, a=a, n=n)
    return out, final


def gru_row(x, length, p, st, reverse):
    """One row of one GRU direction (PyTorch's equations, gate rows r, z, n)."""
    T = x.shape[0]
    H = p["U"].shape[1]
    h = st["h"].astype(np.float64)
    out = np.zeros((T, H))
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for t in steps:
        gx = p["W"] @ x[t] + p["b"]
        gh = p["U"] @ h + p["b_U"]
        r = sigmoid(gx[:H] + gh[:H])
        u = sigmoid(gx[H:2 * H] + gh[H:2 * H])
        n = np.tanh(gx[2 * H:] + r * gh[2 * H:])
        h = (1 - u) * n + u * h
        out[t] = h
    return out, {"h": h}


def stack(row_fn, x, lengths, params, state, num_layers, directions, masks=None):
    """Stacked, optionally bidirectional layers built from a one-row cell.

    masks: None, or masks[k - 1] (B, T, H * directions) multiplies layer k - 1's output
    before layer k reads it (dropout between layers).

    row_fn(x_row, length, cell_params, cell_state, reverse) -> (out_row, final_state).
    params use the library's names (l{k}. / l{k}r.); state arrays are
    (num_layers * directions, B, H) and n is (num_layers * directions, B).
    """
    B, T, _ = x.shape
    inp = x.astype(np.float64)
    final = {k: np.array(v, dtype=np.float64 if k != "n" else np.int64) for k, v in state.items()}
    for k in range(num_layers):
        if k > 0 and masks is not None:
            inp = inp * masks[k - 1]
        outs = []
        for d in range(directions):
            prefix = f"l{k}{'r' if d else ''}."
            p = {name[len(prefix):]: v.astype(np.float64) for name, v in params.items()
                 if name.startswith(prefix)}
            i = k * directions + d
            out = np.zeros((B, T, p["U"].shape[1]))
            for bb in range(B):
                st = {key: v[i, bb] for key, v in state.items()}
                out[bb], fin = row_fn(inp[bb], lengths[bb], p, st, d == 1)
                for key in final:
                    final[key][i, bb] = fin[key]
            outs.append(out)
        inp = np.concatenate(outs, axis=2)
    return inp, final


def embedding(ids, table):
    out = table[ids].astype(np.float64)
    out[ids == 0] = 0.0
    return out


def linear_xent(h, targets, W, b):
    """Mean softmax cross-entropy of logits h W^T + b; returns (loss, probs)."""
    logits = h @ W.T + b
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return -np.log(probs[np.arange(len(targets)), targets]).mean(), probs


def adamw(p, grads, lr, beta1, beta2, eps, weight_decay):
    """Several AdamW steps on one float64 array, the textbook way; returns the final p."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        mhat = m / (1 - beta1 ** t)
        vhat = v / (1 - beta2 ** t)
        p = p - lr * (mhat / (np.sqrt(vhat) + eps) + weight_decay * p)
    return p
