"""Row blocks on several threads give the serial results: outputs, states and gradients."""
import pytest

from qlnumba import config
from helpers import assert_close, make_rng, random_state
from test_recurrent import KIND_IDS, KINDS, make_layer, randomize


@pytest.fixture
def three_blocks(monkeypatch):
    """Split every batch into 3 row blocks (prange runs them on whatever threads exist)."""
    def use(n):
        monkeypatch.setattr(config, "_threads", n)
    return use


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_split_rows_equal_serial(kind, three_blocks):
    rng = make_rng(50)
    B, T, E, H = 7, 9, 3, 4
    layer = make_layer(kind, E, H, num_layers=2, bidirectional=True, K=3)
    randomize(layer, rng)
    x = rng.standard_normal((B, T, E))
    lengths = rng.integers(1, T + 1, B)
    state = random_state(layer, B, rng)
    dout = rng.standard_normal((B, T, 2 * H))
    dstate = {k: rng.standard_normal(v.shape) for k, v in state.items() if k != "n"}
    results = []
    for blocks in (1, 3):
        three_blocks(blocks)
        assert len(config.row_blocks(B)) == blocks + 1
        out, final = layer.forward(x, lengths, state)
        dx, grads = layer.backward(dout, dstate)
        results.append((out, final, dx, grads, layer.dstate0))
    (o1, f1, dx1, g1, s1), (o3, f3, dx3, g3, s3) = results
    assert_close(o3, o1, 1e-12, 1e-13, "out")
    assert_close(dx3, dx1, 1e-12, 1e-13, "dx")
    for k in f1:
        assert_close(f3[k], f1[k], 1e-12, 1e-13, f"final {k}")
    for k in s1:
        assert_close(s3[k], s1[k], 1e-12, 1e-13, f"dstate0 {k}")
    for k in g1:
        assert_close(g3[k], g1[k], 1e-11, 1e-12, f"grad {k}")


def test_row_blocks_and_thread_setting(three_blocks):
    three_blocks(2)
    assert config.row_blocks(7).tolist() == [0, 4, 7]
    assert config.row_blocks(1).tolist() == [0, 1]          # never an empty block
    with pytest.raises(ValueError, match="thread count"):
        config.set_num_threads(0)


def test_set_num_threads_pins_the_blas_numba_calls():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = config.get_num_threads()
    try:
        config.set_num_threads(1)
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert any("scipy" in i["filepath"] for i in blas)
        assert all(i["num_threads"] == 1 for i in blas)
    finally:
        config._threads = before
