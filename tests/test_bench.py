"""bench/cpu.py prints the one JSON object issue 4 asks for (tiny shapes, torch left out);
bench/ncu_top.py ranks a profile's stall samples.

The first is marked slow: on a fresh clone it compiles every float32 kernel (about 2 minutes
on 2 cores)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_cpu_benchmark_json():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "cpu.py"), "--config", "tiny",
                          "--threads", "2", "--repeats", "1", "--no-torch", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    for mode in ("train", "infer"):
        assert set(result[f"{mode}_tokens_per_s"]) == {"qlnumba_ql", "qlnumba_lstm"}
        assert all(v > 0 for v in result[f"{mode}_tokens_per_s"].values())
    assert result["threads"] == 2 and result["qlnumba_partition"] == "units"
    assert {"python", "numpy", "numba", "qlnumba"} <= set(result["versions"])


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
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from sass_lines import count_sass_lines
    finally:
        sys.path.pop(0)
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
