"""GPU kernel tests: on a GPU, or in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, set by
scripts/test.sh for this folder's own pytest process, before numba is imported)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def pytest_collection_modifyitems(config, items):
    import qlnumba.gpu  # noqa: F401  (applies the numpy 2.5 shim before numba.cuda loads)
    from numba import cuda

    if not cuda.is_available():
        skip = pytest.mark.skip(reason="no GPU; run with NUMBA_ENABLE_CUDASIM=1 (scripts/test.sh does)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def float32_tiles_in_the_simulator(monkeypatch):
    """In the simulator the products take the float32 tiles unless a test sets
    MATMUL_TENSOR_CORES itself.  The library's default is tf32x3, and the simulator's
    stand-in for mma.sync is slow: the layer, model and trainer tests took 6 minutes with
    it against 2 without (the whole suite 4m10 against 2m53 once the simulator yielded the
    GIL, ``qlnumba.gpu.yielding_simulator``).  The tensor-core tests run it (the tiles against
    numpy, the layers against the CPU, the GPU programs' options).  On a card every test runs
    the library's default."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        from qlnumba.gpu import matmul as mm
        monkeypatch.setattr(mm, "MATMUL_TENSOR_CORES", "off")
