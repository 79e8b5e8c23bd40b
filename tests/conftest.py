import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import DEMOS, ByteTokenizer, tiny_model  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Many tests compare results bitwise, and a float sum's last bits depend on how many
# threads split it.  So the thread count is decided once for the whole session (before
# any fixture, of any scope, computes a reference) and no test may change it: every
# result in a run is computed under the same conditions, whatever the order of tests.
# ICV_TEST_THREADS overrides torch's default (which follows OMP_NUM_THREADS).
THREADS_ENV = "ICV_TEST_THREADS"


def session_threads() -> int:
    import torch

    configured = os.environ.get(THREADS_ENV)
    return int(configured) if configured else torch.get_num_threads()


def pytest_configure(config):
    import torch

    config._icv_threads = session_threads()
    torch.set_num_threads(config._icv_threads)


def run_conditions(config) -> str:
    seed = getattr(config.option, "randomly_seed", None)
    order = (
        f"random order, seed {seed} (replay: --randomly-seed={seed})" if seed is not None else "file order"
    )
    return f"torch threads: {config._icv_threads} (fixed for the session; {THREADS_ENV} sets it); {order}"


def pytest_report_header(config):
    return run_conditions(config)


def pytest_terminal_summary(terminalreporter, config):
    # Printed even under -q, so a failure seen once in CI can be replayed in the same order.
    terminalreporter.write_line(run_conditions(config))


@pytest.fixture(autouse=True)
def _same_threads_throughout(request):
    """Fail a test that changes torch's thread count: later references would silently differ."""
    import torch

    expected = request.config._icv_threads
    assert torch.get_num_threads() == expected, "torch's thread count changed before this test"
    yield
    changed = torch.get_num_threads()
    torch.set_num_threads(expected)
    assert changed == expected, (
        f"this test changed torch's thread count from {expected} to {changed}; "
        "bitwise comparisons in later tests would compare results of different thread counts"
    )


@pytest.fixture
def tokenizer():
    return ByteTokenizer()


@pytest.fixture
def llama():
    return tiny_model("llama")


@pytest.fixture
def demos():
    return list(DEMOS)


@pytest.fixture(scope="session")
def real():
    """The embedded SmolLM2-135M-Instruct model and tokenizer (shared: do not leave it steered)."""
    import icv

    model, tok = icv.load_model()
    yield model, tok
    assert not icv.is_steered(model), "a test left the shared real model steered"
