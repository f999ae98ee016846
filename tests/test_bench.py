"""bench/cpu.py prints the one JSON object issue 4 asks for (tiny shapes, torch left out).

Marked slow: on a fresh clone it compiles every float32 kernel (about 2 minutes on 2 cores)."""
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
