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

The hooks are in place before vLLM compiles the model (its warm-up run comes after
``load_model``), so torch.compile traces the steering into the graph and CUDA graphs
capture it; the steps only rewrite buffers (:mod:`.hooks`).  The steering's shape
(its injections and slot count, and this plugin's version) joins vLLM's compile-cache
key through ``additional_config``, so a graph compiled without the plugin, or for
other vectors, is never loaded for this one.  Steering refuses to start rather than
serve unsteered output as steered: under inductor freezing (which folds the tables
into constants), and on a model runner that does not expose the batch as above.

Conditional steering (``steering_when``): when the library holds conditions and the
engine never splits a prompt over steps, a :class:`~.gating.RequestGate` decides each
gated request in the step that runs its prompt, from one unsteered reading pass run
before the real forward (:mod:`.gating`); a rejected request is armed as unsteered.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from ...errors import SteeringError
from .contract import (
    DECISIONS_METHOD,
    GATE_ARG,
    PLUGIN_NAME,
    STATUS_METHOD,
    STEERING_ARG,
    decode,
    load_library,
    vector_paths,
)
from .gating import GatedRow, RequestGate, gating_refusal
from .rows_guard import end_corrupted_requests
from .seeded_rows import rewind_cpu_generators
from .sites import site_modules, vllm_architecture
from .step import StepRequest, StepSteering

logger = logging.getLogger(__name__)
_RUNNER_PARTS = (
    "_model_forward",
    "input_batch",
    "query_start_loc",
    "requests",
    "get_model",
    "max_num_tokens",
    "max_num_reqs",
)


def register() -> None:
    """Steer the workers of this process when ``$ICV_VLLM_VECTORS`` is set (safe to call twice)."""
    if not vector_paths():
        return
    _check_plugins_allowed()
    end_corrupted_requests()  # in the engine core's process: its scheduler
    rewind_cpu_generators()  # in a worker's: a seeded prompt split over steps (seeded_rows)
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
    setattr(Worker, DECISIONS_METHOD, decisions)


def status(worker: Any) -> dict[str, Any] | None:
    """What a worker steers with (front ends check it through ``collective_rpc``); None: nothing.

    ``compiled``: the steering runs inside a compiled graph; ``graphs``: how many graphs
    torch.compile has made in this worker so far (a new steering must not add one);
    ``gating``: "" when the worker decides conditional steering, else why it cannot.
    """
    steering = getattr(worker.model_runner, "_icv_steering", None)
    if steering is None:
        return None
    from torch._dynamo.utils import counters

    gate = getattr(worker.model_runner, "_icv_gate", None)
    return {
        "vectors": steering.library.names,
        "conditions": steering.library.condition_names,
        "compiled": steering.static,
        "graphs": int(counters["stats"]["unique_graphs"]),
        "gating": getattr(worker.model_runner, "_icv_gating_refusal", "not set up"),
        "reading_passes": 0 if gate is None else gate.reading_passes,
    }


def decisions(worker: Any, report_ids: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Conditional steering's decisions for the front end's ids: id -> vLLM request id -> decision."""
    gate = getattr(worker.model_runner, "_icv_gate", None)
    return {} if gate is None else gate.reports([str(i) for i in report_ids])


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
    """Hook ``runner``'s model and fill the hooks' buffers before each of its forward steps."""
    static = check_steerable(vllm_config)
    missing = [part for part in _RUNNER_PARTS if not hasattr(runner, part)]
    if missing:
        raise SteeringError(
            f"icv steering needs vLLM's v1 model runner, and this one ({type(runner).__name__}) has no "
            f"{', '.join(missing)}: set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    model = runner.get_model()
    vllm_architecture(model)  # a family the plugin has no checked sites for is refused here
    library = load_library(vllm_config.model_config)
    parameter = next(model.parameters())
    steering = StepSteering(
        library,
        functools.partial(site_modules, model),
        parameter.device,
        vllm_config.model_config.dtype,
        max_tokens=step_capacity(runner, vllm_config),
        max_requests=int(runner.max_num_reqs),
        static=static,
    )
    _key_compile_cache(vllm_config, steering)
    refusal = gating_refusal(vllm_config, library)
    gate = RequestGate(library, site_modules(model, "block")) if not refusal else None
    forward = runner._model_forward

    @functools.wraps(forward)
    def steered_forward(*args: Any, **kwargs: Any) -> Any:
        positions: Any = kwargs.get("positions", args[1] if len(args) > 1 else None)
        if gate is not None:
            decide_step(gate, runner, lambda: forward(*args, **kwargs))
        arm(steering, runner, int(positions.shape[-1]), gate)
        try:
            return forward(*args, **kwargs)
        finally:
            steering.disarm()

    runner._model_forward = steered_forward
    runner._icv_steering = steering
    runner._icv_gate = gate
    runner._icv_gating_refusal = refusal
    logger.info(
        "icv: steering with %d vector(s) (%s), %s%s",
        len(library.names),
        ", ".join(library.names),
        "inside the compiled graph" if static else "eager",
        f"; not for this model: {', '.join(library.unfit)}" if library.unfit else "",
    )
    return steering


def check_steerable(vllm_config: Any) -> bool:
    """Whether the forward is compiled or captured (True) or eager; refuse what cannot steer."""
    from vllm.config import CompilationMode, CUDAGraphMode

    compilation = vllm_config.compilation_config
    inductor = compilation.inductor_compile_config or {}
    if inductor.get("freezing") or inductor.get("max_autotune"):
        raise SteeringError(
            "icv steering cannot run under inductor freezing (max_autotune turns it on on CPUs): it folds "
            "the steering tables into constants, so new steerings would never reach the graph; leave "
            "freezing and max_autotune off"
        )
    return compilation.mode != CompilationMode.NONE or compilation.cudagraph_mode not in (
        None,
        CUDAGraphMode.NONE,
    )


def step_capacity(runner: Any, vllm_config: Any) -> int:
    """The most tokens one forward can carry: scheduled tokens, or the largest CUDA-graph size."""
    sizes = vllm_config.compilation_config.cudagraph_capture_sizes or []
    return max([int(runner.max_num_tokens), *map(int, sizes)])


def _key_compile_cache(vllm_config: Any, steering: StepSteering) -> None:
    # vLLM keys its AOT compile cache by the config's hash (additional_config included) and
    # checks the sources it traced: with this, a graph traced without these hooks is never
    # reloaded for a steered engine, nor one with other injections or table sizes.
    extra = vllm_config.additional_config
    if not isinstance(extra, dict):
        raise SteeringError("icv steering needs vLLM's additional_config to be a dict (or unset)")
    extra[PLUGIN_NAME] = {
        "injections": [f"{mode}@{site}" for mode, site in steering.injections],
        "slots": int(vllm_config.scheduler_config.max_num_seqs) + 1,
        "static": steering.static,
    }


def decide_step(gate: RequestGate, runner: Any, read_forward: Any) -> None:
    """Decide the gated requests whose prompt this step runs (one unsteered reading pass, if any)."""
    batch = runner.input_batch
    count = batch.num_reqs
    rows = []
    for row, req_id in enumerate(batch.req_ids[:count]):
        if gate.steered(req_id) is not None:
            continue
        state = runner.requests[req_id]
        params = state.sampling_params
        extra = params.extra_args if params is not None else None
        raw = extra.get(STEERING_ARG) if extra else None
        rule = gate.rule_of(raw) if raw is not None else None
        if rule is not None:
            report = extra.get(GATE_ARG) if extra else None
            rows.append(
                GatedRow(
                    req_id, None if report is None else str(report), rule, row, int(state.num_prompt_tokens)
                )
            )
    if rows:
        computed = np.asarray(batch.num_computed_tokens_cpu[:count])
        gate.decide(rows, runner.query_start_loc.np[: count + 1], computed, read_forward)
    gate.forget(runner.requests)


def arm(steering: StepSteering, runner: Any, num_tokens: int, gate: RequestGate | None = None) -> None:
    """Fill ``steering``'s buffers for the step ``runner`` is about to run (its batch as the runner built it)."""
    batch = runner.input_batch
    count = batch.num_reqs
    requests = [_step_request(runner.requests[req_id], req_id, gate) for req_id in batch.req_ids[:count]]
    if all(r.steering is None for r in requests):
        return  # the index already points every token at slot 0 (cleared after each step)
    computed = np.asarray(batch.num_computed_tokens_cpu[:count])
    steering.arm(requests, runner.query_start_loc.np[: count + 1], computed, num_tokens)


def _step_request(state: Any, req_id: str, gate: RequestGate | None) -> StepRequest:
    params = state.sampling_params
    extra = params.extra_args if params is not None else None
    raw = extra.get(STEERING_ARG) if extra else None
    if raw is not None and _rejected(raw, req_id, gate):
        raw = None  # a gated request its rule rejected (or not decided): the bare model's tokens
    return StepRequest(raw, int(state.num_prompt_tokens))


@functools.lru_cache(maxsize=1024)
def _has_rule(raw: str) -> bool:
    spec = decode(raw)
    return spec is not None and spec.when is not None


def _rejected(raw: str, req_id: str, gate: RequestGate | None) -> bool:
    if gate is None:
        # No gate in this worker (the front ends refuse a rule then): a rule never steers here.
        return _has_rule(raw)
    if gate.rule_of(raw) is None:
        return False
    return gate.steered(req_id) is not True
