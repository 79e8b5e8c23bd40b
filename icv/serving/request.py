"""The steering part of a serving request: read from the JSON body, checked, normalised.

Every engine (the embedded transformers server, the vLLM plugin) reads steering
through :func:`parse_steering`, so the contract and its error messages are the
same everywhere.  Whether the named vectors exist is the library's business
(:class:`icv.serving.library.VectorLibrary`); this module checks only the shape.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RequestError
from ..positions import POSITIONS

STEERING_FIELD = "steering"
POSITIONS_FIELD = "steering_positions"
# Conditional steering: a rule of condition names (icv.condition.parse_rule) deciding each prompt.
WHEN_FIELD = "steering_when"
MAX_WHEN_CHARS = 500
TERM_KEYS = ("vector", "strength")
# Far beyond any useful rotation or addition, yet it keeps a typo (6 for 0.06) from
# turning a server's output into noise; servers may set their own bound.
DEFAULT_MAX_STRENGTH = 10.0
DEFAULT_MAX_VECTORS = 8


@dataclass(frozen=True)
class SteeringTerm:
    """One vector of a request, by name; ``strength=None`` means its recommended strength."""

    vector: str
    strength: float | None = None


@dataclass(frozen=True)
class SteeringSpec:
    """What a request asks for: a weighted sum of named vectors, applied at some positions."""

    terms: tuple[SteeringTerm, ...]
    positions: str = "all"
    when: str | None = None  # a rule of condition names; None: every prompt steered


def parse_steering(
    body: Mapping[str, Any],
    *,
    max_vectors: int = DEFAULT_MAX_VECTORS,
    max_strength: float = DEFAULT_MAX_STRENGTH,
) -> SteeringSpec | None:
    """The steering a request body asks for, or ``None`` when it asks for none.

    Raises :class:`RequestError` (400) naming the field at fault for anything else
    than a list of ``{"vector": NAME, "strength": NUMBER}`` objects (``strength``
    optional) and an optional ``steering_positions`` of ``all``, ``prompt`` or
    ``generated``.
    """
    raw = body.get(STEERING_FIELD)
    positions = _positions(body.get(POSITIONS_FIELD))
    when = _when(body.get(WHEN_FIELD))
    if raw is None or raw == []:
        if when is not None:
            raise RequestError(
                f"'{WHEN_FIELD}' decides whether a steering applies: give the '{STEERING_FIELD}' too",
                param=WHEN_FIELD,
                code="invalid_steering",
            )
        return None
    if isinstance(raw, Mapping):
        raw = [raw]  # one vector needs no list around it
    if not isinstance(raw, list):
        raise RequestError(
            f'\'{STEERING_FIELD}\' must be a list of {{"vector": name, "strength": number}} objects',
            param=STEERING_FIELD,
            code="invalid_steering",
        )
    if len(raw) > max_vectors:
        raise RequestError(
            f"'{STEERING_FIELD}' names {len(raw)} vectors; this server accepts at most {max_vectors}",
            param=STEERING_FIELD,
            code="too_many_vectors",
        )
    terms = tuple(_term(item, f"{STEERING_FIELD}[{i}]", max_strength) for i, item in enumerate(raw))
    return SteeringSpec(terms, positions, when)


def _when(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_WHEN_CHARS:
        raise RequestError(
            f"'{WHEN_FIELD}' must be a rule of condition names (e.g. \"toxic & ~question\"), "
            f"at most {MAX_WHEN_CHARS} characters",
            param=WHEN_FIELD,
            code="invalid_steering",
        )
    return value.strip()


def steering_json(spec: SteeringSpec | None) -> dict[str, Any] | None:
    """What a response says was applied: every vector with its (resolved) strength, and positions.

    The same shape from every engine: ``{"vectors": [{"vector", "strength"}, ...], "positions"}``,
    or ``None`` for an unsteered request.
    """
    if spec is None:
        return None
    applied: dict[str, Any] = {
        "vectors": [{"vector": term.vector, "strength": term.strength} for term in spec.terms],
        "positions": spec.positions,
    }
    if spec.when is not None:
        applied["when"] = spec.when
    return applied


def _positions(value: object) -> str:
    if value is None:
        return "all"
    if not isinstance(value, str) or value not in POSITIONS:
        raise RequestError(
            f"'{POSITIONS_FIELD}' must be one of {', '.join(POSITIONS)}, got {value!r:.40}",
            param=POSITIONS_FIELD,
            code="invalid_steering",
        )
    return value


def _term(item: object, where: str, max_strength: float) -> SteeringTerm:
    if not isinstance(item, Mapping):
        raise RequestError(
            f'\'{where}\' must be an object like {{"vector": "positive", "strength": 0.06}}',
            param=where,
            code="invalid_steering",
        )
    unknown = sorted(str(key) for key in item if key not in TERM_KEYS)
    if unknown:
        raise RequestError(
            f"'{where}' has unknown field(s) {', '.join(map(repr, unknown))[:120]}; "
            f"its fields are {', '.join(TERM_KEYS)}",
            param=where,
            code="invalid_steering",
        )
    name = item.get("vector")
    if not isinstance(name, str) or not name:
        raise RequestError(
            f"'{where}.vector' must be the name of a loaded vector",
            param=f"{where}.vector",
            code="invalid_steering",
        )
    return SteeringTerm(name, _strength(item.get("strength"), f"{where}.strength", max_strength))


def _strength(value: object, where: str, max_strength: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestError(
            f"'{where}' must be a number, got {value!r:.40}", param=where, code="invalid_strength"
        )
    number = float(value)
    if not math.isfinite(number):
        raise RequestError(f"'{where}' must be finite, got {number}", param=where, code="invalid_strength")
    if abs(number) > max_strength:
        raise RequestError(
            f"'{where}' is {number:g}; this server accepts strengths between {-max_strength:g} and {max_strength:g}",
            param=where,
            code="invalid_strength",
        )
    return number


def steering_fields(spec: SteeringSpec | None) -> dict[str, Any]:
    """The request fields that ask for ``spec`` (``{}`` for no steering): ``parse_steering`` of them is ``spec``.

    What a client sends, and how the vLLM engine carries a checked steering to its workers.
    """
    if spec is None:
        return {}
    terms = [{"vector": t.vector, "strength": t.strength} for t in spec.terms]
    fields: dict[str, Any] = {STEERING_FIELD: terms, POSITIONS_FIELD: spec.positions}
    if spec.when is not None:
        fields[WHEN_FIELD] = spec.when
    return fields
