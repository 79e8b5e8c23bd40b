"""How a served request picks its next token: greedy, or sampled with temperature and top-p.

Each request keeps its own random generator (seeded from the request's ``seed``
when it gives one), so a seeded request draws the same tokens whatever other
requests share its batch.  ``temperature == 0`` is greedy: the argmax, exactly
what ``model.generate(do_sample=False)`` picks.
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


def row_generator(params: SamplingParams) -> torch.Generator | None:
    """The request's own random generator (``None`` for greedy requests, which need none)."""
    if params.greedy:
        return None
    generator = torch.Generator()
    generator.manual_seed(params.seed if params.seed is not None else random.SystemRandom().randrange(2**63))
    return generator


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` (1-D) with everything outside the smallest set of mass >= ``top_p`` zeroed."""
    if top_p >= 1.0:
        return probs
    ordered, order = torch.sort(probs, descending=True)
    # Keep a token while the mass before it is below top_p: the first token always stays.
    before = torch.cumsum(ordered, dim=0) - ordered
    ordered = torch.where(before < top_p, ordered, torch.zeros_like(ordered))
    return torch.zeros_like(probs).scatter_(0, order, ordered)


def next_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator | None]
) -> list[int]:
    """One token per row of ``logits`` (rows, vocab), each by its own request's parameters."""
    greedy = logits.argmax(dim=-1).tolist()
    chosen: list[int] = []
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            chosen.append(int(greedy[row]))
            continue
        probs = torch.softmax(logits[row].float() / p.temperature, dim=-1)
        probs = nucleus(probs, p.top_p)
        chosen.append(int(torch.multinomial(probs, 1, generator=generator)))
    return chosen
