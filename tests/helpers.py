"""Shared test helpers: seeded generators, random states, central differences, data files."""
import gzip
import json

import numpy as np


def make_rng(seed):
    """A numpy Generator; the seed is printed so a failure can be replayed (pytest -s shows it)."""
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def random_state(layer, batch, rng, scale=0.5):
    """A random initial state of the right shapes for ``layer`` (n drawn in [0, K))."""
    state = layer.initial_state(batch)
    for key in layer.state_keys:
        state[key] = (scale * rng.standard_normal(state[key].shape)).astype(layer.dtype)
    if "n" in state:
        state["n"] = rng.integers(0, layer.block_size, state["n"].shape)
    return state


def numeric_grad(loss, arr, eps=1e-6):
    """Central differences of the scalar ``loss()`` w.r.t. every element of ``arr`` (changed in place)."""
    grad = np.zeros(arr.shape)
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = loss()
        flat[i] = old - eps
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def assert_close(got, want, rtol, atol, what):
    err = np.abs(got - want)
    bound = atol + rtol * np.abs(want)
    assert (err <= bound).all(), (f"{what}: max abs err {err.max():.3e}, "
                                  f"worst at {np.unravel_index(np.argmax(err - bound), err.shape)}")


def gpu_usable():
    """Whether qlnumba's GPU path can run in this process (a GPU, or the simulator on)."""
    from qlnumba.gpu import CudaUnavailable, get_cuda
    try:
        get_cuda()
    except CudaUnavailable:
        return False
    return True


def write_jsonl_gz(path, rows):
    """rows (dicts) as gzipped JSON Lines, the IMDB folder's format."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
