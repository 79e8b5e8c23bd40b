"""How a served request picks its next token: greedy, or sampled with temperature and top-p.

Each request keeps its own random generator (seeded from the request's ``seed``
when it gives one), so a seeded request draws the same tokens whatever other
requests share its batch.  The generator is Python's Mersenne Twister seeded with
all 64 bits of the seed (torch's CPU generator keeps only the low 32: seeds 0 and
2**32 drew the same tokens); a token is drawn by inverting the cumulative
distribution at one uniform draw.  ``temperature == 0`` is greedy: the argmax,
exactly what ``model.generate(do_sample=False)`` picks.

Only rows whose logits are all finite are given here: the engine ends a row whose
numbers overflowed (:mod:`icv.serving.engine`) before it samples the others.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the decoder (OpenAI's names and meanings)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks want fixed lengths)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def row_generator(params: SamplingParams) -> random.Random | None:
    """The request's own random generator (``None`` for greedy requests, which need none).

    Seeded with the seed's 64 bits (negative seeds as their two's complement), or from
    the system's entropy when the request gives no seed.
    """
    if params.greedy:
        return None
    seed = params.seed % 2**64 if params.seed is not None else random.SystemRandom().randrange(2**64)
    return random.Random(seed)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` (1-D) with everything outside the smallest set of mass >= ``top_p`` zeroed."""
    if top_p >= 1.0:
        return probs
    ordered, order = torch.sort(probs, descending=True)
    # Keep a token while the mass before it is below top_p: the first token always stays.
    before = torch.cumsum(ordered, dim=0) - ordered
    ordered = torch.where(before < top_p, ordered, torch.zeros_like(ordered))
    return torch.zeros_like(probs).scatter_(0, order, ordered)


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The probabilities (float64) a sampled row draws from: temperature, then top-p.

    The largest logit is subtracted before dividing by the temperature, so a tiny
    temperature gives the argmax's certainty instead of ``inf - inf``.
    """
    wide = logits.double()
    scaled = (wide - wide.max()) / params.temperature
    return nucleus(torch.softmax(scaled, dim=-1), params.top_p)


def draw(probs: torch.Tensor, generator: random.Random) -> int:
    """The token at one uniform draw along the cumulative distribution (never one of probability 0)."""
    cumulative = torch.cumsum(probs, dim=0)
    point = torch.tensor([generator.random() * float(cumulative[-1])], dtype=cumulative.dtype)
    index = int(torch.searchsorted(cumulative, point, right=True))
    # A draw that rounds up to the total lands past the end: the last token that can be drawn.
    return min(index, int(probs.nonzero()[-1]))


def next_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[random.Random | None]
) -> list[int]:
    """One token per row of ``logits`` (rows, vocab, all finite), each by its own request's parameters."""
    greedy = logits.argmax(dim=-1).tolist()
    chosen: list[int] = []
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            chosen.append(int(greedy[row]))
            continue
        assert generator is not None, "a sampled row needs its generator (row_generator)"
        chosen.append(draw(distribution(logits[row], p), generator))
    return chosen
