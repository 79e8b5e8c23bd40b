"""OpenAI's completions and chat completions, as this server reads and writes them.

Reading: every request field the server knows is one :class:`Field` of
:data:`FIELDS`: its name, the routes that take it, its type, bounds, default and
meaning, said once.  :func:`parse_completion` and :func:`parse_chat` check a JSON
body against that table and return what the engine needs, or raise
:class:`RequestError` (400) naming the field at fault, with a message made from
the same entry (``'top_p' must be a number in (0, 1], got 0``); the reference
table in docs/serving.md is :func:`fields_markdown` of it.  Fields that ask for
something the server does not do are in the table too, accepted only at their
neutral value (``n: 1``, ``echo: false``, ``frequency_penalty: 0`` ...); any other
field is refused, as OpenAI refuses unrecognized arguments, rather than silently
ignored.  The steering fields are read by :func:`icv.serving.request.parse_steering`,
which the vLLM plugin shares.

Writing: the response and stream-chunk objects of both endpoints, with one extra
top-level field, ``steering``: the vectors, strengths and positions that were
applied (``null`` when unsteered).
"""

from __future__ import annotations

import json
import math
import numbers
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RequestError
from ..positions import POSITIONS
from .request import (
    DEFAULT_MAX_STRENGTH,
    DEFAULT_MAX_VECTORS,
    POSITIONS_FIELD,
    STEERING_FIELD,
    WHEN_FIELD,
    SteeringSpec,
    parse_steering,
)
from .sampling import SamplingParams

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_STOP_STRINGS = 4
MAX_PROMPTS = 32
ROLES = ("system", "user", "assistant", "developer", "tool")
COMPLETIONS, CHAT = "completions", "chat"
BOTH = frozenset({COMPLETIONS, CHAT})

Reader = Callable[["Field", object], Any]  # (field, value) -> the value checked, or RequestError
PLAIN_KINDS = ("string", "integer", "number", "boolean", "any value")


@dataclass(frozen=True)
class Field:
    """One request field, described once: parsing, error messages and the docs' table derive from it.

    ``kind`` is the JSON type of a plain field (``string``, ``integer``, ``number``,
    ``boolean``), checked against ``low`` / ``high`` (``open_low``: ``low`` itself
    refused); a field of another shape names it in ``kind`` and brings its ``read``.
    ``neutral``: the values at which a field the server does not implement is
    accepted (it then asks for nothing).  ``default`` is what an absent or ``null``
    field means.
    """

    name: str
    kind: str
    doc: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    routes: frozenset[str] = BOTH
    read: Reader | None = None
    neutral: tuple[Any, ...] | None = None
    required: bool = False

    @property
    def expects(self) -> str:
        """What a valid value is, as error messages and the docs say it."""
        if self.neutral is not None:
            return f"only {_json_text(self.neutral[0])} (not supported by this server)"
        if self.kind not in PLAIN_KINDS or self.kind == "any value":
            return self.kind
        article = "an" if self.kind[0] in "aeiou" else "a"
        if self.kind == "boolean":
            return "true or false"
        if self.low is None and self.high is None:
            return f"{article} {self.kind}"
        if self.high is None:
            return f"{article} {self.kind} >= {_number_text(self.low)}"
        bracket = "(" if self.open_low else "["
        return f"{article} {self.kind} in {bracket}{_number_text(self.low)}, {_number_text(self.high)}]"

    def value(self, body: Mapping[str, Any]) -> Any:
        """This field's value in ``body``, checked; its default when absent or ``null``."""
        value = body.get(self.name)
        if value is None and self.required:
            raise RequestError(
                f"'{self.name}' is required: {self.expects}", param=self.name, code="invalid_type"
            )
        if value is None:
            return self.default
        if self.neutral is not None:
            if not _is_neutral(value, self.neutral):
                raise RequestError(
                    f"'{self.name}' is not supported by this server (only its default, {self.neutral[0]!r})",
                    param=self.name,
                    code="unsupported_parameter",
                )
            return self.default
        read = self.read or _PLAIN[self.kind]
        return read(self, value)


def _number_text(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else f"{value:g}"


def _is_neutral(value: object, neutral: tuple[Any, ...]) -> bool:
    # True == 1 in Python: a boolean is neutral only where a boolean is.
    return any(value == n and isinstance(value, bool) == isinstance(n, bool) for n in neutral)


# -- reading plain values --------------------------------------------------------------


def _read_number(field: Field, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _wrong(field, value, "invalid_type")
    number = float(value)
    if not _within(field, number):
        raise _wrong(field, value, "invalid_value")
    return number


def _read_integer(field: Field, value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _wrong(field, value, "invalid_type")
    number = int(value)
    if not _within(field, number):
        raise _wrong(field, value, "invalid_value")
    return number


def _read_boolean(field: Field, value: object) -> bool:
    if not isinstance(value, bool):
        raise _wrong(field, value, "invalid_type")
    return value


def _read_string(field: Field, value: object) -> str:
    if not isinstance(value, str):
        raise _wrong(field, value, "invalid_type")
    return value


def _read_anything(_field: Field, value: object) -> object:
    return value


def _within(field: Field, number: float) -> bool:
    if field.low is not None and (number < field.low or (field.open_low and number == field.low)):
        return False
    return field.high is None or number <= field.high


def _wrong(field: Field, value: object, code: str) -> RequestError:
    return RequestError(
        f"'{field.name}' must be {field.expects}, got {value!r:.40}", param=field.name, code=code
    )


_PLAIN: dict[str, Reader] = {
    "number": _read_number,
    "integer": _read_integer,
    "boolean": _read_boolean,
    "string": _read_string,
    "any value": _read_anything,
}


# -- reading shaped values -------------------------------------------------------------


def _read_prompt(field: Field, value: object) -> tuple[str | tuple[int, ...], ...]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids."""
    if isinstance(value, str):
        return (value,)
    prompts: tuple = ()
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            prompts = tuple(value)
        elif all(_is_token(v) for v in value):
            prompts = (tuple(value),)
        elif all(isinstance(v, list) and v and all(_is_token(t) for t in v) for v in value):
            prompts = tuple(tuple(v) for v in value)
    if not prompts:
        raise RequestError(f"'{field.name}' must be {field.kind}", param=field.name, code="invalid_type")
    _check_count(field, len(prompts), MAX_PROMPTS, "prompts")
    return prompts


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_stop(field: Field, value: object) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"'{field.name}' must be {field.kind}", param=field.name, code="invalid_type")
    _check_count(field, len(stops), MAX_STOP_STRINGS, "strings")
    return tuple(stops)


def _check_count(field: Field, count: int, limit: int, items: str) -> None:
    if count > limit:
        raise RequestError(
            f"'{field.name}' holds {count} {items}; at most {limit}", param=field.name, code="invalid_value"
        )


def _read_stream_options(field: Field, value: object) -> bool:
    """``include_usage`` of the options (``false`` when absent)."""
    if not (isinstance(value, Mapping) and set(value) <= {"include_usage"}):
        raise RequestError(f"'{field.name}' must be {field.kind}", param=field.name, code="invalid_value")
    include = value.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise RequestError(
            f"'{field.name}.include_usage' must be true or false, got {include!r:.40}",
            param=f"{field.name}.include_usage",
            code="invalid_type",
        )
    return bool(include)


def _read_messages(field: Field, value: object) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise RequestError(f"'{field.name}' must be {field.kind}", param=field.name, code="invalid_type")
    return tuple(_message(m, f"{field.name}[{i}]") for i, m in enumerate(value))


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


def _read_by_parse_steering(field: Field, _value: object) -> object:
    raise AssertionError(f"'{field.name}' is read by parse_steering, with the other steering field")


# -- the table -------------------------------------------------------------------------


def _unsupported(name: str, *neutral: Any, doc: str) -> Field:
    return Field(name, "unsupported", doc, neutral=neutral)


FIELDS: tuple[Field, ...] = (
    Field("model", "string", "the served model's id (`GET /v1/models`); any other is a 404"),
    Field(
        "prompt",
        "a string, a list of strings, a list of token ids or a list of lists of token ids",
        f"what to complete; up to {MAX_PROMPTS} prompts, one choice each",
        routes=frozenset({COMPLETIONS}),
        read=_read_prompt,
        required=True,
    ),
    Field(
        "messages",
        'a non-empty list of {"role", "content"} objects',
        f"the conversation, rendered by the model's chat template; roles: {', '.join(ROLES)}; "
        "content a string or a list of text parts",
        routes=frozenset({CHAT}),
        read=_read_messages,
        required=True,
    ),
    Field(
        "max_tokens",
        "integer",
        "tokens to generate at most, up to the server's `--max-tokens` and the context; "
        "chat: as many as those allow when absent",
        default=COMPLETIONS_DEFAULT_MAX_TOKENS,
        low=1,
    ),
    Field(
        "max_completion_tokens",
        "integer",
        "chat's name for `max_tokens` (it wins when both are given)",
        low=1,
        routes=frozenset({CHAT}),
    ),
    Field("temperature", "number", "0 is greedy (the argmax)", default=1.0, low=0.0, high=2.0),
    Field("top_p", "number", "nucleus sampling's mass", default=1.0, low=0.0, high=1.0, open_low=True),
    Field(
        "seed",
        "integer",
        "seeds the request's own random generator (all 64 bits): the same text whatever shares the batch",
        low=-(2**63),
        high=2**64 - 1,
    ),
    Field(
        "stop",
        f"a non-empty string or a list of up to {MAX_STOP_STRINGS} of them",
        "text that ends the generation, never part of the output",
        default=(),
        read=_read_stop,
    ),
    Field("stream", "boolean", "server-sent events, one per piece of text", default=False),
    Field(
        "stream_options",
        'an object holding only "include_usage" (true or false)',
        "only with `stream: true`; `include_usage` adds a last chunk with the usage",
        read=_read_stream_options,
    ),
    Field(
        "ignore_eos",
        "boolean",
        "vLLM's: generate `max_tokens` whatever the end-of-sequence token",
        default=False,
    ),
    Field("user", "any value", "OpenAI's end-user id: accepted and not used"),
    Field(
        STEERING_FIELD,
        'a list of {"vector": name, "strength": number} objects (or one such object)',
        "the vectors to steer with, summed; a strength left out is the vector's recommended one; "
        f"strengths within ±{DEFAULT_MAX_STRENGTH:g}; at most {DEFAULT_MAX_VECTORS} vectors",
        read=_read_by_parse_steering,
    ),
    Field(
        POSITIONS_FIELD,
        f"one of {', '.join(POSITIONS)}",
        "where the steering acts, as `icv.steer(positions=...)`",
        default="all",
        read=_read_by_parse_steering,
    ),
    Field(
        WHEN_FIELD,
        "a rule of condition names: `toxic`, `toxic & ~question`, `(a | b) & ~c`",
        "steer only prompts the rule accepts (conditions served among the vectors, as "
        "`icv.steer(when=...)`); each choice reports `steering_decision`",
        read=_read_by_parse_steering,
    ),
    _unsupported("n", 1, doc="one choice per prompt"),
    _unsupported("best_of", 1, doc="one candidate per prompt"),
    _unsupported("echo", False, doc="the prompt is not repeated in the output"),
    _unsupported("suffix", "", doc="no text after the completion"),
    _unsupported("frequency_penalty", 0, doc="no penalties"),
    _unsupported("presence_penalty", 0, doc="no penalties"),
    _unsupported("logit_bias", {}, doc="no logit bias"),
    # vLLM's `logprobs: 0` asks for the sampled token's logprob: this server returns none.
    _unsupported("logprobs", False, doc="no log probabilities (`logprobs: 0` asks for one: refused)"),
    _unsupported("top_logprobs", 0, doc="no log probabilities"),
    _unsupported("tools", [], doc="no tool calls"),
    _unsupported("tool_choice", "none", doc="no tool calls"),
    _unsupported("response_format", {"type": "text"}, doc="text only"),
)
FIELD: dict[str, Field] = {field.name: field for field in FIELDS}


# -- parsing a request -----------------------------------------------------------------


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
    return _request(body, COMPLETIONS, max_vectors)


def parse_chat(body: Mapping[str, Any], *, max_vectors: int) -> GenerationRequest:
    """Check a ``POST /v1/chat/completions`` body (the messages are rendered by the caller)."""
    return _request(body, CHAT, max_vectors)


def _request(body: Mapping[str, Any], route: str, max_vectors: int) -> GenerationRequest:
    _check_fields(body, route)
    chat = route == CHAT
    prompts = FIELD["prompt"].value(body) if not chat else ()
    messages = FIELD["messages"].value(body) if chat else ()
    model = FIELD["model"].value(body)
    include_usage = bool(FIELD["stream_options"].value(body))
    stream = FIELD["stream"].value(body)
    if body.get("stream_options") is not None and not stream:
        # As OpenAI and vLLM: options of a stream in a request that asks for none are a mistake.
        raise RequestError(
            "'stream_options' is only allowed when 'stream' is true",
            param="stream_options",
            code="invalid_value",
        )
    limit = FIELD["max_tokens"]
    if chat and body.get("max_completion_tokens") is not None:
        limit = FIELD["max_completion_tokens"]
    params = SamplingParams(
        max_tokens=limit.value(body),
        temperature=FIELD["temperature"].value(body),
        top_p=FIELD["top_p"].value(body),
        seed=FIELD["seed"].value(body),
        stop=FIELD["stop"].value(body),
        ignore_eos=FIELD["ignore_eos"].value(body),
    )
    return GenerationRequest(
        model=model,
        prompts=prompts,
        params=params,
        max_tokens_given=body.get(limit.name) is not None,
        stream=stream,
        include_usage=include_usage,
        steering=parse_steering(body, max_vectors=max_vectors),
        messages=messages,
    )


def _check_fields(body: Mapping[str, Any], route: str) -> None:
    """Refuse a field this route does not know, and one the server lacks at other than its neutral value."""
    for key in body:
        field = FIELD.get(key)
        if field is None or route not in field.routes:
            raise RequestError(
                f"unrecognized request argument '{key:.60}'", param=key, code="unknown_parameter"
            )
        if field.neutral is not None:
            field.value(body)


def fields_markdown() -> str:
    """The request fields as a markdown table (docs/serving.md holds it; a test keeps the two equal)."""
    routes = {BOTH: "both", frozenset({COMPLETIONS}): "completions", frozenset({CHAT}): "chat"}
    rows = ["| field | routes | value | default | meaning |", "|---|---|---|---|---|"]
    for field in FIELDS:
        if field.neutral is None:
            default = "" if field.default in (None, ()) else f"`{_json_text(field.default)}`"
            rows.append(
                f"| `{field.name}` | {routes[field.routes]} | {field.expects} | {default} | {field.doc} |"
            )
    unsupported = ", ".join(
        f"`{f.name}` ({_json_text(f.neutral[0])})" for f in FIELDS if f.neutral is not None
    )
    rows.append(
        f"| {unsupported} | both | only the value shown | | not supported: any other value is a 400 |"
    )
    return "\n".join(rows)


def _json_text(value: Any) -> str:
    return json.dumps(value)


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
