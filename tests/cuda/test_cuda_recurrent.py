"""The GPU recurrent layer equals the CPU one: outputs, states and every gradient.

Tiny shapes: in the simulator each launch costs about a millisecond per thread."""
import os

import numpy as np
import pytest

import qlnumba
from helpers import assert_close, make_rng, random_state, write_jsonl_gz

SWITCHES = [(False, False), (True, False), (False, True), (True, True)]
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def assert_layers_agree(got, want, tol):
    """(out, final state, dx, grads, dstate0) of the GPU layer against the CPU layer's."""
    (o1, f1, dx1, g1, s1), (o2, f2, dx2, g2, s2) = want, got
    assert_close(o2, o1, tol, tol, "out")
    assert_close(dx2, dx1, tol, tol, "dx")
    for k in f1:
        assert_close(f2[k], f1[k], tol, tol, f"final {k}")
    for k in s1:
        assert_close(s2[k], s1[k], tol, tol, f"dstate0 {k}")
    for k in g1:
        assert_close(g2[k], g1[k], tol, tol, f"grad {k}")


def assert_trained_alike(gpu, gpu_opt, cpu, cpu_opt, steps):
    """A model trained on the device (synced back) has the CPU one's parameters and Adam state."""
    assert gpu_opt.t == cpu_opt.t == steps
    for k in cpu.params:
        assert_close(gpu.params[k], cpu.params[k], 1e-9, 1e-9, k)
        assert_close(gpu_opt.m[k], cpu_opt.m[k], 1e-9, 1e-9, "m " + k)
        assert_close(gpu_opt.v[k], cpu_opt.v[k], 1e-9, 1e-9, "v " + k)


def forward_backward(layer, x, lengths, dout, state=None, dstate=None):
    """(out, final state, dx, grads, dstate0) of one forward and one backward call."""
    out, final = layer.forward(x, lengths, state)
    dx, grads = layer.backward(dout, dstate)
    return out, final, dx, grads, layer.dstate0


@pytest.mark.parametrize("path", ["persistent", "simple"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("psug,hgr", SWITCHES, ids=["lstm", "psug", "hgr", "ql"])
def test_cuda_layer_equals_cpu(psug, hgr, dtype, tol, path):
    """Both GPU step loops: the persistent cooperative kernel (in the simulator: one block,
    grid-stride loops) and the simple per-step launches it is checked against."""
    rng = make_rng(60)
    B, T, E, H = 3, 5, 2, 3
    kw = dict(num_layers=1, bidirectional=True, psug=psug, hgr=hgr, block_size=2, dtype=dtype, seed=4)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    for row in gpu._cells:
        for cell in row:
            cell.path = path
    for name, p in cpu.params.items():
        p[...] = 0.7 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.array([5, 2, 4])
    state = random_state(cpu, B, rng)
    dout = rng.standard_normal((B, T, 2 * H)).astype(dtype)
    dstate = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in state.items() if k != "n"}
    results = [forward_backward(layer, x, lengths, dout, state, dstate) for layer in (cpu, gpu)]
    assert_layers_agree(results[1], results[0], tol)


def poison_workspaces(layer):
    """NaN into every float buffer of the GPU layer's cells' workspaces."""
    for row in layer._cells:
        for cell in row:
            for buf in cell.workspace.bufs.values():
                if buf.dtype.kind == "f":
                    buf.copy_to_device(np.full(buf.shape, np.nan, buf.dtype))


def test_cuda_layer_reads_only_what_it_wrote():
    """Nothing clears out, HPREV or δz: the step loops write zeros at each row's padding
    steps up to the longest row, and clear_tail the steps after it.  With every workspace
    buffer NaN after a first call, a second call with shorter rows (the longest below T,
    padding steps in both directions) still equals the CPU layer.  QL-LSTM, persistent loops
    (the simple loops share their cells and host code)."""
    rng = make_rng(66)
    B, T, E, H = 3, 6, 2, 3
    kw = dict(bidirectional=True, block_size=2, dtype=np.float64, seed=5)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    x = rng.standard_normal((B, T, E))
    dout = rng.standard_normal((B, T, 2 * H))
    gpu.forward(x, np.full(B, T))
    gpu.backward(dout)
    poison_workspaces(gpu)
    lengths = np.array([3, 1, 4])
    results = [forward_backward(layer, x, lengths, dout) for layer in (cpu, gpu)]
    assert not np.isnan(results[1][0]).any()
    assert_layers_agree(results[1], results[0], 1e-10)


@pytest.mark.parametrize("psug,hgr,cores,tol", [(True, True, "tf32x3", 5e-5),
                                                 (False, False, "tf32", 5e-3)],
                         ids=["ql-tf32x3", "lstm-tf32"])
def test_tensor_core_products_layer_equals_cpu(psug, hgr, cores, tol, monkeypatch):
    """float32 layers whose products before and after the step loop run on tensor cores
    (MATMUL_TENSOR_CORES): with three passes within float32's error of the CPU (the
    simulator: 2.4e-7; one pass is off by 4.6e-4 (LSTM) to 9.1e-4 (QL-LSTM) there, so this
    tolerance, with room for a card's order of additions, still tells them apart); with
    one pass (TF32 inputs) within TF32's error."""
    from qlnumba.gpu import matmul as mm
    monkeypatch.setattr(mm, "MATMUL_TENSOR_CORES", cores)
    rng = make_rng(63)
    B, T, E, H = 3, 5, 2, 3
    kw = dict(num_layers=1, psug=psug, hgr=hgr, block_size=2, dtype=np.float32, seed=4)
    layers = [qlnumba.QLLSTM(E, H, **kw), qlnumba.QLLSTM(E, H, device="cuda", **kw)]
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    lengths = np.array([5, 2, 4])
    dout = rng.standard_normal((B, T, H)).astype(np.float32)
    results = [forward_backward(layer, x, lengths, dout) for layer in layers]
    assert_layers_agree(results[1], results[0], tol)


WIDE_SETTINGS = [(1, 2, 16, 4), (1, 4, 16, 4), (2, 4, 16, 4), (3, 4, 16, 4), (2, 4, 32, 4)]


@pytest.mark.parametrize("psug,hgr,row_groups,item_rows,loads,item_cols",
                         [(False, False, *w) for w in WIDE_SETTINGS]
                         + [(True, True, *w) for w in WIDE_SETTINGS]
                         + [(False, False, 1, 2, 16, 8), (True, True, 2, 4, 16, 8),
                            (True, True, 1, 2, 0, 8), (False, False, 1, 1, 4, 8), (True, True, 2, 1, 16, 8),
                            # the twentieth session's candidates for defaults, timed on a card: items
                            # of 4 columns with no passes, of 4 rows and of 1 row
                            (True, True, 2, 4, 0, 4), (True, True, 2, 1, 0, 4), (False, False, 1, 1, 0, 4),
                            # QL-LSTM's default where parts are not narrow (the large shape's): the
                            # default-layer tests' QL-LSTM parts are narrow (H = 8: 3 units)
                            (True, True, 2, 2, 16, 8)],
                         ids=[f"{kind}-groups{g}-rows{r}-loads{n}" for kind in ("lstm", "ql")
                              for g, r, n, _ in WIDE_SETTINGS]
                         + ["lstm-2x8", "ql-4x8-groups2", "ql-2x8-loads0", "lstm-1x8", "ql-1x8-groups2",
                            "ql-4x4-loads0-groups2", "ql-1x4-loads0-groups2", "lstm-1x4-loads0", "ql-2x8-groups2"])
def test_persistent_wide_layer_equals_cpu(psug, hgr, row_groups, item_rows, loads, item_cols,
                                          monkeypatch):
    """H = 30: every part holds several units and team_dot's passes run (eight k for items
    of 2 rows, four for 4; a team has 4 lanes in the simulator, and the tiny shapes above
    only reach its remainder loop); K = 1 closes a block at every step.  Two row groups:
    parts own rows [0, 2) or [2, 3) as well as units; three: one row each (a group shorter
    than an item, as many row groups make on a GPU).  Items of 2 or 4 rows (more than a
    group has: rows repeat), and of 1 row (with 4 loads: passes of four k).  32 loads per
    pass: passes of eight k; 0: no passes, every k through the one-k loop (also with items of
    4 columns, of 4 rows or 1: the settings timed for the defaults in the twentieth
    session).  Items of 8 columns: a part's 10 units pad to 16 columns (LSTM backward,
    QL-LSTM, V_s and V_m), LSTM's forward has 40; ql-2x8-groups2 is QL-LSTM's default where
    parts are not narrow."""
    from qlnumba.gpu import persistent as ps
    monkeypatch.setattr(ps, "TEAM_LOADS", loads)
    rng = make_rng(63)
    B, T, E, H = 3, 2, 2, 30
    kw = dict(psug=psug, hgr=hgr, block_size=1, dtype=np.float64, seed=7)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    cell = gpu._cells[0][0]
    cell.row_groups, cell.item_rows, cell.item_cols = row_groups, item_rows, item_cols
    plan = cell._plan(B, cell.cpu._p("U", 2).shape[0])
    assert plan is not None
    assert (plan.rgroups, plan.item_rows, plan.item_cols) == (row_groups, item_rows, item_cols)
    for name, p in cpu.params.items():
        p[...] = 0.5 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E))
    lengths = np.array([2, 1, 2])
    dout = rng.standard_normal((B, T, H))
    results = [forward_backward(layer, x, lengths, dout) for layer in (cpu, gpu)]
    assert_layers_agree(results[1], results[0], 1e-10)


@pytest.mark.parametrize("psug,hgr,item_cols", [(False, False, 4), (True, True, 4), (False, False, 8)],
                         ids=["lstm", "ql", "lstm-8-columns"])
def test_persistent_uneven_row_groups_equal_cpu(psug, hgr, item_cols, monkeypatch):
    """Two row groups of 3 and 2 rows (the second part's rows start at r0 = 3), ragged
    lengths, 2 loads per pass (one k per pass for items of 2 rows), items of 4 and of 8
    columns: every output, state and gradient equals the CPU layer's.  (The unstaged half of
    the staged-rows test, kept when staging was taken out.)"""
    from qlnumba.gpu import persistent as ps
    monkeypatch.setattr(ps, "TEAM_LOADS", 2)
    B, row_groups = 5, 2
    rng = make_rng(67)
    T, E, H = 2, 2, 10
    kw = dict(psug=psug, hgr=hgr, block_size=2, dtype=np.float64, seed=9)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    for p in cpu.params.values():
        p[...] = 0.5 * rng.standard_normal(p.shape)
    x = rng.standard_normal((B, T, E))
    lengths = rng.integers(1, T + 1, B)
    dout = rng.standard_normal((B, T, H))
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    for name, p in cpu.params.items():
        gpu.params[name][...] = p
    cell = gpu._cells[0][0]
    cell.row_groups, cell.item_rows, cell.item_cols = row_groups, 2, item_cols
    plan = cell._plan(B, cell.cpu._p("U", 2).shape[0])
    assert (plan.rgroups, plan.item_rows, plan.item_cols) == (row_groups, 2, item_cols)
    results = [forward_backward(layer, x, lengths, dout) for layer in (cpu, gpu)]
    assert_layers_agree(results[1], results[0], 1e-10)


@pytest.mark.parametrize("psug,hgr,H,row_groups,dtype,tol",
                         [(True, True, 10, 2, np.float64, 1e-10), (False, False, 10, 1, np.float64, 1e-10),
                          (True, True, 10, 1, np.float32, 2e-4), (True, True, 1, 1, np.float64, 1e-10)],
                         ids=["ql-groups2", "lstm", "ql-float32", "ql-one-part"])
def test_spin_barrier_layer_equals_cpu(psug, hgr, H, row_groups, dtype, tol, monkeypatch):
    """GRID_BARRIER "spin" (``barrier.blocks_barrier`` in place of grid.sync()): every output,
    state and gradient of two stacked layers equals the CPU's (each layer's BPTT meets the
    counters its forward left; K = 2 closes blocks, so BPTT takes both of its barriers), and
    after the calls each layer's counters are whole barriers (multiples of FLIP).  The
    simulator runs one block: with several parts it waits for all the grid's blocks (its
    own); with one part (H = 1) it takes the GPU's branch, its row group's counter."""
    from qlnumba.gpu import barrier
    from qlnumba.gpu import persistent as ps
    monkeypatch.setattr(ps, "GRID_BARRIER", "spin")
    rng = make_rng(71)
    B, T, E = 3, 4, 2
    kw = dict(num_layers=2, psug=psug, hgr=hgr, block_size=2, dtype=dtype, seed=11)
    cpu = qlnumba.QLLSTM(E, H, **kw)
    gpu = qlnumba.QLLSTM(E, H, device="cuda", **kw)
    for row in gpu._cells:
        row[0].row_groups = row_groups
    plan = gpu._cells[0][0]._plan(B, gpu._cells[0][0].cpu._p("U", 2).shape[0])
    assert (plan.rgroups, plan.ugroups * plan.rgroups == 1) == (row_groups, H == 1)
    for name, p in cpu.params.items():
        p[...] = 0.5 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.array([4, 1, 3])
    dout = rng.standard_normal((B, T, H)).astype(dtype)
    results = [forward_backward(layer, x, lengths, dout) for layer in (cpu, gpu)]
    assert_layers_agree(results[1], results[0], tol)
    for row in gpu._cells:
        counters = row[0].cache["d_bar"].copy_to_host()
        assert counters.size == plan.rgroups * barrier.SLOT
        assert np.all(counters % barrier.FLIP == 0) and counters.any(), counters


def test_barrier_counter_flips_at_the_last_arrival():
    """The counting of ``barrier.blocks_barrier``, with its simulator stand-in for the atomic
    add, blocks arriving one after another in every order (the master anywhere among them)
    over several barriers: the FLIP bit each block waits on changes exactly when the last
    block of the set arrives, and the counter is then a multiple of FLIP again."""
    from itertools import permutations

    from qlnumba.gpu.barrier import FLIP, arrive, poll
    for n in range(1, 5):
        for order in permutations(range(n)):
            bar = np.zeros(1, np.int64)
            for _ in range(3):
                olds = []
                for i, block in enumerate(order):
                    olds.append(arrive(bar, 0, FLIP - (n - 1) if block == 0 else 1))
                    released = [(poll(bar, 0) ^ old) & FLIP != 0 for old in olds]
                    assert released == [i == n - 1] * len(olds), (n, order, i)
                assert poll(bar, 0) % FLIP == 0


def test_persistent_plan_defaults_and_checks(monkeypatch):
    """Two row groups from 16 rows up, items of 8 columns and 2 rows; with 4 columns, items
    of 4 rows where a group has 4; narrow parts (the forward's G/H x units columns at most
    4) items of 1 row x 4 columns unless told otherwise; bad item rows and columns are
    refused; no plan past the loops' 32-bit indices.  How many units a part holds depends
    on the machine (the simulator's plan has 3 unit groups, a GPU's one per multiprocessor
    and row group), so the expected items follow the plan's own unit groups; the shapes
    are chosen so that each branch is taken in the simulator (H = 30: parts of 10 units,
    H = 8: 3, H = 3: 1) and on an H100 (H = 512: 8 units, H = 256: 4)."""
    from qlnumba.gpu.persistent import persistent_plan
    taken = set()
    for B, H, G, itemsize in ((32, 30, 30, 8), (3, 30, 30, 8), (32, 8, 8, 8), (3, 8, 8, 8), (32, 3, 12, 8),
                              (32, 8, 32, 8), (32, 256, 256, 4), (32, 512, 512, 4), (32, 256, 1024, 4)):
        plan = persistent_plan(B, H, G, itemsize, G == H)
        if plan is None:                                 # U's slices past shared memory
            continue
        units = -(-H // plan.ugroups)                    # exact for these shapes
        narrow = (G // H) * units <= 4
        taken.add(narrow)
        assert plan.rgroups == (2 if B >= 16 else 1)
        assert (plan.item_rows, plan.item_cols) == ((1, 4) if narrow else (2, 8)), (B, H, G, units)
    assert taken == {False, True}
    assert persistent_plan(32, 8, 8, 8, True, item_rows=2).item_cols == 4
    assert persistent_plan(32, 8, 8, 8, True, item_cols=8).item_rows == 2
    narrow = persistent_plan(32, 30, 30, 8, True, item_cols=4)
    assert (narrow.item_rows, narrow.item_cols) == (4, 4)
    assert persistent_plan(3, 30, 30, 8, True, item_cols=4).item_rows == 2
    with pytest.raises(ValueError, match="item_cols"):
        persistent_plan(32, 8, 8, 8, True, item_cols=6)
    assert persistent_plan(32, 8, 32, 8, False, row_groups=1, item_rows=2).item_rows == 2
    assert persistent_plan(32, 8, 8, 8, True, item_rows=1).item_rows == 1
    with pytest.raises(ValueError, match="item_rows must be 1, 2 or 4"):
        persistent_plan(32, 8, 8, 8, True, item_rows=3)
    # the loops' index arithmetic is 32-bit: past it, the per-step path
    assert persistent_plan(2 ** 20, 512, 4 * 512, 4, False) is None
    from qlnumba.gpu.persistent import persistent_kernels
    for loads in (6, -4):
        with pytest.raises(ValueError, match="0 or a multiple of its item rows"):
            persistent_kernels(np.dtype(np.float32), 4, loads, 4)
    with pytest.raises(ValueError, match="item_cols"):
        persistent_kernels(np.dtype(np.float32), 4, 16, 16)
    with pytest.raises(ValueError, match="grid barrier must be one of"):
        persistent_kernels(np.dtype(np.float32), 2, 16, 8, "atomic")
    from qlnumba.gpu import persistent as ps
    monkeypatch.setattr(ps, "ITEM_COLS", 8)              # the module's setting holds for narrow parts too
    assert (persistent_plan(32, 8, 8, 8, True).item_rows, persistent_plan(32, 8, 8, 8, True).item_cols) == (2, 8)


def test_device_argument_is_checked():
    with pytest.raises(ValueError, match="device"):
        qlnumba.QLLSTM(2, 3, device="tpu")
    from qlnumba.gpu.recurrent import CudaQLCell
    with pytest.raises(ValueError, match="path"):
        CudaQLCell(qlnumba.QLLSTM(2, 3)._cells[0][0], path="fast")


def test_cuda_model_equals_cpu_model():
    """A whole classifier (embedding, QL-LSTM on the device, head): the same loss and gradients."""
    rng = make_rng(61)
    kw = dict(embed_dim=2, hidden_size=3, kind="ql", block_size=2, dtype=np.float64, seed=5)
    cpu = qlnumba.SequenceClassifier(9, **kw)
    gpu = qlnumba.SequenceClassifier(9, device="cuda", **kw)
    ids = rng.integers(1, 9, (2, 4))
    lengths = np.array([4, 3])
    targets = np.array([1, 0])
    loss_c, _ = cpu.forward(ids, lengths, targets)
    loss_g, _ = gpu.forward(ids, lengths, targets)
    assert abs(loss_c - loss_g) < 1e-10
    gc, gg = cpu.backward(), gpu.backward()
    for k in gc:
        assert_close(gg[k], gc[k], 1e-10, 1e-10, k)
    with pytest.raises(ValueError, match="device"):
        qlnumba.SequenceClassifier(9, kind="gru", device="gpu")


def test_cuda_feature_vector_model_equals_cpu_model():
    """input_size instead of vocab_size: x goes straight to the device layer; CudaTrainer
    trains such a model as the CPU loop does (input dropout on x, no embedding)."""
    rng = make_rng(62)
    kw = dict(input_size=2, hidden_size=3, kind="ql", block_size=2, dtype=np.float64, seed=5)
    cpu = qlnumba.SequenceClassifier(**kw)
    gpu = qlnumba.SequenceClassifier(device="cuda", **kw)
    x = rng.standard_normal((2, 4, 2))
    lengths, targets = np.array([4, 3]), np.array([1, 0])
    loss_c, _ = cpu.forward(x, lengths, targets)
    loss_g, _ = gpu.forward(x, lengths, targets)
    assert abs(loss_c - loss_g) < 1e-10
    gc, gg = cpu.backward(), gpu.backward()
    for k in gc:
        assert_close(gg[k], gc[k], 1e-10, 1e-10, k)
    from qlnumba.gpu.model import CudaTrainer
    kw.update(embed_dropout=0.3, head_dropout=0.2)
    cpu, gpu = qlnumba.SequenceClassifier(**kw), qlnumba.SequenceClassifier(device="cuda", **kw)
    cpu_opt, gpu_opt = qlnumba.Adam(cpu.params, lr=0.05), qlnumba.Adam(gpu.params, lr=0.05)
    trainer = CudaTrainer(gpu, gpu_opt)
    cpu_rng, gpu_rng = np.random.default_rng(3), np.random.default_rng(3)
    for lengths in ([4, 3], [2, 4]):
        x_before = x.copy()
        loss_c, probs_c = cpu.forward(x, np.array(lengths), targets, rng=cpu_rng)
        cpu_opt.step(cpu.backward())
        loss_g, probs_g = trainer.step(x, np.array(lengths), targets, rng=gpu_rng)
        assert abs(loss_g - loss_c) < 1e-10 and np.array_equal(x, x_before)
        assert_close(probs_g, probs_c, 1e-10, 1e-10, "probs")
    trainer.sync_to_host()
    assert_trained_alike(gpu, gpu_opt, cpu, cpu_opt, steps=2)
    with pytest.raises(ValueError, match="x must"):
        trainer.step(x.astype(np.float32), lengths, targets)


@pytest.mark.parametrize("path", ["persistent", "simple"])
@pytest.mark.parametrize("dtype,tol,cores,dirs", [(np.float64, 1e-10, "off", 2), (np.float32, 2e-4, "off", 2),
                                                  (np.float32, 2e-4, "tf32x3", 1)])
def test_cuda_gru_equals_cpu(dtype, tol, cores, dirs, path, monkeypatch):
    """GRU on both step loops, both directions, ragged lengths, a carried state and its
    gradient.  The products x W^T and the weight gradients (and the simple path's per-step
    ones) are ``matmul`` launches: with the float32 tiles and with the library's default
    tensor-core ones (tf32x3, one direction: the simulator's mma stand-in is slow, and its
    other tests take the float32 tiles unless they ask)."""
    from qlnumba.gpu import matmul as mm
    monkeypatch.setattr(mm, "MATMUL_TENSOR_CORES", cores)
    rng = make_rng(62)
    B, T, E, H = 3, 5, 2, 3
    kw = dict(num_layers=1, bidirectional=dirs == 2, dtype=dtype, seed=6)
    cpu = qlnumba.GRU(E, H, **kw)
    gpu = qlnumba.GRU(E, H, device="cuda", **kw)
    for cell in gpu._cells[0]:
        cell.path = path
    for name, p in cpu.params.items():
        p[...] = 0.7 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    x = rng.standard_normal((B, T, E)).astype(dtype)
    lengths = np.array([5, 2, 4])
    state = {"h": (0.5 * rng.standard_normal((dirs, B, H))).astype(dtype)}
    dout = rng.standard_normal((B, T, dirs * H)).astype(dtype)
    dstate = {"h": rng.standard_normal((dirs, B, H)).astype(dtype)}
    results = []
    for layer in (cpu, gpu):
        out, final = layer.forward(x, lengths, state)
        dx, grads = layer.backward(dout, dstate)
        results.append((out, final["h"], dx, grads, layer.dstate0["h"]))
    (o1, f1, dx1, g1, s1), (o2, f2, dx2, g2, s2) = results
    for got, want, what in ((o2, o1, "out"), (f2, f1, "final h"), (dx2, dx1, "dx"), (s2, s1, "dstate0")):
        assert_close(got, want, tol, tol, what)
    for k in g1:
        assert_close(g2[k], g1[k], tol, tol, f"grad {k}")


GRU_SETTINGS = [  # row groups, item rows, loads, item cols, barrier, H, B
    (1, 2, 16, 4, "cg", 30, 3), (2, 4, 16, 8, "cg", 30, 3), (3, 1, 4, 4, "cg", 30, 3),
    (2, 2, 0, 8, "cg", 10, 5), (2, 2, 2, 4, "spin", 10, 5), (1, 1, 16, 4, "spin", 1, 3)]


@pytest.mark.parametrize("row_groups,item_rows,loads,item_cols,barrier,H,B", GRU_SETTINGS,
                         ids=["wide-1x4", "wide-4x8-groups2", "wide-1x4-groups3-loads4",
                              "uneven-groups-loads0-2x8", "spin-groups2", "spin-one-part"])
def test_persistent_gru_settings_equal_cpu(row_groups, item_rows, loads, item_cols, barrier, H, B,
                                           monkeypatch):
    """The persistent GRU loops under the QL-LSTM loops' settings: H = 30 (parts of several
    units; team_dot's passes run), one to three row groups, uneven ones (5 rows in groups of 3
    and 2), items of 1, 2, 4 rows and 4 or 8 columns, passes of 4, 16 or no loads, and the
    spin barrier (over several parts, and one part: the GPU's branch).  Two stacked layers,
    ragged lengths, a carried state and its gradient: all equal the CPU layer's."""
    from qlnumba.gpu import persistent as ps
    monkeypatch.setattr(ps, "TEAM_LOADS", loads)
    monkeypatch.setattr(ps, "GRID_BARRIER", barrier)
    rng = make_rng(72)
    T, E = 3, 2
    kw = dict(num_layers=2, dtype=np.float64, seed=12)
    cpu, gpu = qlnumba.GRU(E, H, **kw), qlnumba.GRU(E, H, device="cuda", **kw)
    for name, p in cpu.params.items():
        p[...] = 0.5 * rng.standard_normal(p.shape)
        gpu.params[name][...] = p
    for row in gpu._cells:
        row[0].row_groups, row[0].item_rows, row[0].item_cols = row_groups, item_rows, item_cols
    plan = gpu._cells[0][0]._plan(B)
    assert (plan.rgroups, plan.item_rows, plan.item_cols) == (row_groups, item_rows, item_cols)
    x = rng.standard_normal((B, T, E))
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    state = {"h": 0.5 * rng.standard_normal((2, B, H))}
    dout, dstate = rng.standard_normal((B, T, H)), {"h": rng.standard_normal((2, B, H))}
    results = [forward_backward(layer, x, lengths, dout, state, dstate) for layer in (cpu, gpu)]
    assert_layers_agree(results[1], results[0], 1e-10)


@pytest.mark.parametrize("kind,layers,layer_dropout,weighted", [
    ("ql", 2, 0.0, False), ("ql", 2, 0.4, True), ("lstm", 1, 0.0, False), ("bilstm", 2, 0.4, False),
    ("gru", 2, 0.0, False), ("biql", 1, 0.0, True), ("bigru", 2, 0.4, True)])
def test_cuda_trainer_steps_equal_cpu_training(kind, layers, layer_dropout, weighted):
    """Two device-resident training steps (dropout on, between layers too where
    layer_dropout is given; each row's loss weighed where ``weighted``) give the CPU
    loop's losses, probabilities, parameters and Adam state: every model kind,
    bidirectional layers (two directions side by side, their input's δ summed) and GRU
    cells too."""
    from qlnumba.gpu.model import CudaTrainer
    rng = make_rng(64)
    kw = dict(embed_dim=3, hidden_size=4, kind=kind, num_layers=layers, block_size=2,
              embed_dropout=0.2, head_dropout=0.3, layer_dropout=layer_dropout,
              dtype=np.float64, seed=8)
    cpu = qlnumba.SequenceClassifier(11, **kw)
    gpu = qlnumba.SequenceClassifier(11, device="cuda", **kw)
    opt_kw = dict(lr=0.05, weight_decay=0.01, clip_norm=0.5)
    cpu_opt, gpu_opt = qlnumba.Adam(cpu.params, **opt_kw), qlnumba.Adam(gpu.params, **opt_kw)
    trainer = CudaTrainer(gpu, gpu_opt)
    cpu_rng, gpu_rng = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(2):
        ids = rng.integers(0, 11, (3, 5))
        lengths = np.array([5, 2, 4])
        targets = rng.integers(0, 2, 3)
        w = rng.uniform(0, 2, 3) if weighted else None
        loss_c, probs_c = cpu.forward(ids, lengths, targets, rng=cpu_rng, sample_weight=w)
        cpu_opt.step(cpu.backward())
        loss_g, probs_g = trainer.step(ids, lengths, targets, rng=gpu_rng, sample_weight=w)
        assert abs(loss_g - loss_c) < 1e-10
        assert_close(probs_g, probs_c, 1e-10, 1e-10, "probs")
    trainer.sync_to_host()
    assert_trained_alike(gpu, gpu_opt, cpu, cpu_opt, steps=2)


def test_closing_steps_equal_the_rule():
    """closing_steps against its definition, row by row: step s is flagged where some row
    with s < its length has (n0 + s + 1) % K == 0."""
    from qlnumba.gpu.recurrent import closing_steps
    rng = make_rng(69)
    for _ in range(50):
        B, K = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        lengths = rng.integers(1, 12, B)
        n0 = rng.integers(0, K, B)
        steps = int(lengths.max())
        want = np.zeros(steps, np.int8)
        for r in range(B):
            for s in range(lengths[r]):
                if (n0[r] + s + 1) % K == 0:
                    want[s] = 1
        got = closing_steps(lengths, n0, K, steps)
        assert got.dtype == np.int8 and np.array_equal(got, want), (lengths, n0, K)


@pytest.mark.parametrize("path", ["persistent", "simple", "gru"])
def test_device_calls_with_state_none_equal_zero_state(path):
    """forward_device / backward_device with a state of None (zeros made on the device,
    nothing downloaded) give what host zero states give: the same outputs and δx to the
    last bit, and ``final_state`` / ``initial_state_grads`` hold what the host dicts get
    (QL-LSTM cells on both step loops, and a reverse GRU cell, whose state is h alone)."""
    from qlnumba.gpu.recurrent import cuda
    rng = make_rng(66)
    B, T, E, H = 3, 5, 2, 3
    if path == "gru":
        cell = qlnumba.GRU(E, H, bidirectional=True, dtype=np.float64, device="cuda", seed=5)._cells[0][1]
    else:
        cell = qlnumba.QLLSTM(E, H, psug=True, hgr=True, block_size=2, dtype=np.float64,
                              device="cuda", seed=5)._cells[0][0]
        cell.path = path
    keys = "h" if path == "gru" else "hcma"
    P = cell.device_params()
    d_x = cuda.to_device(rng.standard_normal((B, T, E)))
    d_dout = cuda.to_device(rng.standard_normal((B, T, H)))
    lengths = np.array([5, 2, 4])

    def zeros():
        st = {k: np.zeros((B, H)) for k in keys}
        if path != "gru":
            st["n"] = np.zeros(B, np.int64)
        return st

    results = []
    for host in (True, False):
        st, dst, grads = (zeros() if host else None), (zeros() if host else None), cell.device_grads()
        out = cell.forward_device(d_x, lengths, st, P).copy_to_host()
        final = st if host else {k: v.copy_to_host() for k, v in cell.final_state.items()}
        dx = cell.backward_device(d_dout, grads, dst).copy_to_host()
        dstate = dst if host else {k: v.copy_to_host() for k, v in cell.initial_state_grads.items()}
        results.append((out, dx, final, dstate, {k: g.copy_to_host() for k, g in grads.items()}))
    (o1, dx1, f1, s1, g1), (o2, dx2, f2, s2, g2) = results
    assert np.array_equal(o1, o2) and np.array_equal(dx1, dx2)
    for k in keys:
        assert np.array_equal(f1[k], f2[k]) and np.array_equal(s1[k], s2[k]), k
    for k in g1:
        assert np.array_equal(g1[k], g2[k]), k


@pytest.mark.parametrize("kind,layers,layer_dropout", [("ql", 2, 0.0), ("bilstm", 1, 0.0), ("gru", 2, 0.0),
                                                     ("ql", 2, 0.3)])
def test_cuda_trainer_step_allocates_nothing_and_waits_three_times(kind, layers, layer_dropout,
                                                                    monkeypatch):
    """After a first step, a CudaTrainer step of a batch no larger (here shorter, with other
    ids) allocates no device memory (a free can stall the device), copies from the device
    three times (the losses and probabilities after the forward, the gradient norm's
    partial sums) and to it six times (the batch's integers, the dropout mask, each of
    the two cells' lengths (and closes), the embedding gradient's id runs, sorted on the
    host while the forward runs, Adam's constants), seven with dropout between the layers
    (its mask; the masked input is written by the mask's kernel, not copied first)."""
    from qlnumba.gpu.model import CudaTrainer
    from qlnumba.gpu.recurrent import cuda
    rng = make_rng(65)
    model = qlnumba.SequenceClassifier(11, embed_dim=3, hidden_size=4, kind=kind, num_layers=layers,
                                       block_size=2, embed_dropout=0.2, layer_dropout=layer_dropout,
                                       device="cuda", seed=8)
    trainer = CudaTrainer(model, qlnumba.Adam(model.params, lr=0.01, clip_norm=1.0))
    ids = np.arange(15).reshape(3, 5) % 11                  # every id: the most distinct ids
    targets = np.array([0, 1, 1])
    trainer.step(ids, np.array([5, 2, 4]), targets, rng=np.random.default_rng(1))
    calls = []
    array_type = type(cuda.device_array(1))
    for name in ("device_array", "to_device", "device_array_like"):
        real = getattr(cuda, name)
        monkeypatch.setattr(cuda, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    for name in ("copy_to_host", "copy_to_device"):
        real = getattr(array_type, name)
        monkeypatch.setattr(array_type, name,
                            lambda self, *a, _real=real, _name=name, **k: calls.append(_name) or _real(self, *a, **k))
    trainer.step(rng.integers(0, 11, (3, 4)), np.array([4, 2, 3]), targets, rng=np.random.default_rng(2))
    assert sorted(calls) == ["copy_to_device"] * (6 + (layer_dropout > 0)) + ["copy_to_host"] * 3


def test_cuda_trainer_refuses_what_it_cannot_train():
    from qlnumba.gpu.model import CudaLMTrainer, CudaTrainer
    from qlnumba.lm import LanguageModel
    for kind in ("ql", "bilstm", "gru"):
        cpu = qlnumba.SequenceClassifier(5, embed_dim=2, hidden_size=3, kind=kind)
        with pytest.raises(ValueError, match="built with device='cuda', got one built with device='cpu'"):
            CudaTrainer(cpu, qlnumba.Adam(cpu.params))
    lm = LanguageModel(5, embed_dim=2, hidden_size=3, device="cuda")
    with pytest.raises(ValueError, match="CudaTrainer trains a SequenceClassifier, got LanguageModel"):
        CudaTrainer(lm, qlnumba.Adam(lm.params))
    classifier = qlnumba.SequenceClassifier(5, embed_dim=2, hidden_size=3, device="cuda")
    with pytest.raises(ValueError, match="CudaLMTrainer trains a LanguageModel"):
        CudaLMTrainer(classifier, qlnumba.Adam(classifier.params))
    model = LanguageModel(5, embed_dim=2, hidden_size=3)
    with pytest.raises(ValueError, match="device='cuda'"):
        CudaLMTrainer(model, qlnumba.Adam(model.params))
    with pytest.raises(ValueError, match="opt must be the Adam over model.params"):
        CudaLMTrainer(lm, qlnumba.Adam(LanguageModel(5, embed_dim=2, hidden_size=3).params))
    with pytest.raises(ValueError, match="rng must be None or a numpy Generator"):
        CudaLMTrainer(lm, qlnumba.Adam(lm.params)).step(np.array([[1, 2]]), None, np.array([[2, 3]]), rng=5)
    with pytest.raises(ValueError, match="rng must be None or a numpy Generator"):
        CudaTrainer(classifier, qlnumba.Adam(classifier.params)).step(np.array([[1, 2]]), None,
                                                                       np.array([1]), rng=5)


@pytest.mark.parametrize("kind,layers,layer_dropout", [("ql", 2, 0.0), ("ql", 2, 0.4), ("lstm", 1, 0.0),
                                                       ("gru", 2, 0.4)])
def test_cuda_lm_trainer_steps_equal_cpu_training(kind, layers, layer_dropout):
    """Three device-resident training steps of a language model, on ragged chunks with
    the state carried from each to the next and dropout on (between layers too where
    layer_dropout is given), give the CPU loop's losses, probabilities, states,
    parameters and Adam state."""
    from qlnumba.gpu.model import CudaLMTrainer
    from qlnumba.lm import LanguageModel
    rng = make_rng(67)
    kw = dict(embed_dim=3, hidden_size=4, kind=kind, num_layers=layers, block_size=2,
              dropout=0.2, layer_dropout=layer_dropout, dtype=np.float64, seed=9)
    cpu, gpu = LanguageModel(7, **kw), LanguageModel(7, device="cuda", **kw)
    opt_kw = dict(lr=0.05, weight_decay=0.01, clip_norm=0.5)
    cpu_opt, gpu_opt = qlnumba.Adam(cpu.params, **opt_kw), qlnumba.Adam(gpu.params, **opt_kw)
    trainer = CudaLMTrainer(gpu, gpu_opt)
    cpu_rng, gpu_rng = np.random.default_rng(5), np.random.default_rng(5)
    state_c = state_g = None
    for lengths in ([5, 5, 5], [4, 2, 5], [3, 1, 2]):
        ids, targets = rng.integers(1, 7, (3, 5)), rng.integers(1, 7, (3, 5))
        lengths = np.array(lengths)
        loss_c, probs_c, state_c = cpu.forward(ids, lengths, targets, state_c, rng=cpu_rng)
        cpu_opt.step(cpu.backward())
        loss_g, probs_g, state_g = trainer.step(ids, lengths, targets, state_g, rng=gpu_rng)
        assert abs(loss_g - loss_c) < 1e-10
        assert_close(probs_g, probs_c, 1e-10, 1e-10, "probs")
        assert set(state_g) == set(state_c)
        for k in state_c:
            assert_close(state_g[k], state_c[k], 1e-10, 1e-10, "state " + k)
    trainer.sync_to_host()
    assert_trained_alike(gpu, gpu_opt, cpu, cpu_opt, steps=3)


def test_cuda_lm_trainer_step_allocates_nothing_and_refuses_bad_targets(monkeypatch):
    """After a first chunk, a shorter one (fewer valid steps) allocates no device memory;
    targets out of the vocabulary at a valid step, and a state of the wrong batch, are
    refused as by model.forward."""
    from qlnumba.gpu.model import CudaLMTrainer
    from qlnumba.gpu.recurrent import cuda
    from qlnumba.lm import LanguageModel
    rng = make_rng(68)
    model = LanguageModel(9, embed_dim=3, hidden_size=4, kind="ql", block_size=2, dropout=0.1,
                          device="cuda", seed=3)
    trainer = CudaLMTrainer(model, qlnumba.Adam(model.params, lr=0.01))
    ids = np.arange(1, 16).reshape(3, 5) % 8 + 1                # many distinct ids
    _, _, state = trainer.step(ids, None, ids, rng=np.random.default_rng(1))
    calls = []
    for name in ("device_array", "to_device", "device_array_like"):
        real = getattr(cuda, name)
        monkeypatch.setattr(cuda, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    loss, probs, _ = trainer.step(rng.integers(1, 9, (3, 4)), np.array([4, 1, 3]),
                                  rng.integers(1, 9, (3, 4)), state, rng=np.random.default_rng(2))
    assert calls == [] and np.isfinite(loss) and probs.shape == (3, 9)
    targets = np.ones((3, 5), np.int64)
    targets[1, 2] = 9
    with pytest.raises(ValueError, match=r"targets must lie in \[1, 9\)"):
        trainer.step(ids, None, targets)
    targets[1, 2] = 0                                          # padding: only past a row's length
    trainer.step(ids, np.array([5, 2, 5]), targets)
    with pytest.raises(ValueError, match="state"):
        trainer.step(ids[:2], None, ids[:2], state)


@pytest.mark.parametrize("model", ["ql", "bilstm"])
def test_training_program_runs_on_the_device(model, tmp_path):
    """train/imdb.py --device cuda end to end (CudaTrainer, then evaluation and the test
    split) on a few made-up reviews in the IMDB file format."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "train"))
    import imdb as train_imdb
    pytest.importorskip("datasets")            # the reader's dependency (a GPU image may lack it)
    data = tmp_path / "imdb"
    data.mkdir()
    reviews = [("good fun great film", 1), ("bad awful dull", 0), ("great good", 1), ("awful bad bad", 0)]
    for split in ("train", "test"):
        write_jsonl_gz(data / f"{split}.jsonl.gz",
                       [{"text": text, "label": label} for _ in range(3) for text, label in reviews])
    out = tmp_path / "run"
    rc = train_imdb.main(["--data-dir", str(data), "--out", str(out), "--device", "cuda", "--hidden", "3",
                          "--embed-dim", "2", "--max-len", "4", "--batch-size", "5", "--epochs", "1",
                          "--vocab-size", "20", "--min-freq", "1", "--threads", "1", "--no-progress",
                          "--block-size", "2", "--val-fraction", "0.25", "--model", model])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and 0.0 <= summary["test_accuracy"] <= 1.0


@pytest.mark.parametrize("model", ["ql", "gru"])
def test_language_model_program_runs_on_the_device(model, tmp_path):
    """train/shakespeare.py --device cuda end to end (CudaLMTrainer with the state carried
    between chunks, validation, the checkpoint, a sample) follows the CPU run: the same
    seed draws the same chunk borders and dropout masks."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "train"))
    import shakespeare as train_shakespeare
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text("to be or not to be\n" * 6)
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        rc = train_shakespeare.main(["--data-dir", str(tmp_path / "data"), "--out", str(out),
                                     "--device", device, "--hidden", "3", "--embed-dim", "2",
                                     "--batch-size", "2", "--steps", "8", "--epochs", "2",
                                     "--block-size", "3", "--sample-chars", "5", "--threads", "1",
                                     "--model", model])
        assert rc == 0
        runs[device] = json.loads((out / "summary.json").read_text())
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([e[key] for e in runs["cuda"]["epochs"]],
                                   [e[key] for e in runs["cpu"]["epochs"]], rtol=1e-4)
    assert len(runs["cuda"]["sample"]) == len("ROMEO:") + 5


def test_cuda_language_model_equals_cpu_model():
    """LanguageModel(device="cuda"): a carried state, ragged rows; loss, gradients, the state."""
    from qlnumba.lm import LanguageModel
    rng = make_rng(63)
    kw = dict(embed_dim=2, hidden_size=3, kind="ql", block_size=2, dtype=np.float64, seed=7)
    cpu, gpu = LanguageModel(6, **kw), LanguageModel(6, device="cuda", **kw)
    ids, targets = rng.integers(1, 6, (2, 5)), rng.integers(1, 6, (2, 5))
    lengths = np.array([5, 3])
    _, _, state = cpu.forward(ids[:, :2])
    loss_c, probs_c, final_c = cpu.forward(ids, lengths, targets, state)
    loss_g, probs_g, final_g = gpu.forward(ids, lengths, targets, state)
    assert abs(loss_c - loss_g) < 1e-10
    np.testing.assert_allclose(probs_g, probs_c, rtol=1e-10)
    for k in final_c:
        np.testing.assert_allclose(final_g[k], final_c[k], rtol=1e-10, atol=1e-12)
    gc, gg = cpu.backward(), gpu.backward()
    for k in gc:
        assert_close(gg[k], gc[k], 1e-10, 1e-10, k)


@pytest.mark.parametrize("kind, X", [
    ("ql", [[1, 2, 3], [4, 1], [2, 2, 4, 1], [3], [4, 4, 2], [1, 3]]),      # CudaTrainer
    ("bilstm", [[1, 2, 3], [4, 1], [2, 2, 4, 1], [3], [4, 4, 2], [1, 3]]),  # CudaTrainer
    ("gru", [[0.5, -1.0, 2.0], [1.0, 0.1], [-0.3], [2.0, 2.0, -1.0], [0.2, 0.4], [1.5]]),
])
def test_estimator_on_the_device_equals_the_cpu(kind, X, tmp_path):
    """QLLSTMClassifier(device="cuda") trains with every array on the device (CudaTrainer):
    ids, or feature sequences (a GRU here); both follow the CPU fit (the same seed: the
    same batches, dropout masks and hold-out)."""
    from qlnumba.estimator import QLLSTMClassifier
    y = [0, 1, 0, 1, 1, 0]
    kw = dict(kind=kind, hidden_size=3, embed_dim=2, block_size=2, batch_size=2, max_epochs=2,
              embed_dropout=0.2, early_stopping=True, validation_fraction=0.34, dtype="float64",
              random_state=4)
    cpu = QLLSTMClassifier(**kw).fit(X, y)
    gpu = QLLSTMClassifier(device="cuda", **kw).fit(X, y)
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-9)
    assert gpu.validation_scores_ == cpu.validation_scores_
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-9, atol=1e-12)
    cpu.partial_fit(X, y)                           # one more epoch, Adam's state carried on
    gpu.partial_fit(X, y)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), rtol=1e-9, atol=1e-12)
    gpu.save(tmp_path / "gpu.npz")                  # read back on the CPU: the same model
    back = QLLSTMClassifier.load(tmp_path / "gpu.npz", device="cpu")
    assert back.device == "cpu" and back.model_.config["device"] == "cpu"
    np.testing.assert_allclose(back.predict_proba(X), gpu.predict_proba(X), rtol=1e-9, atol=1e-12)
