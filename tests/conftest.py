import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import DEMOS, ByteTokenizer, tiny_model  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny models run fastest on one thread (op overhead dominates); real models use all cores."""
    import torch

    before = torch.get_num_threads()
    if request.node.get_closest_marker("real_model") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
