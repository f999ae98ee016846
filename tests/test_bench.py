"""bench/cpu.py prints the one JSON object issue 4 asks for (tiny shapes, torch left out);
bench/threads.py compares thread settings; bench/subnormal.py times vanishing gradients
against healthy ones; bench/ncu_top.py ranks a profile's stall samples.

The benchmark runs are marked slow: on a fresh clone they compile the float32 kernels (about
2 minutes on 2 cores for bench/cpu.py)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_program(folder, name):
    """Module ``folder/name.py`` (a program of bench/ or scripts/), loaded as its program
    runs: with its own folder first on sys.path, so its imports of its neighbours work."""
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", os.path.join(ROOT, folder, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    sys.path.insert(0, os.path.join(ROOT, folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


@pytest.mark.slow
def test_thread_settings_benchmark_json():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "threads.py"), "--threads", "1",
                          "--repeats", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert set(result["ratio_to_default"]) == {"default", "threads1"}
    assert all(r == 1.0 for r in result["ratio_to_default"]["default"].values())
    assert all(v > 0 for v in result["tokens_per_s"]["threads1"].values())


def run_cpu_benchmark(*flags):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "cpu.py"), "--config", "tiny",
                          "--threads", "2", "--repeats", "1", "--json", *flags],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("gru", [False, True], ids=["ql_lstm", "with_gru"])
def test_cpu_benchmark_json(gru):
    result = run_cpu_benchmark("--no-torch", *(["--gru"] if gru else []))
    for mode in ("train", "infer"):
        assert set(result[f"{mode}_tokens_per_s"]) == {"qlnumba_ql", "qlnumba_lstm"} | ({"qlnumba_gru"} if gru else set())
        assert all(v > 0 for v in result[f"{mode}_tokens_per_s"].values())
    assert result["threads"] == 2 and result["qlnumba_partition"] == "units" and result["rewarm"] is True
    assert {"python", "numpy", "numba", "qlnumba"} <= set(result["versions"])


@pytest.mark.slow
def test_cpu_benchmark_gru_ratios_against_torchs_gru():
    pytest.importorskip("torch")
    result = run_cpu_benchmark("--gru")
    assert result["versions"]["torch_imported_first"]
    for mode in ("train", "infer"):
        tps, ratio = result[f"{mode}_tokens_per_s"], result[f"{mode}_ratio_vs_torch"]
        assert ratio["qlnumba_gru"] == pytest.approx(tps["qlnumba_gru"] / tps["torch_gru"])
        assert ratio["qlnumba_lstm"] == pytest.approx(tps["qlnumba_lstm"] / tps["torch_lstm"])
        assert ratio["torch_gru"] == ratio["torch_lstm"] == 1.0


@pytest.mark.slow
def test_subnormal_benchmark_json():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "subnormal.py"), "--B", "4",
                          "--H", "8", "--repeats", "1", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert set(result["results"]) == {"lstm/units", "lstm/rows", "ql/units", "ql/rows", "gru/rows"}
    for name, r in result["results"].items():
        assert r["ratio_vanishing_to_healthy"] > 0 and len(r["round_ratios"]) == 1
        assert r["values"]["vanishing"]["subnormal"] == 0, name
    assert result["results"]["lstm/rows"]["values"]["vanishing"]["dx_zero_fraction"] > 0.3   # it vanished


def test_ncu_top_ranks_stall_samples(tmp_path):
    """bench/ncu_top.py reads an ncu source page with two kernels' tables and ranks each
    table's rows by their warp stall samples."""
    page = tmp_path / "page.csv"
    page.write_text('"# Address","Source","Warp Stall Sampling (All Samples)"\n'
                    '"0010","LDG.E R1, [R2.64]","120"\n"0020","FFMA R3, R1, R1, R3","30"\n'
                    '"# Address","Source","Warp Stall Sampling (All Samples)"\n'
                    '"0010","BAR.SYNC 0x0","5"\n"0020","HMMA.1688.F32.TF32 R4, R8, R12, R4","1,015"\n')
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ncu_top.py"), str(page), "--top", "1"],
                         capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("table 0: 2 rows, 150 samples")
    assert "80.0%" in lines[1] and "LDG.E" in lines[1]
    assert lines[2].startswith("table 1: 2 rows, 1020 samples")
    assert "99.5%" in lines[3] and "HMMA" in lines[3]
    # the SASS page's columns per stall reason: their shares, and each row's main reason
    page.write_text('"Address","Source","Warp Stall Sampling (All Samples)","stall_long_sb","stall_wait",'
                    '"stall_long_sb (Not Issued)"\n'
                    '"0010","LDG.E R1, [R2.64]","120","100","20","90"\n"0020","FFMA R3, R1, R1, R3","30","0","30","0"\n')
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ncu_top.py"), str(page)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[1] == "  stall reasons: long_sb 66.7%, wait 33.3%"
    assert out[2].endswith("(long_sb)") and "LDG.E" in out[2] and out[3].endswith("(wait)")


def test_sass_lines_counts_instructions_per_source_line():
    """scripts/sass_lines.py (ptx_check.py --loops --lines) counts nvdisasm -gi's instructions
    under their innermost source line and the kernel line it was inlined at, and the calls of
    64-bit division routines; NOPs and markers are not instructions."""
    count_sass_lines = load_program("scripts", "sass_lines").count_sass_lines
    text = "\n".join([
        '\t//## File "/r/qlnumba/gpu/persistent.py", line 300',
        "        /*0000*/                   S2R R0, SR_TID.X ;",
        '\t//## File "/r/qlnumba/gpu/arrays.py", line 68 inlined at "/r/qlnumba/gpu/persistent.py", line 99',
        '\t//## File "/r/qlnumba/gpu/persistent.py", line 99 inlined at "/r/qlnumba/gpu/persistent.py", line 293',
        '\t//## File "/r/qlnumba/gpu/persistent.py", line 293',
        "        /*0010*/                   I2F.U32.RP R1, R0 ;",
        "        /*0020*/                   MUFU.RCP R1, R1 ;",
        "        /*0030*/                   CALL.ABS.NOINC `(__cuda_sm20_div_s64) ;",
        "        /*0040*/                   NOP;",
        "        /*10a0*/                   EXIT ;",
    ])
    counts, calls = count_sass_lines(text)
    assert counts == {"persistent.py:300": 1, "arrays.py:68 in persistent.py:293": 4}
    assert calls == {"__cuda_sm20_div_s64": 1}


def test_interleaved_rounds_pair_each_case_with_its_contenders():
    """bench/timing.py: warm-ups first, then rounds that call every function once in order,
    and each round's speed-up of a case over a contender from the same round (the GPU
    benchmark's ratios to cuDNN)."""
    timing = load_program("bench", "timing")
    interleaved_times, round_speedups = timing.interleaved_times, timing.round_speedups
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("ours", "cudnn")}
    times = interleaved_times(fns, repeats=3, sync=lambda: calls.append("sync"), settle=0.0, warmup=2)
    assert calls == ["ours", "ours", "sync", "cudnn", "cudnn", "sync"] + ["ours", "sync", "cudnn", "sync"] * 3
    assert [len(t) for t in times.values()] == [3, 3] and all(s >= 0 for t in times.values() for s in t)
    calls.clear()                                   # rewarm: an untimed call right before each timed one
    times = interleaved_times(fns, repeats=2, sync=lambda: calls.append("sync"), settle=0.0, warmup=1,
                              rewarm=True)
    assert calls == ["ours", "sync", "cudnn", "sync"] + ["ours", "sync", "ours", "sync",
                                                         "cudnn", "sync", "cudnn", "sync"] * 2
    assert [len(t) for t in times.values()] == [2, 2]
    rounds = {"ours": [1.0, 2.0, 0.5], "cudnn": [2.0, 2.0, 2.0]}
    assert round_speedups(rounds, "ours", "cudnn") == [2.0, 1.0, 4.0]
    with pytest.raises(ValueError):                 # rounds that do not pair up
        round_speedups({"ours": [1.0], "cudnn": [1.0, 2.0]}, "ours", "cudnn")


def test_launch_us_times_calls_back_to_back_then_waits():
    """bench/timing.py's launch_us: batches of calls issued back to back, one wait after each
    batch (not after each call), microseconds per call, the median batch's."""
    launch_us = load_program("bench", "timing").launch_us
    calls = []
    us = launch_us(lambda: calls.append("op"), lambda: calls.append("sync"), calls=4, batches=3)
    assert calls == ["sync"] + (["op"] * 4 + ["sync"]) * 3
    assert us > 0


def test_gpu_benchmark_pairs_every_case_with_cudnn_round_by_round():
    """bench/gpu.py's SideBySide, with stand-ins for cuDNN: every case's rounds run the
    contenders too; a ratio is the median of the case's per-round speed-ups over cuDNN as
    torch ships it, and a contender's tokens/s pools its rounds of every case."""
    gpu = load_program("bench", "gpu")                        # with bench/ on sys.path (timing.py)
    calls = []

    def fn(name):
        return lambda: calls.append(name)
    contenders = {c: {"train": fn(c + " train"), "infer": fn(c + " infer"), "allow_tf32": c == "torch_cudnn_lstm"}
                  for c in ("torch_cudnn_lstm", "torch_cudnn_lstm_strict_fp32")}
    row = {"train_tokens_per_s": {}, "infer_tokens_per_s": {}}
    timer = gpu.SideBySide(row, contenders, repeats=3, sync=lambda: None, tokens=1000)
    for case in ("ql", "lstm"):
        timer.time(case, "train", fn(case))
    timer.time("ql", "infer", fn("ql infer"))
    timer.finish()
    warm, rnd = gpu.WARMUP, ["ql", "torch_cudnn_lstm train", "torch_cudnn_lstm_strict_fp32 train"]
    assert calls[:3 * warm] == [c for c in rnd for _ in range(warm)] and calls[3 * warm:3 * warm + 9] == rnd * 3
    assert set(row["train_tokens_per_s"]) == {"ql", "lstm", "torch_cudnn_lstm", "torch_cudnn_lstm_strict_fp32"}
    assert all(v > 0 for mode in ("train", "infer") for v in row[f"{mode}_tokens_per_s"].values())
    assert set(row["train_ratio_rounds"]) == {"ql", "lstm"} and all(len(r) == 3 for r in row["train_ratio_rounds"].values())
    assert row["train_ratio_vs_cudnn"]["torch_cudnn_lstm"] == 1.0
    assert set(row["infer_ratio_vs_cudnn"]) == {"ql", "torch_cudnn_lstm", "torch_cudnn_lstm_strict_fp32"}
    assert row["torch_cudnn_lstm_allow_tf32"] and not row["torch_cudnn_lstm_strict_fp32_allow_tf32"]
    none = {"train_tokens_per_s": {}, "infer_tokens_per_s": {}}          # no card for torch: no ratios
    timer = gpu.SideBySide(none, {}, repeats=1, sync=lambda: None, tokens=10)
    timer.time("ql", "train", fn("ql"))
    timer.finish()
    assert set(none) == {"train_tokens_per_s", "infer_tokens_per_s"} and set(none["train_tokens_per_s"]) == {"ql"}
