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
