"""How steering travels through vLLM: vector files, the request's extra argument, the cache salt.

* Every vLLM process finds the vector files in ``$ICV_VLLM_VECTORS`` (paths separated
  by ``os.pathsep``, files or folders, as ``icv serve --vectors`` takes them).
* A request's steering reaches the workers as one entry of
  ``SamplingParams.extra_args`` (``vllm_xargs`` in vLLM's HTTP API): ``icv_steering``,
  the JSON of the request's ``steering`` fields with every strength made explicit.
  The front ends (the HTTP middleware, :class:`SteeredLLM`) write it after checking
  the request, so a worker only ever reads steering that a front end accepted.
* A steered request's prompt carries ``cache_salt`` = the steering's fingerprint, so
  vLLM's prefix cache reuses a prompt's KV only under the very same steering.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..library import ModelShape, VectorLibrary
from ..request import SteeringSpec, parse_steering, steering_fields

VECTORS_ENV = "ICV_VLLM_VECTORS"
STEERING_ARG = "icv_steering"
PLUGIN_NAME = "icv"  # the entry points' name, as VLLM_PLUGINS lists it
STATUS_METHOD = "icv_steering_status"  # a worker method (collective_rpc): what it steers with
# Conditional steering: the front end's id for a gated request (an extra argument), and the
# worker method (collective_rpc) that gives back the decisions made for such ids.
GATE_ARG = "icv_gate"
DECISIONS_METHOD = "icv_steering_decisions"
_MAX_SALT = 128  # vLLM's limit on cache_salt


def vector_paths() -> list[str]:
    """The vector files and folders named by ``$ICV_VLLM_VECTORS`` (empty: steering is off)."""
    return [p for p in os.environ.get(VECTORS_ENV, "").split(os.pathsep) if p]


def plugin_environment(paths: Sequence[str | os.PathLike[str]], env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the plugin on: ``$ICV_VLLM_VECTORS`` = ``paths``, ``icv`` added to ``VLLM_PLUGINS``,
    and vLLM's per-row NaN count on (``VLLM_COMPUTE_NANS_IN_LOGITS``)."""
    updated = dict(env)
    # Paths become absolute (vLLM's workers may start elsewhere); Hub ids stay as they are.
    updated[VECTORS_ENV] = os.pathsep.join(
        str(Path(p).resolve()) if Path(p).exists() else str(p) for p in paths
    )
    plugins = [p for p in updated.get("VLLM_PLUGINS", "").split(",") if p]
    updated["VLLM_PLUGINS"] = ",".join(plugins if PLUGIN_NAME in plugins else [*plugins, PLUGIN_NAME])
    # vLLM counts each row's NaN logits only when asked; the plugin ends those rows (rows_guard).
    updated.setdefault("VLLM_COMPUTE_NANS_IN_LOGITS", "1")
    return updated


def model_shape(model_config: Any) -> ModelShape:
    """What decides whether a vector fits the model vLLM serves (a ``vllm.config.ModelConfig``).

    The name is the served model name, so a local copy of a model matches the vectors
    made for its hub id when served under that id (``--served-model-name``).
    """
    text_config = model_config.hf_text_config
    return ModelShape(
        model_type=str(getattr(model_config.hf_config, "model_type", "") or ""),
        hidden_size=int(text_config.hidden_size),
        num_layers=int(text_config.num_hidden_layers),
        model_name=str(model_config.served_model_name or model_config.model),
    )


def load_library(model_config: Any) -> VectorLibrary:
    """The vectors of ``$ICV_VLLM_VECTORS`` that fit the served model (the others kept aside)."""
    return VectorLibrary.load(vector_paths(), model_shape(model_config))


def encode(spec: SteeringSpec) -> str:
    """The ``icv_steering`` extra argument for a resolved ``spec`` (canonical JSON)."""
    return json.dumps(steering_fields(spec), sort_keys=True, separators=(",", ":"))


def decode(raw: object) -> SteeringSpec | None:
    """The steering an ``icv_steering`` extra argument carries (``None``: unsteered)."""
    if not isinstance(raw, str):
        raise ValueError(f"'{STEERING_ARG}' must be a JSON string, got {type(raw).__name__}")
    fields = json.loads(raw)
    if not isinstance(fields, Mapping):
        raise ValueError(f"'{STEERING_ARG}' must hold a JSON object")
    return parse_steering(fields)


def cache_salt(fingerprint: str, salt: str | None = None) -> str:
    """The prefix-cache salt of a steered request (combined with the client's own salt, if any)."""
    mine = f"icv-{fingerprint}"
    if not salt:
        return mine
    combined = f"{salt}-{mine}"
    if len(combined) <= _MAX_SALT:
        return combined
    return f"{mine}-{hashlib.sha256(salt.encode()).hexdigest()[:32]}"
