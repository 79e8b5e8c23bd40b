"""What the vLLM tests ask for: demonstrations, steering specs and their request fields."""

from __future__ import annotations

from icv.serving import SteeringSpec, SteeringTerm

DEMOS = [
    ("The food was cold and bland.", "The food was warm and delicious."),
    ("The staff were rude to us.", "The staff were friendly to us."),
    ("I hated every minute of it.", "I loved every minute of it."),
]
MAX_MODEL_LEN = 512


def spec(*terms: tuple[str, float | None], positions: str = "all") -> SteeringSpec:
    return SteeringSpec(tuple(SteeringTerm(v, s) for v, s in terms), positions)


def fields(request_spec: SteeringSpec | None) -> dict:
    """The request fields (HTTP body or SamplingParams.extra_args) that ask for ``request_spec``."""
    from icv.serving.request import steering_fields

    return steering_fields(request_spec)
