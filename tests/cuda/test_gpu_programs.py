"""The GPU benchmark and profiling programs run end to end at a tiny shape (in the
simulator under scripts/test.sh): a change to the kernels' factories or settings that
they patch or pass on must not break them unseen until a device run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_gpu_benchmark_runs_with_its_options(tmp_path):
    out = tmp_path / "gpu.json"
    run("bench/gpu.py", "--shapes", "tiny", "--repeats", "1", "--team-loads", "32",
        "--matmul-prefetch", "off", "--tensor-cores", "tf32x3", "--item-cols", "8",
        "--matmul-tiles", "64x64,64x64pf", "--tile-shape", "tiny", "--matmul-tile", "128x128tf32x3as",
        "--grid-barrier", "spin", "--gru", "--json-out", str(out))
    result = json.loads(out.read_text())
    assert set(result["matmul_tiles"]) == {"64x64", "64x64pf"}
    assert all(row["all four ms"] > 0 for row in result["matmul_tiles"].values())   # @best-tile's measure
    assert result["team_loads"] == 32 and result["matmul_prefetch"] is False
    assert result["tensor_cores"] == "tf32x3" and result["item_cols"] == 8
    assert result["matmul_tile"] == "128x128tf32x3as" and result["grid_barrier"] == "spin"
    assert set(result["shapes"]["tiny"]["train_tokens_per_s"]) >= {"qlnumba_ql_persistent",
                                                                    "qlnumba_lstm_persistent"}
    gru = result["shapes"]["tiny"]["gru"]           # --gru: our GRU, its own row
    assert set(gru["train_tokens_per_s"]) == {"qlnumba_gru_persistent"}
    assert gru["qlnumba_persistent_plan"]["item_cols"] == 8
    # one --item-cols value holds for every case, narrow parts too (H = 3: 1 unit a part)
    plans = result["shapes"]["tiny"]["qlnumba_persistent_plan"]
    assert {plan["item_cols"] for plan in plans.values()} == {8}


def test_gpu_benchmark_checks_settings_side_by_side(tmp_path):
    """Lists of the persistent loops' settings: every combination checked against the CPU in
    one process, under its own label (the library's choice: no suffix); the timings take the
    same labels (``suffix``).  No timing here: the simulator would take minutes.  The products
    take the float32 tiles (the simulator's stand-in for mma.sync took two thirds of this
    test's time; the tensor-core tiles have tests of their own, and the test above)."""
    out = tmp_path / "gpu.json"
    run("bench/gpu.py", "--shapes", "", "--item-rows", "1", "--item-cols", "default,4", "--team-loads", "default,0",
        "--grid-barrier", "default,spin", "--tensor-cores", "off", "--check", "--check-shapes", "tiny",
        "--json-out", str(out))
    result = json.loads(out.read_text())
    assert result["team_loads"] == [16, 0] and result["item_cols"] == [None, 4]     # None: the plan's choice
    assert result["grid_barrier"] == ["cg", "spin"]
    checks = result["check_vs_cpu_max_rel_err"]["tiny"]
    assert set(checks) == {f"{kind}_i1{cols}{loads}{barrier}" for kind in ("ql", "lstm") for cols in ("", "_c4")
                           for loads in ("", "_l0") for barrier in ("", "_bspin")}
    assert all(err < 1e-4 for case in checks.values() for err in case.values())


def test_gpu_profile_and_ncu_driver_run():
    profile = run("bench/gpu_profile.py", "--shapes", "tiny", "--tensor-cores", "tf32", "--grid-barrier", "spin")
    assert "persistent_forward" in profile and "matmul 128x128tf32" in profile
    first = json.loads(profile.splitlines()[0])                 # the step barriers alone, first
    assert first["grid_barrier"] == "spin" and min(first["spin_barrier_us"].values()) > 0
    assert min(first["grid_sync_us"].values()) > 0
    assert "two forward + backward calls done" in run("bench/ncu_driver.py", "--shape", "tiny",
                                                      "--kind", "lstm")


def test_gpu_benchmark_refuses_bad_settings():
    """A setting the loops cannot take is refused before anything runs, with the option's name."""
    for option, value, message in (("--item-cols", "8,6", "--item-cols: 4 or 8"),
                                   ("--team-loads", "16,-2", "--team-loads: 0 or more"),
                                   ("--grid-barrier", "cg,atomic", "--grid-barrier: one of"),
                                   ("--trainer-kinds", "ql,bigru", "--trainer-kinds: kinds of")):
        done = subprocess.run([sys.executable, "bench/gpu.py", "--shapes", "", option, value], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


def test_baseline_copy_runs_its_own_library(tmp_path):
    """scripts/make-baseline.sh puts a commit's qlnumba/ and bench/ in a folder, and that
    bench/gpu.py imports the qlnumba beside it, not the working tree's (the "@baseline" A/B
    of scripts/gpu-variants.sh)."""
    base = tmp_path / "base"
    subprocess.run(["bash", "scripts/make-baseline.sh", "HEAD", str(base)], cwd=ROOT, check=True,
                   capture_output=True)
    out = tmp_path / "gpu.json"
    run(str(base / "bench" / "gpu.py"), "--shapes", "", "--json-out", str(out))    # no timing
    result = json.loads(out.read_text())
    assert Path(result["library"]).resolve() == (base / "qlnumba").resolve()
    assert result["shapes"] == {}
    run("bench/gpu.py", "--shapes", "", "--team-loads", "0", "--json-out", str(out))
    result = json.loads(out.read_text())
    assert result["team_loads"] == 0                                  # 0 is a setting, not "unset"
    assert result["host_cpu"]                                         # the host, beside the card


def test_gpu_benchmark_times_cases_beside_torch(tmp_path):
    """bench/gpu.py's whole path with cuDNN beside every case, run with torch on the CPU
    standing in for the card (``.cuda()`` returns the tensor or module itself): torch's calls,
    the rounds, the ratios and the JSON, before a card runs them.  Needs torch (not in CI)."""
    pytest.importorskip("torch")
    wrapper = tmp_path / "gpu_beside_cpu_torch.py"
    wrapper.write_text(
        "import runpy, sys, torch\n"
        "torch.Tensor.cuda = lambda self, *a, **k: self\n"
        "torch.nn.Module.cuda = lambda self, *a, **k: self\n"
        "torch.cuda.is_available = lambda: True\n"
        "torch.cuda.synchronize = lambda: None\n"
        "sys.argv = ['bench/gpu.py'] + sys.argv[1:]\n"
        "sys.path.insert(0, 'bench')\n"                       # its own folder, as a script has
        "runpy.run_path('bench/gpu.py', run_name='__main__')\n")
    out = tmp_path / "gpu.json"
    run(str(wrapper), "--shapes", "tiny", "--repeats", "2", "--tensor-cores", "off", "--host-api",
        "--json-out", str(out))
    row = json.loads(out.read_text())["shapes"]["tiny"]
    ours = {"qlnumba_ql_persistent", "qlnumba_lstm_persistent"}
    for mode in ("train", "infer"):
        assert set(row[f"{mode}_ratio_rounds"]) == ours | ({f"{c}_host_api" for c in ours} if mode == "train" else set())
        assert all(len(r) == 2 and min(r) > 0 for r in row[f"{mode}_ratio_rounds"].values())
        assert row[f"{mode}_ratio_vs_cudnn"]["torch_cudnn_lstm"] == 1.0
        assert row[f"{mode}_tokens_per_s"]["torch_cudnn_lstm_strict_fp32"] > 0
    assert row["torch_cudnn_lstm_allow_tf32"] is True and row["torch_cudnn_lstm_strict_fp32_allow_tf32"] is False
    assert len(row["torch_launch_us"]) == 2 and min(row["torch_launch_us"]) > 0     # before and after the rounds
    assert json.loads(out.read_text())["host_cpu"]
