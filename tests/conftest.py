import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("default", deadline=None, max_examples=25, derandomize=True,
                          print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=300, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def tiny_imdb(tmp_path):
    """A folder in the IMDB format: ten short reviews to train on, four to test on."""
    from helpers import write_jsonl_gz
    rows = [{"text": f"Review {i}<br />Good!" if i % 2 else f"Bad film {i}.", "label": i % 2,
             "id": i, "rating": 8 if i % 2 else 2} for i in range(10)]
    write_jsonl_gz(tmp_path / "train.jsonl.gz", rows)
    write_jsonl_gz(tmp_path / "test.jsonl.gz", rows[:4])
    return tmp_path


@pytest.fixture
def threads(monkeypatch):
    """use(n, partition): the kernels run as if set_num_threads(n, partition) had been
    called (BLAS pinning is left as it is)."""
    from qlnumba import config

    def use(n, partition="rows"):
        monkeypatch.setattr(config, "_threads", n)
        monkeypatch.setattr(config, "_partition", partition)
    return use


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs (accuracy, benchmark smoke test; run with --runslow)")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def keep_thread_settings():
    """The training programs' tests run main() in this process, and main() calls
    set_num_threads: put qlnumba's and Numba's thread settings back after every test, so no
    test runs under another's (a 2-thread test on 1 Numba thread fails or waits)."""
    import numba

    from qlnumba import config
    saved = (config._threads, config._partition, numba.get_num_threads())
    yield
    config._threads, config._partition = saved[:2]
    numba.set_num_threads(saved[2])
