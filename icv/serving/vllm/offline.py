"""Steering vLLM's offline ``LLM``: every request alike, or each through its own ``SamplingParams``.

::

    from vllm import SamplingParams
    from icv.serving.vllm import SteeredLLM

    llm = SteeredLLM(vectors=["vectors/"], dtype="float32", max_model_len=512)
    params = SamplingParams(max_tokens=30, temperature=0,
                            extra_args={"steering": [{"vector": "positive", "strength": 0.06}],
                                        "steering_positions": "generated"})
    outputs = llm.generate(["The food was cold."], params)

A request's ``extra_args`` take the same ``steering``, ``steering_positions`` and
``steering_when`` fields as the HTTP API; a request without a ``steering`` field gets the
``steering`` given to :class:`SteeredLLM` (none by default), and ``"steering": []`` opts
out of it.  With ``steering_when`` (conditional steering: the engine must not split
prompts, ``enable_chunked_prefill=False``), each ``RequestOutput`` carries the decision
as ``output.steering_decision`` (``{"steered": bool, "scores": {...}}``; ``None`` for an
ungated request).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import OptionError, SteeringError
from ...models import model_source
from ..request import POSITIONS_FIELD, STEERING_FIELD, WHEN_FIELD, SteeringSpec, parse_steering
from .contract import (
    DECISIONS_METHOD,
    GATE_ARG,
    STATUS_METHOD,
    STEERING_ARG,
    cache_salt,
    encode,
    load_library,
    plugin_environment,
)


class SteeredLLM:
    """vLLM's ``LLM`` with the plugin's vectors loaded in every worker.

    ``model``: anything :func:`icv.load_model` takes (default: the embedded model);
    ``vectors``: vector files or folders (a vector's name is its file's stem);
    ``steering``/``steering_positions``: what requests without their own ``steering``
    get; other keyword arguments go to ``vllm.LLM`` (its default compilation steers,
    and so does ``enforce_eager=True``).  vLLM's processes read the vectors from
    ``$ICV_VLLM_VECTORS``, which this sets (with ``VLLM_PLUGINS``) for this process.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        vectors: Iterable[str | os.PathLike[str]] = (),
        *,
        steering: Any = None,
        steering_positions: str | None = None,
        **llm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        paths = [str(Path(p)) for p in vectors]
        if not paths:
            raise OptionError("SteeredLLM needs vector files or folders: vectors=[...]")
        source, name = model_source(model)
        os.environ.update(plugin_environment(paths, os.environ))  # vLLM's processes inherit it
        llm_kwargs.setdefault("served_model_name", name)
        self.llm = LLM(model=source, **llm_kwargs)
        self.library = load_library(self.llm.llm_engine.vllm_config.model_config)
        statuses = self.llm.collective_rpc(STATUS_METHOD)
        check_workers(statuses, self.library.names)
        # Why the workers cannot decide a steering_when rule ("" when they can).
        self.gating = next((str(s.get("gating", "")) for s in statuses if s.get("gating")), "")
        # What requests without a 'steering' field get (None: nothing); settable.
        self.steering: SteeringSpec | None = self._resolve(
            {STEERING_FIELD: steering, POSITIONS_FIELD: steering_positions}
        )

    def generate(self, prompts: Any, sampling_params: Any = None, **kwargs: Any) -> list[Any]:
        """``LLM.generate`` with each request's steering checked, applied and cache-salted."""
        from vllm import SamplingParams

        many = isinstance(prompts, Sequence) and not isinstance(prompts, str)
        prompt_list = list(prompts) if many else [prompts]
        if sampling_params is None:
            sampling_params = SamplingParams()
        params_list = (
            list(sampling_params)
            if isinstance(sampling_params, Sequence)
            else [sampling_params] * len(prompt_list)
        )
        if len(params_list) != len(prompt_list):
            raise OptionError(f"{len(params_list)} sampling params for {len(prompt_list)} prompts")
        steered = [self.prepare(p, s) for p, s in zip(prompt_list, params_list, strict=True)]
        outputs = self.llm.generate([p for p, _ in steered], [s for _, s in steered], **kwargs)
        gated = [(s.extra_args or {}).get(GATE_ARG) for _, s in steered]
        found: dict[str, Any] = {}
        if any(gated):
            answers = self.llm.collective_rpc(DECISIONS_METHOD, args=([g for g in gated if g],))
            found = answers[0] if answers else {}
        for output, gate_id in zip(outputs, gated, strict=True):
            decisions = list(found.get(gate_id, {}).values()) if gate_id else []
            output.steering_decision = decisions[0] if decisions else None
        return outputs

    def prepare(self, prompt: Any, params: Any) -> tuple[dict[str, Any], Any]:
        """``(prompt, params)`` as the engine takes them: steering resolved into the extra argument."""
        extra = dict(params.extra_args or {})
        spec = self._resolve(extra) if STEERING_FIELD in extra else self._resolve_spec(self.steering)
        for field in (STEERING_FIELD, POSITIONS_FIELD, WHEN_FIELD, STEERING_ARG, GATE_ARG):
            extra.pop(field, None)
        prompt = _as_prompt(prompt)
        if spec is not None:
            extra[STEERING_ARG] = encode(spec)
            fingerprint = self.library.fingerprint(spec)
            if spec.when is not None:
                self._check_gated(params)
                # An id to fetch the decision by, and a cache salt of its own (decided at the prefill).
                extra[GATE_ARG] = uuid.uuid4().hex
                fingerprint = f"{fingerprint}-{extra[GATE_ARG]}"
            prompt["cache_salt"] = cache_salt(fingerprint, prompt.get("cache_salt"))
        params = params.clone()
        params.extra_args = extra or None
        return prompt, params

    def _check_gated(self, params: Any) -> None:
        if self.gating:
            raise SteeringError(
                f"'{WHEN_FIELD}' (conditional steering) cannot run on this engine: {self.gating}"
            )
        if int(getattr(params, "n", 1) or 1) != 1:
            raise OptionError(
                f"'{WHEN_FIELD}' takes one output per prompt (n=1): give the prompt again for more"
            )

    def _resolve(self, fields: Mapping[str, Any]) -> SteeringSpec | None:
        return self._resolve_spec(parse_steering(fields))

    def _resolve_spec(self, spec: SteeringSpec | None) -> SteeringSpec | None:
        if spec is None:
            return None
        self.library.compose(spec)  # vectors that cannot combine fail here, not in a worker
        return self.library.resolve(spec)


def check_workers(statuses: Sequence[Any], names: Sequence[str]) -> None:
    """Refuse to go on unless every worker hooked its model and loaded the same vectors."""
    for rank, status in enumerate(statuses):
        if not status or sorted(status.get("vectors", ())) != sorted(names):
            raise SteeringError(
                f"vLLM worker {rank} is not steering with the vectors loaded here ({', '.join(names)}): "
                f"it reports {status!r}; is icv installed in vLLM's environment (pip install -e .)?"
            )


def _as_prompt(prompt: Any) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"prompt": prompt}
    if isinstance(prompt, Mapping):
        return dict(prompt)
    raise OptionError(f"a prompt must be a string or a vLLM prompt dict, got {type(prompt).__name__}")
