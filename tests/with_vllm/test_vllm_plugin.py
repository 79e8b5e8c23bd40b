"""The plugin's refusals, checked against vLLM's own config types (no engine is started)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from icv.errors import SteeringError  # noqa: E402
from icv.serving.vllm import worker  # noqa: E402
from icv.serving.vllm.contract import VECTORS_ENV  # noqa: E402


def config(mode, cudagraphs):
    return SimpleNamespace(compilation_config=SimpleNamespace(mode=mode, cudagraph_mode=cudagraphs))


def test_only_an_eager_engine_is_steered():
    from vllm.config import CompilationMode, CUDAGraphMode

    worker.check_eager(config(CompilationMode.NONE, CUDAGraphMode.NONE))
    for mode, graphs in [
        (CompilationMode.VLLM_COMPILE, CUDAGraphMode.NONE),
        (CompilationMode.NONE, CUDAGraphMode.PIECEWISE),
    ]:
        with pytest.raises(SteeringError, match="--enforce-eager"):
            worker.check_eager(config(mode, graphs))


def test_vectors_without_the_http_plugin_stop_vllm(monkeypatch, tmp_path):
    monkeypatch.setenv(VECTORS_ENV, str(tmp_path))
    for plugins in (None, "lora_filesystem_resolver"):
        if plugins is None:
            monkeypatch.delenv("VLLM_PLUGINS", raising=False)
        else:
            monkeypatch.setenv("VLLM_PLUGINS", plugins)
        with pytest.raises(SteeringError, match="VLLM_PLUGINS=icv"):
            worker.register()


def test_without_vectors_the_plugin_does_nothing(monkeypatch):
    from vllm.v1.worker.gpu_worker import Worker

    monkeypatch.delenv(VECTORS_ENV, raising=False)
    before = Worker.load_model
    worker.register()
    assert Worker.load_model is before
