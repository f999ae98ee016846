"""The register-tile product of kernels/tiles.py against numpy in float64, on any shape:
rows and columns that fill no whole tile, views into larger arrays, both accumulate modes,
and the BLAS path that hosts without AVX2 take."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from qlnumba.config import JIT
from qlnumba.kernels import tiles
from qlnumba.kernels.blas import gemm
from qlnumba.kernels.tiles import blocks_of, pack_rows, panels_of, rows_gemm, tiles_gemm

from helpers import make_rng


@njit(**JIT)
def blas_path(C, A, X, accumulate):
    gemm(C, A, X, False, False, accumulate)      # what panel_gemm runs without TILES


def check_product(m, K, n, dtype, accumulate, seed, run):
    """C = A X (or C += A X) into a block of a larger array whose other values must stay."""
    rng = make_rng(seed)
    A = rng.standard_normal((m, K)).astype(dtype)
    X_parent = rng.standard_normal((K, n + 3)).astype(dtype)
    X = X_parent[:, 1:1 + n]                                   # a view: row stride n + 3
    parent = rng.standard_normal((m + 2, n + 5)).astype(dtype)
    before = parent.copy()
    run(parent[1:1 + m, 2:2 + n], A, X, accumulate)
    want = before.copy()
    block = A.astype(np.float64) @ X.astype(np.float64)
    want[1:1 + m, 2:2 + n] = block + (want[1:1 + m, 2:2 + n] if accumulate else 0)
    tol = (1e-5 if dtype == np.float32 else 1e-13) * (1 + np.abs(want).max())
    np.testing.assert_allclose(parent, want, rtol=0, atol=tol)   # and nothing else touched


shapes = st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 80),
                   st.sampled_from([np.float32, np.float64]), st.booleans(),
                   st.integers(0, 2**31 - 1))


@settings(deadline=None, max_examples=60)
@given(shapes, st.sampled_from([tiles.MR, tiles.MRW]))
def test_tiles_match_numpy(case, mr):
    m, K, n, dtype, accumulate, seed = case
    check_product(m, K, n, dtype, accumulate, seed,
                  lambda C, A, X, acc: tiles_gemm(C, panels_of(A, mr), X, A.shape[0], acc))


def rows_product(C, A, X, accumulate):
    """``rows_gemm`` as the B-major kernels run it: panels and blocks made once, A repacked on
    every call (here after a first call with other rows, which must leave nothing behind)."""
    assert not accumulate
    Apk, Xpk = pack_rows(A), blocks_of(X)
    rows_gemm(C, Apk, A[::-1].copy(), Xpk, X)
    rows_gemm(C, Apk, A, Xpk, X)


@settings(deadline=None, max_examples=60)
@given(shapes)
def test_rows_gemm_matches_numpy(case):
    m, K, n, dtype, _, seed = case
    check_product(m, K, n, dtype, False, seed, rows_product)


@settings(deadline=None, max_examples=20)
@given(shapes)
def test_blas_path_matches_numpy(case):
    m, K, n, dtype, accumulate, seed = case
    check_product(m, K, n, dtype, accumulate, seed, blas_path)


def test_blas_path_takes_one_row_of_any_stride():
    """A one-row matrix may carry any row stride (U[:, :1].T has stride 1 item): BLAS must get
    a leading dimension of at least its columns, or it refuses the call and leaves C as it was."""
    U = np.arange(4.0).reshape(4, 1)
    A = U[:, 0:1].T                                           # (1, 4), strides (8, 8)
    for n in (1, 2):                                          # (OpenBLAS checks n = 1 strictly)
        X = np.arange(4.0 * n).reshape(4, n)
        C = np.full((1, n), np.nan)
        blas_path(C, A, X, False)
        np.testing.assert_array_equal(C, A @ X)
        Ct = np.full((n, 1), np.nan)
        blas_path(Ct, np.ascontiguousarray(X.T), A.T, False)  # X^T A^T: A^T (4, 1), row stride 1 item
        np.testing.assert_array_equal(Ct, X.T @ A.T)


def test_edges_of_a_tile():
    """Exactly one tile, one row and one column past it, one vector of columns and past it."""
    for dtype in (np.float32, np.float64):
        vw = tiles.VBYTES // np.dtype(dtype).itemsize
        for mr in (tiles.MR, tiles.MRW):                  # panels of either height
            for m in (1, mr, mr + 1, 2 * mr, 2 * mr + 1):
                for n in (1, vw, vw + 1, tiles.NV * vw, tiles.NV * vw + 1):
                    for accumulate in (False, True):
                        check_product(m, 5, n, dtype, accumulate, 7,
                                      lambda C, A, X, acc: tiles_gemm(C, panels_of(A, mr), X, A.shape[0], acc))
        for m in (1, tiles.MR, tiles.MR + 1, 2 * tiles.MR + 1):       # rows_gemm's tiles
            for n in (1, tiles.NV * vw, tiles.NV * vw + 1):
                check_product(m, 5, n, dtype, False, 7, rows_product)


def test_nan_stays_in_its_column():
    A = np.ones((9, 4), np.float32)
    X = np.ones((4, 20), np.float32)
    X[2, 5] = np.nan
    C = np.zeros((9, 20), np.float32)
    tiles_gemm(C, panels_of(A), X, 9, False)
    assert np.isnan(C[:, 5]).all()
    assert (np.delete(C, 5, axis=1) == 4).all()


def test_packing_and_host_choice():
    A = np.arange(3 * 5, dtype=np.float64).reshape(3, 5)
    for mr in (tiles.MRW, tiles.MR):
        Apk = panels_of(A, mr)
        assert Apk.shape == (2, 5, mr)                    # rounded up to an even panel count
        assert (Apk[0, :, :3] == A.T).all() and not Apk[0, :, 3:].any() and not Apk[1].any()
    assert panels_of(A).shape[2] == tiles.MR
    A9 = np.arange(9 * 2, dtype=np.float64).reshape(9, 2)
    assert (panels_of(A9, 4)[2, :, 0] == A9[8]).all()     # row 8: panel 2, first row
    assert tiles.VBYTES in (16, 32, 64)
    assert tiles.TILES == (tiles.VBYTES >= 32)
    npan = 2 if tiles.TILES else 0
    assert tiles.pack_rows(A).shape == (npan, 5, tiles.MR)
    big = tiles.X_L1_BYTES // (5 * 8) + 1                 # columns of an X (5, big) beyond L1
    assert tiles.pack_panels(A, big - 1).shape == (npan, 5, tiles.MR)
    assert tiles.pack_panels(A, big).shape == (npan, 5, tiles.MRW)
    width = tiles.NV * tiles.VBYTES // 8
    X = np.arange(5 * (width + 3), dtype=np.float64).reshape(5, width + 3)
    Xpk = blocks_of(X)
    if tiles.TILES:
        assert Xpk.shape == (2, 5, width)
        assert (Xpk[0] == X[:, :width]).all() and (Xpk[1, :, :3] == X[:, width:]).all()
        assert not Xpk[1, :, 3:].any()
    else:
        assert Xpk.shape[0] == 0


def test_vector_width_follows_numbas_target():
    """The tile width comes from the features Numba compiles with, not from the host alone."""
    code = "from qlnumba.kernels import tiles; print(tiles.VBYTES, tiles.TILES)"
    for env, want in (({"NUMBA_CPU_NAME": "generic"}, "16 False"),
                      ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma"}, "32 True")):
        got = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                             capture_output=True, text=True, check=True).stdout.strip()
        assert got == want, (env, got)


def _host_has_avx512():
    import llvmlite.binding as llvm
    return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")


WIDE_CHECK = ("import qlnumba.config as c; from numba.core import registry; "
              "f = registry.cpu_target.target_context.codegen().magic_tuple()[2]; "
              "print(c.WIDE_VECTORS, f.endswith(',-prefer-256-bit'))")


def _fresh_env(**env):
    """os.environ without the variables that choose the vector width, plus ``env``."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("QLNUMBA_WIDE_VECTORS", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    return dict(base, **env)


def test_wide_vectors_where_they_apply():
    """512-bit vectors for LLVM's own loops on AVX-512 hosts (config._prefer_512_bit), and only
    where the user left Numba's target alone and it was not set up before qlnumba's import."""
    wide = str(_host_has_avx512())
    cases = (("", {}, f"{wide} {wide}"),
             ("", {"QLNUMBA_WIDE_VECTORS": "0"}, "False False"),
             ("", {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx,+avx2,+fma"}, "False False"),
             ("import numba; numba.njit(lambda v: v)(1); ", {}, "False False"))
    for before, env, want in cases:
        got = subprocess.run([sys.executable, "-c", before + WIDE_CHECK], env=_fresh_env(**env),
                             capture_output=True, text=True, check=True).stdout.strip()
        assert got == want, (before, env, got)


SAME_BITS = """
import hashlib, numpy as np, qlnumba
qlnumba.config.set_num_threads(2)
rng = np.random.default_rng(7)
x = rng.standard_normal((6, 40, 5)).astype(np.float32)
lengths = np.array([40, 33, 40, 7, 21, 1])
digest = hashlib.sha256()
for psug, hgr in ((True, True), (False, False)):
    layer = qlnumba.QLLSTM(5, 24, psug=psug, hgr=hgr, block_size=4, dtype=np.float32, seed=1)
    out, _ = layer.forward(x, lengths)
    dx, grads = layer.backward(out)
    infer, _ = layer.forward(x, lengths, need_grad=False)
    for a in [out, dx, infer] + [grads[k] for k in sorted(grads)]:
        digest.update(np.ascontiguousarray(a).tobytes())
gru = qlnumba.GRU(5, 24, dtype=np.float32, seed=1)
out, _ = gru.forward(x, lengths)
dx, grads = gru.backward(out)
for a in [out, dx] + [grads[k] for k in sorted(grads)]:
    digest.update(np.ascontiguousarray(a).tobytes())
print(qlnumba.config.WIDE_VECTORS, digest.hexdigest())
"""


@pytest.mark.slow
@pytest.mark.skipif(not _host_has_avx512(), reason="the vector width only changes on AVX-512 hosts")
def test_wide_vectors_give_the_same_bits():
    """No kernel loop reassociates a sum, so 512-bit vectors change no bit of any result:
    QL-LSTM, LSTM (training and inference) and GRU in float32, on 2 threads, both widths."""
    runs = {}
    for flag in ("1", "0"):
        got = subprocess.run([sys.executable, "-c", SAME_BITS], env=_fresh_env(QLNUMBA_WIDE_VECTORS=flag),
                             capture_output=True, text=True, check=True).stdout.split()
        runs[got[0]] = got[1]
    assert set(runs) == {"True", "False"}
    assert runs["True"] == runs["False"]


@pytest.mark.slow
def test_kernels_without_tiles():
    """The kernels on the BLAS path that hosts without AVX2 take: the recurrent tests rerun in a
    process that compiles for plain x86-64 (16-byte vectors, so TILES is False)."""
    env = dict(os.environ, NUMBA_CPU_NAME="x86-64", NUMBA_CPU_FEATURES="+64bit,+sse,+sse2",
               QLNUMBA_CACHE="0")
    check = subprocess.run([sys.executable, "-c", "from qlnumba.kernels import tiles; print(tiles.TILES)"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "False"
    here = os.path.dirname(__file__)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          os.path.join(here, "test_recurrent.py"), os.path.join(here, "test_parallel.py"),
                          os.path.join(here, "test_inference.py"), os.path.join(here, "test_tiles.py")],
                         env=env, capture_output=True, text=True, cwd=os.path.dirname(here))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
