"""OpenAI's completions and chat completions, as this server reads and writes them.

Reading: :func:`parse_completion` and :func:`parse_chat` check a JSON body and
return what the engine needs, or raise :class:`RequestError` (400) naming the
field at fault.  Fields the server implements are ``model``, ``prompt`` /
``messages``, ``max_tokens`` (chat also ``max_completion_tokens``),
``temperature``, ``top_p``, ``seed``, ``stop``, ``stream``, ``stream_options``,
``user``, vLLM's ``ignore_eos`` and the steering fields (:mod:`icv.serving.request`).  Fields that ask
for something it does not do are accepted only at their neutral value (``n: 1``,
``echo: false``, ``frequency_penalty: 0`` ...); any other field is refused, as
OpenAI refuses unrecognized arguments, rather than silently ignored.

Writing: the response and stream-chunk objects of both endpoints, with one extra
top-level field, ``steering``: the vectors, strengths and positions that were
applied (``null`` when unsteered).
"""

from __future__ import annotations

import math
import numbers
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RequestError
from .request import POSITIONS_FIELD, STEERING_FIELD, SteeringSpec, parse_steering
from .sampling import SamplingParams

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 4
MAX_PROMPTS = 32
ROLES = ("system", "user", "assistant", "developer", "tool")

_COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "user",
    "ignore_eos",
    STEERING_FIELD,
    POSITIONS_FIELD,
}
# Accepted only at these values: anything else asks for a feature this server lacks.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "frequency_penalty": (0, None),
    "presence_penalty": (0, None),
    "logit_bias": (None, {}),
    # vLLM's `logprobs: 0` asks for the sampled token's logprob: this server returns none.
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (False, None),
    "best_of": (1, None),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}
_COMPLETION_FIELDS = _COMMON | {"prompt"}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: prompts (text or token ids) or chat messages, and how to generate."""

    model: str | None
    prompts: tuple[str | tuple[int, ...], ...]
    params: SamplingParams
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    steering: SteeringSpec | None
    messages: tuple[dict[str, str], ...] = ()


def parse_completion(body: Mapping[str, Any], *, max_vectors: int) -> GenerationRequest:
    """Check a ``POST /v1/completions`` body."""
    _check_fields(body, _COMPLETION_FIELDS)
    return _request(body, _prompts(body.get("prompt")), (), body.get("max_tokens"), "max_tokens", max_vectors)


def parse_chat(body: Mapping[str, Any], *, max_vectors: int) -> GenerationRequest:
    """Check a ``POST /v1/chat/completions`` body (the messages are rendered by the caller)."""
    _check_fields(body, _CHAT_FIELDS)
    name, limit = "max_completion_tokens", body.get("max_completion_tokens")
    if limit is None:
        name, limit = "max_tokens", body.get("max_tokens")
    return _request(body, (), _messages(body.get("messages")), limit, name, max_vectors)


def _request(
    body: Mapping[str, Any],
    prompts: tuple,
    messages: tuple,
    max_tokens: object,
    max_name: str,
    max_vectors: int,
) -> GenerationRequest:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, Mapping) and set(options) <= {"include_usage"}):
        raise RequestError(
            "'stream_options' may only hold 'include_usage'", param="stream_options", code="invalid_value"
        )
    include_usage = _boolean((options or {}).get("include_usage"), "stream_options.include_usage", False)
    stream = _boolean(body.get("stream"), "stream", False)
    if options is not None and not stream:
        # As OpenAI and vLLM: options of a stream in a request that asks for none are a mistake.
        raise RequestError(
            "'stream_options' is only allowed when 'stream' is true",
            param="stream_options",
            code="invalid_value",
        )
    given = max_tokens is not None
    params = SamplingParams(
        max_tokens=_integer(max_tokens, max_name, COMPLETIONS_DEFAULT_MAX_TOKENS, low=1),
        temperature=_number(body.get("temperature"), "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body.get("top_p"), "top_p", 1.0, 0.0, 1.0, open_low=True),
        seed=_integer(body.get("seed"), "seed", None, low=-(2**63), high=2**64 - 1),
        stop=_stop(body.get("stop")),
        ignore_eos=_boolean(body.get("ignore_eos"), "ignore_eos", False),
    )
    return GenerationRequest(
        model=model,
        prompts=prompts,
        params=params,
        max_tokens_given=given,
        stream=stream,
        include_usage=include_usage,
        steering=parse_steering(body, max_vectors=max_vectors),
        messages=messages,
    )


def _check_fields(body: Mapping[str, Any], known: set[str]) -> None:
    for key, value in body.items():
        if key in known:
            continue
        if key not in _NEUTRAL:
            raise RequestError(
                f"unrecognized request argument '{key:.60}'", param=key, code="unknown_parameter"
            )
        if not _is_neutral(value, _NEUTRAL[key]):
            raise RequestError(
                f"'{key}' is not supported by this server (only its default, {_NEUTRAL[key][0]!r})",
                param=key,
                code="unsupported_parameter",
            )


def _is_neutral(value: object, neutral: tuple[Any, ...]) -> bool:
    # True == 1 in Python: a boolean is neutral only where a boolean is.
    return value is None or any(
        value == n and isinstance(value, bool) == isinstance(n, bool) for n in neutral
    )


# -- field checks ----------------------------------------------------------------------


def _number(
    value: object, name: str, default: float, low: float, high: float, open_low: bool = False
) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise RequestError(
            f"'{name}' must be a finite number, got {value!r:.40}", param=name, code="invalid_type"
        )
    number = float(value)
    if number < low or number > high or (open_low and number == low):
        bracket = "(" if open_low else "["
        raise RequestError(
            f"'{name}' must be in {bracket}{low:g}, {high:g}], got {number:g}",
            param=name,
            code="invalid_value",
        )
    return number


def _integer(value: object, name: str, default: int | None, low: int, high: int | None = None) -> Any:
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestError(f"'{name}' must be an integer, got {value!r:.40}", param=name, code="invalid_type")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise RequestError(
            f"'{name}' must be at least {low}, got {number}"
            if number < low
            else f"'{name}' must be at most {high}, got {number}",
            param=name,
            code="invalid_value",
        )
    return number


def _boolean(value: object, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(
            f"'{name}' must be true or false, got {value!r:.40}", param=name, code="invalid_type"
        )
    return value


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(
            "'stop' must be a non-empty string or a list of them", param="stop", code="invalid_type"
        )
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(
            f"'stop' holds {len(stops)} strings; at most {MAX_STOP_STRINGS}",
            param="stop",
            code="invalid_value",
        )
    return tuple(stops)


def _prompts(value: object) -> tuple[str | tuple[int, ...], ...]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            prompts: tuple = tuple(value)
        elif all(_is_token(v) for v in value):
            prompts = (tuple(value),)
        elif all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
            prompts = tuple(tuple(v) for v in value)
        else:
            prompts = ()
        if prompts:
            if len(prompts) > MAX_PROMPTS:
                raise RequestError(
                    f"'prompt' holds {len(prompts)} prompts; at most {MAX_PROMPTS}",
                    param="prompt",
                    code="invalid_value",
                )
            return prompts
    raise RequestError(
        "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        param="prompt",
        code="invalid_type",
    )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _messages(value: object) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(
            '\'messages\' must be a non-empty list of {"role", "content"} objects',
            param="messages",
            code="invalid_type",
        )
    return tuple(_message(m, f"messages[{i}]") for i, m in enumerate(value))


def _message(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise RequestError(
            f"'{where}' must be an object with 'role' and 'content'", param=where, code="invalid_type"
        )
    unknown = sorted(set(value) - {"role", "content", "name"})
    if unknown:
        raise RequestError(
            f"'{where}' has unsupported field(s) {', '.join(map(repr, unknown))[:120]}",
            param=where,
            code="invalid_value",
        )
    role = value.get("role")
    if role not in ROLES:
        raise RequestError(
            f"'{where}.role' must be one of {', '.join(ROLES)}", param=f"{where}.role", code="invalid_value"
        )
    message = {"role": str(role), "content": _content(value.get("content"), f"{where}.content")}
    if isinstance(value.get("name"), str):
        message["name"] = value["name"]
    return message


def _content(value: object, where: str) -> str:
    """A string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise RequestError(
        f"'{where}' must be a string or a list of text parts", param=where, code="invalid_type"
    )


# -- writing ---------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class Envelope:
    """What every object of one response shares."""

    id: str
    model: str
    steering: dict[str, Any] | None
    created: int

    @classmethod
    def new(cls, prefix: str, model: str, steering: dict[str, Any] | None) -> Envelope:
        return cls(new_id(prefix), model, steering, int(time.time()))

    def wrap(self, kind: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
            "steering": self.steering,
        }


def completion_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def chat_choice(index: int, text: str, finish_reason: str) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def chat_delta(index: int, delta: dict[str, str], finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def summed_usage(counts: Sequence[tuple[int, int]]) -> dict[str, int]:
    return usage(sum(p for p, _ in counts), sum(c for _, c in counts))
