"""Several threads give the serial results (outputs, states and gradients), with the
rows split ("rows") or the hidden units split ("units", spin barriers between steps)."""
import numba
import numpy as np
import pytest

from qlnumba import config
from qlnumba.kernels.recurrent_units import grad_span_steps
from qlnumba.kernels.sync import STRIDE, barrier
from helpers import assert_close, make_rng, random_state
from test_recurrent import KIND_IDS, KINDS, make_layer, randomize


def run_layer(layer, x, lengths, state, dout, dstate):
    out, final = layer.forward(x, lengths, {k: v.copy() for k, v in state.items()})
    dx, grads = layer.backward(dout, dstate)
    return out, final, dx, grads, layer.dstate0


def assert_same_results(got, want):
    (o1, f1, dx1, g1, s1), (o2, f2, dx2, g2, s2) = want, got
    assert_close(o2, o1, 1e-12, 1e-13, "out")
    assert_close(dx2, dx1, 1e-12, 1e-13, "dx")
    for k in f1:
        assert_close(f2[k], f1[k], 1e-12, 1e-13, f"final {k}")
    for k in s1:
        assert_close(s2[k], s1[k], 1e-12, 1e-13, f"dstate0 {k}")
    for k in g1:
        assert_close(g2[k], g1[k], 1e-11, 1e-12, f"grad {k}")


def random_problem(kind, B, T, E, H, K, seed):
    rng = make_rng(seed)
    layer = make_layer(kind, E, H, num_layers=2, bidirectional=True, K=K)
    randomize(layer, rng)
    x = rng.standard_normal((B, T, E))
    lengths = rng.integers(1, T + 1, B)
    state = random_state(layer, B, rng)
    dout = rng.standard_normal((B, T, 2 * H))
    dstate = {k: rng.standard_normal(v.shape) for k, v in state.items() if k != "n"}
    return layer, (x, lengths, state, dout, dstate)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_split_rows_equal_serial(kind, threads):
    B = 7
    layer, problem = random_problem(kind, B, 9, 3, 4, 3, seed=50)
    threads(1)
    serial = run_layer(layer, *problem)
    threads(3, "rows")
    assert len(config.row_blocks(B)) == 4
    assert_same_results(run_layer(layer, *problem), serial)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("kind", KINDS[:4], ids=KIND_IDS[:4])
def test_split_units_over_several_spans_equal_serial(kind, threads):
    """Long enough for several spans of steps (B = 24: spans of 10 steps, the last one
    partial), so backward's per-span products and their double buffer are exercised."""
    B, T, H = 24, 37, 12
    assert T > 3 * grad_span_steps(B, 4 * H)
    layer, problem = random_problem(kind, B, T, 5, H, 5, seed=60)
    threads(1)
    serial = run_layer(layer, *problem)
    threads(2, "units")
    assert_same_results(run_layer(layer, *problem), serial)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("B,H", [(6, 4), (6, 19), (6, 40), (1, 5)])   # units 2 + 2, uneven
@pytest.mark.parametrize("kind", KINDS[:4], ids=KIND_IDS[:4])          # 10 + 9, 16 + 24; 1 row
def test_split_units_equal_serial(kind, B, H, threads):
    layer, problem = random_problem(kind, B, 13, 4, H, 4, seed=51 + H)
    threads(1)
    serial = run_layer(layer, *problem)
    threads(2, "units")
    assert config.unit_blocks(H) is not None and len(config.unit_blocks(H)) == 3
    assert_same_results(run_layer(layer, *problem), serial)
    # inference (nothing saved) gives the same outputs and states
    out, final = layer.forward(problem[0], problem[1], problem[2], need_grad=False)
    assert_close(out, serial[0], 1e-12, 1e-13, "out (inference)")
    for k in final:
        assert_close(final[k], serial[1][k], 1e-12, 1e-13, f"final {k} (inference)")


def test_unit_blocks(threads):
    threads(2, "units")
    if numba.get_num_threads() >= 2:
        assert config.unit_blocks(256).tolist() == [0, 128, 256]
        assert config.unit_blocks(40).tolist() == [0, 16, 40]      # multiples of 8 where possible
        assert config.unit_blocks(5).tolist() == [0, 2, 5]
        assert config.unit_blocks(1) is None                       # fewer units than threads
    threads(2, "rows")
    assert config.unit_blocks(256) is None
    threads(1, "units")                           # one part: the unit-major kernels, all units
    assert config.unit_blocks(256).tolist() == [0, 256]
    threads(1, "rows")
    assert config.unit_blocks(256) is None


def test_units_need_a_layer_that_runs_threads_together(threads, monkeypatch):
    """Under a layer that may run prange chunks one after another (TBB), no spin barriers."""
    threads(2, "units")
    monkeypatch.setattr(config, "_layer_ok", False)
    assert config.unit_blocks(256) is None


@numba.njit(parallel=True)
def _barrier_rounds(N, seen):
    P = seen.shape[0]
    flags = np.zeros(P * STRIDE, dtype=np.int64)
    box = np.zeros(P, dtype=np.int64)
    for p in numba.prange(P):
        for s in range(N):
            box[p] = s
            barrier(flags, p, P, 2 * s + 1)
            seen[p, s] = box[(p + 1) % P]      # the other thread's write of this round
            barrier(flags, p, P, 2 * s + 2)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_barrier_orders_writes_between_threads():
    seen = np.full((2, 5000), -1, dtype=np.int64)
    _barrier_rounds(5000, seen)
    assert (seen == np.arange(5000)).all()


def test_row_blocks_and_thread_setting(threads):
    threads(2)
    assert config.row_blocks(7).tolist() == [0, 4, 7]
    assert config.row_blocks(1).tolist() == [0, 1]          # never an empty block
    for bad in (0, None, 2.5, [2], "2"):                  # None, [2]: were TypeErrors
        with pytest.raises(ValueError, match="thread count must be an integer >= 1"):
            config.set_num_threads(bad)
    with pytest.raises(ValueError, match="partition"):
        config.set_num_threads(2, "columns")


def test_set_num_threads_pins_the_blas_numba_calls():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before, numba_before = config.get_num_threads(), numba.get_num_threads()
    try:
        config.set_num_threads(1)
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert any("scipy" in i["filepath"] for i in blas)
        assert all(i["num_threads"] == 1 for i in blas)
    finally:                   # Numba's count too: unit_blocks reads it (later tests split units)
        config._threads = before
        config._partition = "units"
        numba.set_num_threads(numba_before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("kind", [(True, True), (False, False)], ids=["ql-lstm", "lstm"])
def test_split_units_float32_close_to_float64(kind, threads):
    """The float32 training path (rational tanh, several spans) against float64 serial."""
    B, T, E, H = 20, 45, 6, 16
    rng = make_rng(61)
    layer64 = make_layer(kind, E, H, K=4)
    randomize(layer64, rng, scale=0.4)
    layer32 = make_layer(kind, E, H, K=4, dtype=np.float32)
    for name, p in layer64.params.items():
        layer32.params[name][...] = p
    x = rng.standard_normal((B, T, E))
    lengths = rng.integers(1, T + 1, B)
    dout = rng.standard_normal((B, T, H))
    threads(1)
    out64, _ = layer64.forward(x, lengths)
    dx64, g64 = layer64.backward(dout)
    threads(2, "units")
    out32, _ = layer32.forward(x.astype(np.float32), lengths)
    dx32, g32 = layer32.backward(dout.astype(np.float32))
    assert_close(out32, out64, 1e-4, 1e-5, "out")
    assert_close(dx32, dx64, 1e-4, 1e-4, "dx")
    for name in g64:
        scale = np.abs(g64[name]).max()
        assert_close(g32[name], g64[name], 1e-4, 1e-4 * scale, f"grad {name}")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_layers_called_from_two_python_threads_take_turns_at_the_spin_barriers():
    """The kernels release the GIL, so two Python threads (a server scoring requests, two
    fits side by side) can run them at once.  Two spin-barrier kernels side by side put 4
    spinning threads on the 2 cores of the CI machine: the two trainers below took 24x as
    long as one after the other.  config.threads_region makes kernels on several threads
    take turns where they would need more threads than there are (1.6-2.7x: the serial
    kernels of a step, its embedding, head and dropout, still run side by side).  Results must
    be those of the trainers run alone; the time, well under that collapse."""
    import threading
    import time

    import qlnumba
    from qlnumba.model import make_trainer
    config.set_num_threads(2)              # (BLAS on one thread: its own spinning threads kept out)
    rng = make_rng(37)
    ids, lengths = rng.integers(2, 500, (32, 128)), rng.integers(100, 129, 32)
    y = rng.integers(0, 2, 32)

    def trainer():
        model = qlnumba.SequenceClassifier(500, 32, 64, 2, kind="ql", block_size=4,
                                           dtype=np.float32, seed=0)
        return model, make_trainer(model, qlnumba.Adam(model.params))

    def train(t, steps):
        for _ in range(steps):
            t.step(ids, lengths, y)

    def one_after_other(pair, steps):
        start = time.perf_counter()
        for _, t in pair:
            train(t, steps)
        return time.perf_counter() - start

    def side_by_side(pair, steps):
        runs = [threading.Thread(target=train, args=(t, steps)) for _, t in pair]
        start = time.perf_counter()
        for run in runs:
            run.start()
        for run in runs:
            run.join()
        return time.perf_counter() - start

    alone, side = [trainer() for _ in range(2)], [trainer() for _ in range(2)]
    one_after_other(alone, 1)                             # compiles
    one_after_other(side, 1)
    times = [(one_after_other(alone, 8), side_by_side(side, 8)) for _ in range(3)]
    for (m1, _), (m2, _) in zip(alone, side):             # the same 25 steps each
        for k in m1.params:
            np.testing.assert_array_equal(m2.params[k], m1.params[k], err_msg=k)
    print("8 steps each, one after the other / side by side (s):",
          ", ".join(f"{a:.3f} / {b:.3f}" for a, b in times))
    best_alone, best_side = min(a for a, _ in times), min(b for _, b in times)   # least noise
    assert best_side < 5 * best_alone


def test_threads_region_hands_out_numba_threads(monkeypatch):
    """Kernels on 2 threads of 2 take turns; two on 1 thread each, or on 2 of 4, run side by
    side; more parts than threads wait for all of them (never forever)."""
    import threading
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)

    def overlap(parts_a, parts_b):
        inside, release = threading.Event(), threading.Event()

        def hold():
            with config.threads_region(parts_a):
                inside.set()
                release.wait(5)
        holder = threading.Thread(target=hold)
        holder.start()
        assert inside.wait(5)
        entered = threading.Event()

        def enter():
            with config.threads_region(parts_b):
                entered.set()
        other = threading.Thread(target=enter)
        other.start()
        side_by_side = entered.wait(0.3)          # while the first still holds its threads
        release.set()
        holder.join()
        other.join(5)
        assert entered.is_set() and not other.is_alive() and config._budget._busy == 0
        return side_by_side

    assert not overlap(2, 2)
    assert not overlap(2, 3)                      # 3 parts of 2 threads: both of them
    assert overlap(1, 1)                          # serial kernels never wait
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 4)
    assert overlap(2, 2)
    assert not overlap(3, 2)
