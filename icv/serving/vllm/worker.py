"""The vLLM plugin: steer the model in every vLLM worker, each request with its own steering.

:func:`register` is the ``vllm.general_plugins`` entry point, which vLLM runs in
every process it starts (the API server, the engine core, each worker).  When
``$ICV_VLLM_VECTORS`` names vector files it wraps the worker's ``load_model``
(vLLM's v1 ``Worker``, which the CPU worker inherits): once the model is loaded,
:func:`attach` loads the vectors, makes a :class:`~.step.StepSteering` for the
model, and wraps that model runner's ``_model_forward`` so that every real step
first arms the hooks from the runner's own CPU-side view of the batch:
``input_batch.req_ids`` (batch order), ``query_start_loc`` (each request's tokens),
``input_batch.num_computed_tokens_cpu`` and ``requests[id]`` (prompt length and
``sampling_params.extra_args``).  These are the numbers vLLM itself built the step
from; reading them costs no device synchronisation, where the forward context's
attention metadata lives on the device.

Steering refuses to start rather than serve unsteered output as steered: hooks
act only on an eager model (``enforce_eager=True``, ``--enforce-eager``), and only
the v1 model runner exposes the batch as above.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
from torch import nn

from ...errors import SteeringError
from ...layers import architecture_of, decoder_layers
from .contract import PLUGIN_NAME, STATUS_METHOD, STEERING_ARG, load_library, vector_paths
from .step import StepRequest, StepSteering

logger = logging.getLogger(__name__)
_RUNNER_PARTS = ("_model_forward", "input_batch", "query_start_loc", "requests", "get_model")


def register() -> None:
    """Steer the workers of this process when ``$ICV_VLLM_VECTORS`` is set (safe to call twice)."""
    if not vector_paths():
        return
    _check_plugins_allowed()
    from vllm.v1.worker.gpu_worker import Worker

    if getattr(Worker.load_model, "_icv_steering", False):
        return
    original = Worker.load_model

    @functools.wraps(original)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        attach(self.model_runner, self.vllm_config)

    load_model._icv_steering = True  # type: ignore[attr-defined]
    Worker.load_model = load_model
    setattr(Worker, STATUS_METHOD, status)


def status(worker: Any) -> dict[str, Any] | None:
    """What a worker steers with (front ends check it through ``collective_rpc``); None: nothing."""
    steering = getattr(worker.model_runner, "_icv_steering", None)
    return None if steering is None else {"vectors": steering.library.names}


def _check_plugins_allowed() -> None:
    # Without the endpoint plugin, vLLM's HTTP server would silently ignore a request's
    # 'steering' field; it loads only when VLLM_PLUGINS names it.
    import vllm.envs as envs

    allowed = envs.VLLM_PLUGINS
    if allowed is None or PLUGIN_NAME not in allowed:
        raise SteeringError(
            f"icv steering is on ($ICV_VLLM_VECTORS is set) but VLLM_PLUGINS does not name "
            f"'{PLUGIN_NAME}': set VLLM_PLUGINS={PLUGIN_NAME} (plus any other plugin you use), so that "
            "vLLM's OpenAI server reads each request's 'steering' field instead of ignoring it"
        )


def attach(runner: Any, vllm_config: Any) -> StepSteering:
    """Hook ``runner``'s model and arm the hooks before each of its forward steps."""
    check_eager(vllm_config)
    missing = [part for part in _RUNNER_PARTS if not hasattr(runner, part)]
    if missing:
        raise SteeringError(
            f"icv steering needs vLLM's v1 model runner, and this one ({type(runner).__name__}) has no "
            f"{', '.join(missing)}: set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    model = runner.get_model()
    library = load_library(vllm_config.model_config)
    parameter = next(model.parameters())
    steering = StepSteering(
        library, functools.partial(site_modules, model), parameter.device, vllm_config.model_config.dtype
    )
    forward = runner._model_forward

    @functools.wraps(forward)
    def steered_forward(*args: Any, **kwargs: Any) -> Any:
        positions: Any = kwargs.get("positions", args[1] if len(args) > 1 else None)
        arm(steering, runner, int(positions.shape[-1]))
        try:
            return forward(*args, **kwargs)
        finally:
            steering.disarm()

    runner._model_forward = steered_forward
    runner._icv_steering = steering
    logger.info(
        "icv: steering with %d vector(s) (%s)%s",
        len(library.names),
        ", ".join(library.names),
        f"; not for this model: {', '.join(library.unfit)}" if library.unfit else "",
    )
    return steering


def check_eager(vllm_config: Any) -> None:
    """Refuse a compiled model or CUDA graphs: they would skip the hooks without a word."""
    from vllm.config import CompilationMode, CUDAGraphMode

    compilation = vllm_config.compilation_config
    if compilation.mode != CompilationMode.NONE or compilation.cudagraph_mode not in (
        None,
        CUDAGraphMode.NONE,
    ):
        raise SteeringError(
            "icv steering needs vLLM in eager mode (hooks do not run inside a compiled model or a "
            "CUDA graph): start vLLM with --enforce-eager, or LLM(..., enforce_eager=True)"
        )


def arm(steering: StepSteering, runner: Any, num_tokens: int) -> None:
    """Arm ``steering`` for the step ``runner`` is about to run (its batch as the runner built it)."""
    batch = runner.input_batch
    count = batch.num_reqs
    requests = [_step_request(runner.requests[req_id]) for req_id in batch.req_ids[:count]]
    if all(r.steering is None for r in requests):
        steering.disarm()
        return
    computed = np.asarray(batch.num_computed_tokens_cpu[:count])
    steering.arm(requests, runner.query_start_loc.np[: count + 1], computed, num_tokens)


def _step_request(state: Any) -> StepRequest:
    params = state.sampling_params
    extra = params.extra_args if params is not None else None
    return StepRequest(extra.get(STEERING_ARG) if extra else None, int(state.num_prompt_tokens))


def site_modules(model: nn.Module, site: str) -> list[tuple[int, nn.Module]]:
    """``(layer, module)`` at ``site`` for each decoder layer this worker runs (pipeline parallel: a part)."""
    architecture = architecture_of(model)
    path = {"mlp": architecture.mlp, "attn": architecture.attn}.get(site)
    found = []
    for index, layer in enumerate(decoder_layers(model)):
        if type(layer).__name__ == "PPMissingLayer":  # another pipeline stage's layer
            continue
        found.append((index, layer if path is None else layer.get_submodule(path)))
    if not found:
        raise SteeringError(f"this vLLM worker runs no decoder layer to steer at '{site}'")
    return found
