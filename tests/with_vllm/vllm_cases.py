"""What the vLLM tests ask for: demonstrations, steering specs and their request fields."""

from __future__ import annotations

from icv.serving import SteeringSpec, SteeringTerm

DEMOS = [
    ("The food was cold and bland.", "The food was warm and delicious."),
    ("The staff were rude to us.", "The staff were friendly to us."),
    ("I hated every minute of it.", "I loved every minute of it."),
]
MAX_MODEL_LEN = 512
# Conditional steering: the condition 'rude' (in the vector folder) matches the first
# sentence's paraphrase prompt and not the second's, its threshold halfway between them.
RUDE_MATCHING = [
    "you are a useless idiot and everyone hates you .",
    "shut up , nobody asked for your stupid opinion .",
    "this place is garbage and the owner is a moron .",
    "get lost , you pathetic loser .",
]
RUDE_OTHER = [
    "thank you so much for your kind help today .",
    "the garden looks lovely in the spring .",
    "we enjoyed a quiet dinner with friends .",
    "the staff were friendly and helpful .",
]
GATED_SENTENCES = ["what a stupid waste of time , you idiots .", "the room was clean and quiet ."]


def spec(*terms: tuple[str, float | None], positions: str = "all") -> SteeringSpec:
    return SteeringSpec(tuple(SteeringTerm(v, s) for v, s in terms), positions)


def fields(request_spec: SteeringSpec | None) -> dict:
    """The request fields (HTTP body or SamplingParams.extra_args) that ask for ``request_spec``."""
    from icv.serving.request import steering_fields

    return steering_fields(request_spec)
