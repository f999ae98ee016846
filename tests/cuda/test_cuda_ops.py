"""GPU embedding, softmax cross-entropy head and AdamW equal the CPU kernels (tiny shapes)."""
import os
import warnings

import numpy as np
import pytest

import qlnumba
from helpers import assert_close, make_rng
from qlnumba.kernels.embedding import embedding_backward, embedding_forward
from qlnumba.kernels.head import linear_xent_backward, linear_xent_forward
from qlnumba.optim import NonFiniteGradients

DTYPES = [(np.float64, 1e-12), (np.float32, 1e-5)]


@pytest.fixture(scope="module")
def gpu():
    from qlnumba.gpu import ops
    return ops


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_embedding_forward_backward(gpu, dtype, tol):
    cuda = gpu.cuda
    rng = make_rng(70)
    B, T, V, E = 2, 4, 5, 3
    ids = rng.integers(0, V, (B, T))
    ids[0, 0], ids[1, 1], ids[1, 2] = 0, 3, 3                  # padding and a repeated id
    table = rng.standard_normal((V, E)).astype(dtype)
    dout = rng.standard_normal((B, T, E)).astype(dtype)
    want = np.empty((B, T, E), dtype)
    embedding_forward(want, ids, table)
    got = cuda.device_array((B, T, E), dtype=dtype)
    d_ids = cuda.to_device(ids)
    gpu.embedding_forward(got, d_ids, cuda.to_device(table))
    assert_close(got.copy_to_host(), want, tol, tol, "embedding out")
    dtable_want = np.full((V, E), 0.5, dtype)
    embedding_backward(dtable_want, dout, ids)
    dtable = cuda.to_device(np.full((V, E), 0.5, dtype))     # accumulated into, like the CPU
    gpu.embedding_backward(dtable, cuda.to_device(dout), d_ids, gpu.id_segments(ids))
    assert_close(dtable.copy_to_host(), dtable_want, tol, tol, "dtable")


def test_id_segments_are_the_runs_of_each_id(gpu):
    """order lists the positions id by id (in position order within an id), starts[i] is
    where the i-th distinct id's run begins (and starts[-1] the end), uniq the ids."""
    rng = make_rng(72)
    for shape, V in (((1, 1), 3), ((2, 4), 3), ((5, 7), 40)):
        ids = rng.integers(0, V, shape)
        order, starts, uniq = gpu.id_segments(ids)
        flat = ids.reshape(-1)
        assert list(uniq) == sorted(set(flat.tolist()))
        assert starts[0] == 0 and starts[-1] == flat.size and len(starts) == len(uniq) + 1
        for i, v in enumerate(uniq):
            assert list(order[starts[i]:starts[i + 1]]) == list(np.flatnonzero(flat == v))
        assert order.dtype == starts.dtype == uniq.dtype == np.int64


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_head_forward_backward(gpu, dtype, tol):
    cuda = gpu.cuda
    rng = make_rng(71)
    N, D, C = 3, 4, 3
    h = rng.standard_normal((N, D)).astype(dtype)
    W = rng.standard_normal((C, D)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    targets = rng.integers(0, C, N)
    probs, losses = np.empty((N, C), dtype), np.empty(N, dtype)
    linear_xent_forward(probs, losses, h, targets, W, b)
    dh, dW, db = np.ones((N, D), dtype), np.ones((C, D), dtype), np.ones(C, dtype)
    weights = rng.uniform(0, 2, N).astype(dtype) / N               # each row's loss share
    linear_xent_backward(dh, dW, db, probs, h, targets, W, weights)
    d = {k: cuda.to_device(v) for k, v in dict(h=h, W=W, b=b, targets=targets).items()}
    g_probs, g_losses = cuda.device_array((N, C), dtype), cuda.device_array(N, dtype)
    gpu.linear_xent_forward(g_probs, g_losses, d["h"], d["targets"], d["W"], d["b"])
    assert_close(g_probs.copy_to_host(), probs, tol, tol, "probs")
    assert_close(g_losses.copy_to_host(), losses, tol, tol, "losses")
    g_dh, g_dW, g_db = (cuda.to_device(np.ones(s, dtype)) for s in ((N, D), (C, D), C))
    gpu.linear_xent_backward(g_dh, g_dW, g_db, g_probs, d["h"], d["targets"], d["W"],
                             cuda.to_device(weights))
    assert_close(g_dh.copy_to_host(), dh, tol, tol, "dh")
    assert_close(g_dW.copy_to_host(), dW, tol, tol, "dW")
    assert_close(g_db.copy_to_host(), db, tol, tol, "db")


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_adam_with_clipping_equals_cpu(gpu, dtype, tol):
    cuda = gpu.cuda
    rng = make_rng(72)
    shapes = {"W": (2, 3), "b": (5,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    kw = dict(lr=0.1, weight_decay=0.01, clip_norm=0.5)
    cpu = qlnumba.Adam({k: p.copy() for k, p in params.items()}, **kw)
    dev = gpu.CudaAdam({k: cuda.to_device(p) for k, p in params.items()}, **kw)
    for step in range(3):
        grads = {k: (2.0 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}
        n_cpu = cpu.step(grads)
        n_dev = dev.step({k: cuda.to_device(g) for k, g in grads.items()})
        assert abs(n_dev - n_cpu) <= tol * n_cpu
    for k in shapes:
        assert_close(dev.params[k].copy_to_host(), cpu.params[k], tol, tol, f"param {k}")
        assert_close(dev.m[k].copy_to_host(), cpu.m[k], tol, tol, f"m {k}")
    bad = {k: cuda.to_device(np.full(s, np.nan, dtype)) for k, s in shapes.items()}
    before = dev.params["W"].copy_to_host()
    with pytest.raises(NonFiniteGradients, match="NaN"):
        dev.step(bad)
    assert (dev.params["W"].copy_to_host() == before).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_on_an_arena_equals_adam_per_array_bitwise(gpu, dtype):
    """Parameters as views of one flat array (``arena``): the fused sums and update (one
    launch each) give the per-array launches' results to the last bit."""
    cuda = gpu.cuda
    rng = make_rng(73)
    shapes = {"W": (3, 5), "b": (7,), "U": (2, 2)}
    starts = [0, 32, 64]                                   # gaps between the views, as carved
    host = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    flat_p, flat_g = np.zeros(96, dtype), np.zeros(96, dtype)
    views_p = {}
    dev_p, dev_g = cuda.to_device(flat_p), cuda.to_device(flat_g)
    for (k, s), st in zip(shapes.items(), starts):
        n = int(np.prod(s))
        dev_p[st:st + n].copy_to_device(host[k].reshape(-1))
        views_p[k] = dev_p[st:st + n].reshape(s)
    kw = dict(lr=0.1, weight_decay=0.01, clip_norm=0.5)
    fused = gpu.CudaAdam(views_p, arena=(dev_p, starts), **kw)
    each = gpu.CudaAdam({k: cuda.to_device(v) for k, v in host.items()}, **kw)
    for step in range(3):
        grads = {k: (2.0 * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}
        views_g = {}
        for (k, s), st in zip(shapes.items(), starts):
            n = int(np.prod(s))
            dev_g[st:st + n].copy_to_device(grads[k].reshape(-1))
            views_g[k] = dev_g[st:st + n].reshape(s)
        assert fused.step(views_g, flat_grads=dev_g) == each.step({k: cuda.to_device(g) for k, g in grads.items()})
    for k in shapes:
        for got, want in ((fused.params[k], each.params[k]), (fused.m[k], each.m[k]), (fused.v[k], each.v[k])):
            assert np.array_equal(got.copy_to_host(), want.copy_to_host()), k
    with pytest.raises(ValueError, match="flat_grads"):
        fused.step(views_g, flat_grads=cuda.to_device(np.zeros(8, dtype)))
    with pytest.raises(ValueError, match="flat_grads"):                  # not views of it
        fused.step({k: cuda.to_device(g) for k, g in grads.items()}, flat_grads=dev_g)
    with pytest.raises(ValueError, match="arena"):                       # b is at 32, not 16
        gpu.CudaAdam(views_p, arena=(dev_p, [0, 16, 64]), **kw)


def test_adam_refuses_host_arrays(gpu):
    with pytest.raises(ValueError, match="device array"):
        gpu.CudaAdam({"W": np.zeros((2, 2))})


@pytest.mark.parametrize("tile", ["64x64", "128x128", "64x64pf", "128x128pf", "auto", "auto-pf"])
@pytest.mark.parametrize("M,N,Kd", [(5, 7, 3), (3, 4, 40)], ids=["plain", "split-k"])
def test_matmul_tiles_equal_numpy(tile, M, N, Kd, monkeypatch):
    """Each matrix-product tile gives A B (and C + A B), strided A and B, ragged edges;
    with a long k and few tiles the product is split along k and the chunks summed.
    "auto": with MATMUL_PREFETCH off (the plain tiles); "auto-pf": with it on, the
    library's default (the prefetching tiles)."""
    from qlnumba.gpu import matmul as mm
    cuda = mm.cuda
    monkeypatch.setattr(mm, "MATMUL_TILE", tile.replace("-pf", ""))
    monkeypatch.setattr(mm, "MATMUL_PREFETCH", tile == "auto-pf")
    assert mm.pick_tile(M, N, Kd, np.float64).PF == (tile.endswith("pf"))   # float64: no tensor cores
    rng = make_rng(67)
    A = rng.standard_normal((Kd, M))                    # read transposed: A^T is (M, Kd)
    Bm = rng.standard_normal((Kd, N))
    C0 = rng.standard_normal((M, N))
    for accumulate in (False, True):
        C = cuda.to_device(C0.copy())
        mm.matmul(C, cuda.to_device(A), cuda.to_device(Bm), M, N, Kd, 1, M, N, 1, accumulate)
        want = A.T @ Bm + (C0 if accumulate else 0)
        np.testing.assert_allclose(C.copy_to_host(), want, rtol=1e-12, atol=1e-12)


# the register-capped tiles: in the simulator (no cap) "128x128tf32x3r128" is "128x128tf32x3tested"
TENSOR_CORE_TILES = (["128x128tf32", "128x128tf32x3", "128x128tf32x3tested", "128x128tf32k8", "128x128tf32x3k8",
                      "128x128tf32as", "128x128tf32x3as", "128x128tf32x3as16", "128x128tf32x3w16",
                      "64x128tf32x3r128"]
                     + ([] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["128x128tf32x3r128"]))


def tf32(a, ties=None):
    """float32 values rounded to TF32 as the kernels do (``tensor_cores.tf32_ties``, or
    ``ties``): 10 bits of mantissa, to nearest, ties to even (cvt.rn) or away from zero
    (cvt.rna).  Exact integer arithmetic on the values: m = |a| / ulp_tf32(a), rounded."""
    from qlnumba.gpu.tensor_cores import tf32_ties
    ties = ties or tf32_ties()
    a = np.asarray(a, np.float32).astype(np.float64)
    ulp = np.ldexp(1.0, np.frexp(a)[1] - 11)            # 2^(e - 10) for |a| in [2^e, 2^(e+1))
    m = np.abs(a) / ulp                                  # exact: float32 has 24 bits
    low = np.floor(m)
    up = (m - low > 0.5) | ((m - low == 0.5) & ((ties == "away") | (low % 2 == 1)))
    return (np.sign(a) * (low + up) * ulp).astype(np.float32)


# ties (1 + 2^-11 between 1 and 1 + 2^-10, 1 + 3 2^-11 between 1 + 2^-10 and 1 + 2^-9), below
# and above half a step, a negative tie, zero, exact, a tiny remainder, a carry into the next binade
TF32_CASES = [1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-12, 1 + 3 * 2**-12, -(1 + 2**-11), 0.0,
              1.5 + 2**-10, 3 * 2**-11 + 2**-23, 2 - 2**-23]


@pytest.mark.parametrize("ties", ["even", "away"])
def test_tests_tf32_rounding(ties):
    """The tests' own rounding (the reference) at ties, below and above them, both signs,
    zero, a value TF32 holds exactly and one that rounds up into the next binade."""
    x = np.array(TF32_CASES, np.float32)
    tie_up, tie_down = (1 + 2**-10, -(1 + 2**-10)) if ties == "away" else (1, -1)
    want = [tie_up, 1 + 2**-9, 1, 1 + 2**-10, tie_down, 0, 1.5 + 2**-10, 3 * 2**-11, 2]
    np.testing.assert_array_equal(tf32(x, ties), np.array(want, np.float32))


def test_to_tf32_rounds_to_nearest(monkeypatch):
    """The kernels' TF32 rounding (cvt.rn.tf32.f32 on sm_90, ties to even; cvt.rna before,
    ties away from zero) equals the tests' own, on the values of ``test_tests_tf32_rounding``,
    seen through a one-pass product with 1 (k = 1: C = tf32(x) tf32(1) + zeros, exact)."""
    from qlnumba.gpu import matmul as mm
    cuda = mm.cuda
    monkeypatch.setattr(mm, "MATMUL_TILE", "128x128tf32")
    x = np.array(TF32_CASES, np.float32)
    C = cuda.to_device(np.zeros((x.size, 1), np.float32))
    mm.matmul(C, cuda.to_device(x), cuda.to_device(np.ones(1, np.float32)), x.size, 1, 1, 1, 1, 1, 1)
    np.testing.assert_array_equal(C.copy_to_host()[:, 0], tf32(x))


@pytest.mark.parametrize("tile", TENSOR_CORE_TILES)
def test_tensor_core_tiles(tile, monkeypatch):
    """float32 products on the tensor-core tiles (on a GPU: mma.sync; in the simulator: a
    stand-in with the same fragment layout).  One pass (tf32) equals the product of the
    TF32-rounded inputs up to float32 sums, and differs from the float32 product by more
    than 1e-5; three passes (tf32x3) equal the float32 product to 1e-5 (the simulator: 2e-7;
    on a card the tensor cores' own order of additions).  k contiguous in A and B (x W^T),
    ragged edges (over two tiles of C in the simulator); then m and n contiguous with a long
    k (the weight gradients: split k, which on a GPU takes k of 256 and more), C + A B."""
    from qlnumba.gpu import matmul as mm
    cuda = mm.cuda
    monkeypatch.setattr(mm, "MATMUL_TILE", tile)
    passes = mm.TILES[tile].MMA
    rng = make_rng(69)
    long_k = 64 if mm.SIM else 512
    for M, N, Kd, k_inner, accumulate in ((33, 9, 9, True, False), (5, 7, long_k, False, True)):
        if k_inner:
            A, Bm = rng.standard_normal((M, Kd)), rng.standard_normal((N, Kd))
            strides, At, Bt = (Kd, 1, 1, Kd), A, Bm.T
        else:
            A, Bm = rng.standard_normal((Kd, M)), rng.standard_normal((Kd, N))
            strides, At, Bt = (1, M, N, 1), A.T, Bm
        A, Bm = A.astype(np.float32), Bm.astype(np.float32)
        At, Bt = At.astype(np.float32), Bt.astype(np.float32)
        assert k_inner or mm.split_k(mm.TILES[tile], M, N, Kd)[1] > 1
        C0 = rng.standard_normal((M, N)).astype(np.float32)
        exact = At.astype(np.float64) @ Bt.astype(np.float64)
        rounded = tf32(At).astype(np.float64) @ tf32(Bt).astype(np.float64)
        scale = np.abs(exact).max()
        C = cuda.to_device(C0.copy())
        mm.matmul(C, cuda.to_device(A), cuda.to_device(Bm), M, N, Kd, *strides, accumulate)
        got = C.copy_to_host().astype(np.float64) - (C0 if accumulate else 0)
        if passes == 1:
            assert np.abs(got - rounded).max() < 1e-5 * scale
            assert np.abs(got - exact).max() > 1e-5 * scale     # TF32 was used
        else:
            assert np.abs(got - exact).max() < 1e-5 * scale


@pytest.mark.parametrize("tile", ["128x128tf32x3", "128x128tf32x3as"])     # both loops over k
def test_tf32x3_long_sums_as_accurate_as_float32_tiles(tile, monkeypatch):
    """Three TF32 passes over a long k in one chunk (the weight gradients' chunks are up to
    8192 long) stay as close to the exact product as the float32 tile does.  The tensor
    cores' sums truncate: summed by them over all of k, C drifted toward zero, most where
    every term has the same sign (as here: inputs in [0, 1)).  On an H100 LSTM's weight
    gradients came out 20x further from the CPU than with the float32 tiles."""
    from qlnumba.gpu import matmul as mm
    cuda = mm.cuda
    rng = make_rng(71)
    M, N, Kd = (5, 7, 256) if mm.SIM else (128, 128, 32768)
    A = rng.random((M, Kd)).astype(np.float32)
    Bm = rng.random((N, Kd)).astype(np.float32)
    exact = A.astype(np.float64) @ Bm.T.astype(np.float64)
    monkeypatch.setattr(mm, "split_k", lambda t, M, N, Kd: (                # one chunk of k
        ((M + t.TM * t.TY - 1) // (t.TM * t.TY)) * ((N + t.TN * t.TX - 1) // (t.TN * t.TX)), 1, Kd))
    errors = {}
    for name in (tile, "128x128pf"):
        monkeypatch.setattr(mm, "MATMUL_TILE", name)
        C = cuda.to_device(np.zeros((M, N), np.float32))
        mm.matmul(C, cuda.to_device(A), cuda.to_device(Bm), M, N, Kd, Kd, 1, 1, Kd)
        errors[name] = np.abs(C.copy_to_host() - exact).max() / np.abs(exact).max()
    print("max relative errors", errors)
    assert errors[tile] < 2 * errors["128x128pf"] + 1e-7


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="the simulator's stand-in")
def test_async_copies_stand_in_catches_a_missing_wait(monkeypatch):
    """The simulator's cp.async lands a copy only at a wait for its group: a pipeline that
    computed on a slab without waiting for it reads stale shared memory there (as it might
    on a card) and gets the product wrong, so the tile tests would catch it."""
    from qlnumba.gpu import matmul as mm
    from qlnumba.gpu import tensor_cores as tc
    cuda = mm.cuda
    caches = (tc.async_pipeline, tc.tensor_core_matmul_kernel, mm.matmul_kernel)

    def product():
        rng = make_rng(73)
        A, Bm = rng.random((5, 40)).astype(np.float32), rng.random((40, 7)).astype(np.float32)
        C = cuda.to_device(np.zeros((5, 7), np.float32))
        mm.matmul(C, cuda.to_device(A), cuda.to_device(Bm), 5, 7, 40, 40, 1, 7, 1)
        return np.abs(C.copy_to_host() - A.astype(np.float64) @ Bm).max()

    monkeypatch.setattr(mm, "MATMUL_TILE", "128x128tf32x3as")
    assert product() < 1e-5
    monkeypatch.setattr(tc, "copies_waiter", lambda n: cuda.jit(device=True)(lambda: None))
    for cache in caches:
        cache.cache_clear()
    try:
        with warnings.catch_warnings():      # stale shared memory may hold anything: overflows
            warnings.simplefilter("ignore", RuntimeWarning)   # (process-wide: the simulator's threads)
            error = product()
        assert not error < 1e-2                               # wrong (or NaN)
    finally:
        monkeypatch.undo()
        for cache in caches:
            cache.cache_clear()


def test_tensor_core_tiles_take_float32_only(monkeypatch):
    """float64 products never take a tensor-core tile: with MATMUL_TENSOR_CORES they get
    the tile that "auto" picks without it (which depends on the GPU's multiprocessors:
    64 x 64 on an H100 here, 128 x 128 in the simulator), with a tensor-core MATMUL_TILE
    the 128 x 128 prefetching tile; and the kernel refuses float64 outright."""
    from qlnumba.gpu import matmul as mm
    monkeypatch.setattr(mm, "MATMUL_TENSOR_CORES", "off")
    without = mm.pick_tile(64, 64, 64, np.float64)
    monkeypatch.setattr(mm, "MATMUL_TENSOR_CORES", "tf32x3")
    assert mm.pick_tile(64, 64, 64, np.float32) == mm.TILES["128x128tf32x3"]
    assert mm.pick_tile(64, 64, 64, np.float64) == without
    assert not without.MMA
    monkeypatch.setattr(mm, "MATMUL_TENSOR_CORES", "off")
    monkeypatch.setattr(mm, "MATMUL_TILE", "128x128tf32")
    assert mm.pick_tile(64, 64, 64, np.float64) == mm.TILES["128x128pf"]
    assert mm.pick_tile(64, 64, 64, np.float32) == mm.TILES["128x128tf32"]
    with pytest.raises(ValueError, match="float32 only"):
        mm.matmul_kernel(np.dtype(np.float64), mm.TILES["128x128tf32"])


def test_register_caps_reach_the_compiler(monkeypatch):
    """A tile's REG becomes its kernel's ``max_registers`` on a GPU (scripts/ptx_check.py
    hands it to ptxas), and nothing in the simulator, which takes no such option."""
    from qlnumba.gpu import matmul as mm
    assert mm.tile_jit(mm.TILES["128x128tf32x3"]) == {}
    monkeypatch.setattr(mm, "SIM", False)
    assert mm.tile_jit(mm.TILES["128x128tf32x3w16"]) == {"max_registers": 128}
    assert mm.tile_jit(mm.TILES["128x128tf32x3"]) == {}
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        kernel = mm.matmul_kernel(np.dtype(np.float32), mm.TILES["128x128tf32x3w16"])
        assert kernel.targetoptions.get("max_registers") == 128


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
                    reason="calls device functions from Python, which only the simulator allows; "
                           "test_untested_slab_loads_equal_tested_bitwise checks the places on a card")
def test_slab_places_are_the_slots():
    """The prefetching and cp.async tiles' slab moves place value r of a thread's share
    (``slab_places``: a part of tid plus a part of r) where the plain tiles' slot_a and slot_b
    place value e = tid + r NT of the slab: for this run's tiles and the card's shapes (blocks
    of 256 and 512 threads; slabs of 8 and 16 k, 64 and 128 wide), both layouts of each operand."""
    from qlnumba.gpu import matmul as mm
    card = [mm.Tile(16, 16, 4, 4, 16, 1), mm.Tile(16, 16, 8, 8, 8, 1),
            mm.Tile(2, 4, 64, 32, 16, 1, 3), mm.Tile(2, 4, 64, 32, 8, 4, 3),
            mm.Tile(4, 4, 32, 32, 16, 1, 3, 128), mm.Tile(2, 4, 32, 32, 16, 1, 3, 128)]
    for tile in list(mm.TILES.values()) + card:
        place_a, place_b = mm.slab_places(tile)
        slot_a, slot_b = mm.tile_functions(np.float32, tile)[2:4]
        slab_a, slab_b, nt, la, lb = mm.slab_shares(tile)
        for place, slot, slab, count in ((place_a, slot_a, slab_a, la), (place_b, slot_b, slab_b, lb)):
            for layout in (1, 7):                         # the contiguous index first, or not
                got = [tuple(int(v) for v in place(tid, r, layout))
                       for r in range(count) for tid in range(nt) if tid + r * nt < slab]
                want = [tuple(slot(e, layout)) for e in range(slab)]
                assert got == want, (tile, layout)
    assert mm.mod_div(8, 256)(5, 3) == ((5 + 3 * 256) % 8, (5 + 3 * 256) // 8)
    with pytest.raises(ValueError, match="divides"):
        mm.mod_div(24, 256)


@pytest.mark.parametrize("plain", ["64x64", "128x128"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prefetch_tiles_equal_plain_bitwise(plain, dtype, monkeypatch):
    """The prefetching kernel adds the same products in the same order as the plain one
    of the same tile: equal to the last bit, over several slabs, both layouts of each
    operand (k contiguous, then m and n contiguous), ragged edges and a split k."""
    from qlnumba.gpu import matmul as mm
    cuda = mm.cuda
    rng = make_rng(68)
    M, N, Kd = 5, 7, 11
    A = rng.standard_normal((M, Kd)).astype(dtype)          # k contiguous: sak = 1
    Bm = rng.standard_normal((N, Kd)).astype(dtype)         # k contiguous: sbk = 1
    for Kd_, strides in ((Kd, (Kd, 1, 1, Kd)), (40, None)):
        if strides is None:                                  # m and n contiguous; long k: split
            A2 = rng.standard_normal((Kd_, M)).astype(dtype)
            B2 = rng.standard_normal((Kd_, N)).astype(dtype)
            args, strides = (A2, B2), (1, M, N, 1)
        else:
            args = (A, Bm)
        got = {}
        for tile in (plain, plain + "pf"):
            monkeypatch.setattr(mm, "MATMUL_TILE", tile)
            C = cuda.to_device(np.zeros((M, N), dtype))
            mm.matmul(C, cuda.to_device(args[0]), cuda.to_device(args[1]), M, N, Kd_, *strides)
            got[tile] = C.copy_to_host()
        assert np.array_equal(got[plain], got[plain + "pf"])


# (TY, TX, TM, TN, BK, PF, MMA): one warp of mma tiles, through registers or cp.async; the
# simulator's prefetching tiles; 16 threads and slabs of 8 values (some threads move none)
FAST_TILES = {"tf32x3": ((1, 1, 16, 8, 8, 1, 3), np.float32), "tf32x3-async": ((1, 1, 16, 8, 8, 2, 3), np.float32),
              "128x128pf": ("128x128pf", np.float64), "64x64pf": ("64x64pf", np.float32),
              "part-of-block": ((4, 4, 1, 1, 2, 1), np.float64)}


@pytest.mark.parametrize("case", FAST_TILES)
def test_untested_slab_loads_equal_tested_bitwise(case, monkeypatch):
    """``Tile.FAST``: the slabs wholly inside A, B and the chunk of k load without a test per
    value, from one base (``slab_mover``; the cp.async tiles' copier likewise).  The same tile
    with every slab tested (FAST = 0) makes the same product to the last bit, over interior and
    edge slabs alike: k contiguous, then m and n contiguous with k split into chunks."""
    from qlnumba.gpu import matmul as mm
    cuda = mm.cuda
    tile, dtype = FAST_TILES[case]
    fast = mm.TILES[tile] if isinstance(tile, str) else mm.Tile(*tile)
    assert fast.FAST == 1
    monkeypatch.setitem(mm.TILES, "fast", fast)
    monkeypatch.setitem(mm.TILES, "tested", fast._replace(FAST=0))
    _, _, NT, _, _ = mm.slab_shares(fast)
    assert (case == "part-of-block") == (fast.BK * fast.TN * fast.TX < NT)
    BM, BN, BK = fast.TM * fast.TY, fast.TN * fast.TX, fast.BK
    rng = make_rng(70)
    # one tile of C inside, the others at its edges; k: one slab inside, one at the end, then
    # two chunks of split_k's shortest (2 slabs in the simulator, 8 on a card)
    chunk = mm.shortest_chunk(fast)
    for M, N, Kd, k_inner in ((BM + 3, BN + 2, BK + BK // 2, True), (BM + 3, BN, 2 * chunk, False)):
        if k_inner:
            A, Bm, strides = rng.standard_normal((M, Kd)), rng.standard_normal((N, Kd)), (Kd, 1, 1, Kd)
        else:
            A, Bm, strides = rng.standard_normal((Kd, M)), rng.standard_normal((Kd, N)), (1, M, N, 1)
            assert mm.split_k(fast, M, N, Kd)[1:] == (2, chunk)
        got = {}
        for name in ("fast", "tested"):
            monkeypatch.setattr(mm, "MATMUL_TILE", name)
            C = cuda.to_device(np.zeros((M, N), dtype))
            mm.matmul(C, cuda.to_device(A.astype(dtype)), cuda.to_device(Bm.astype(dtype)), M, N, Kd,
                      *strides)
            got[name] = C.copy_to_host()
        assert np.array_equal(got["fast"], got["tested"]), (case, k_inner)
        want = (A.T if not k_inner else A) @ (Bm if not k_inner else Bm.T)
        np.testing.assert_allclose(got["fast"], want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="the simulator's own threads")
def test_simulator_watcher_yields_the_gil_once_patched():
    """qlnumba.gpu.get_cuda makes the simulator's block threads yield the GIL at each poll of
    the watcher (``yielding_simulator``); a second call wraps nothing twice."""
    import qlnumba.gpu as g
    from numba.cuda.simulator import kernel
    g.get_cuda()
    patched = kernel.BlockThread
    assert patched.yields and patched.__name__ == "YieldingBlockThread"
    g.yielding_simulator()
    assert kernel.BlockThread is patched
