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


def config(mode, cudagraphs, inductor=None):
    return SimpleNamespace(
        compilation_config=SimpleNamespace(
            mode=mode, cudagraph_mode=cudagraphs, inductor_compile_config=inductor or {}
        )
    )


def test_compiled_and_captured_engines_steer_and_inductor_freezing_is_refused():
    from vllm.config import CompilationMode, CUDAGraphMode

    assert worker.check_steerable(config(CompilationMode.NONE, CUDAGraphMode.NONE)) is False
    assert worker.check_steerable(config(CompilationMode.DYNAMO_TRACE_ONCE, CUDAGraphMode.NONE)) is True
    assert worker.check_steerable(config(CompilationMode.VLLM_COMPILE, CUDAGraphMode.PIECEWISE)) is True
    assert worker.check_steerable(config(CompilationMode.NONE, CUDAGraphMode.FULL)) is True
    for inductor in ({"freezing": True}, {"max_autotune": True}):
        with pytest.raises(SteeringError, match="freezing"):
            worker.check_steerable(config(CompilationMode.DYNAMO_TRACE_ONCE, CUDAGraphMode.NONE, inductor))


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


class FakeScheduler:
    """The two parts of vLLM's scheduler that end_with_error uses."""

    def __init__(self, clients):
        self.requests = {rid: SimpleNamespace(client_index=c) for rid, c in clients.items()}
        self.finished = {}

    def finish_requests(self, request_ids, status):
        for rid in request_ids:
            self.finished[rid] = status
            self.requests.pop(rid)


def test_a_row_with_nan_logits_ends_alone_with_an_error_and_no_token():
    from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
    from vllm.v1.request import RequestStatus

    from icv.serving.vllm.rows_guard import corrupted, end_with_error

    scheduler = FakeScheduler({"good": 0, "bad": 0, "other-client": 1})
    outputs = {0: EngineCoreOutputs(outputs=[EngineCoreOutput("good", [11]), EngineCoreOutput("bad", [0])])}
    bad = corrupted({"good": 0, "bad": 576, "other-client": 3})
    assert bad == {"bad", "other-client"}
    assert end_with_error(scheduler, outputs, bad) == ["bad", "other-client"]
    good, broken = outputs[0].outputs
    assert (good.new_token_ids, good.finish_reason) == ([11], None)  # the rest of the batch goes on
    assert (broken.new_token_ids, broken.finish_reason) == ([], FinishReason.ERROR)
    (late,) = outputs[1].outputs  # a request without an output this step still hears of its end
    assert (late.request_id, late.finish_reason) == ("other-client", FinishReason.ERROR)
    assert scheduler.finished == {
        "bad": RequestStatus.FINISHED_ERROR,
        "other-client": RequestStatus.FINISHED_ERROR,
    }
    assert list(scheduler.requests) == ["good"]


def test_the_plugin_turns_on_vllms_nan_count_and_wraps_its_scheduler(monkeypatch, tmp_path):
    from vllm.v1.core.sched.scheduler import Scheduler

    from icv.serving.vllm.contract import plugin_environment

    assert plugin_environment([tmp_path], {})["VLLM_COMPUTE_NANS_IN_LOGITS"] == "1"
    assert (
        plugin_environment([tmp_path], {"VLLM_COMPUTE_NANS_IN_LOGITS": "0"})["VLLM_COMPUTE_NANS_IN_LOGITS"]
        == "0"
    )
    monkeypatch.setattr(Scheduler, "update_from_output", Scheduler.update_from_output)
    monkeypatch.setenv(VECTORS_ENV, str(tmp_path))
    monkeypatch.setenv("VLLM_PLUGINS", "icv")
    from vllm.v1.worker.gpu_worker import Worker

    monkeypatch.setattr(Worker, "load_model", Worker.load_model)
    worker.register()
    assert getattr(Scheduler.update_from_output, "_icv_guard", False)
