"""Preference targets: each pair's target preferred over its source copied out unchanged.

Teacher forcing rewards every target token alike.  Where the rewrites are minimal edits
(ParaDetox: most of a detoxified sentence is its source's words), most of that reward is for
copying the source, and a vector fitted to it learns to copy.  The preference objective
scores what the target has and the source lacks: for each pair, the target (``chosen``) and
the source itself written as the answer (``rejected``, the output of a model that ignores
the style) are teacher-forced after the same zero-shot prompt, and the vector is fitted to
raise the first against the second relative to the unsteered model (DPO, Rafailov et al.
2023; for steering vectors, BiPO, Cao et al. 2024):

    -log sigmoid(beta * ((log p(chosen) - log p0(chosen)) - (log p(rejected) - log p0(rejected))))

The tokens the two answers share before they part give the same log-ratio to both and
cancel: the term is carried by the edits.  Alone it can lower both answers' likelihood
(a vector that breaks the model's output "prefers" the target as well as any other), so the
objective adds the teacher-forcing cross-entropy of the target, which holds the output
fluent (DPO + NLL, as RPO, Pang et al. 2024).

``p0`` is the model unsteered: its log-probabilities are computed once, before any hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .demos import Demo
from .supervision import Example, batch_of, encode_pairs, target_logprobs

# DPO's usual temperature (Rafailov et al. 2023 and BiPO use 0.1 on summed log-probabilities).
BETA = 0.1


@dataclass(frozen=True)
class PreferenceExample:
    """A pair's chosen and rejected answers after its zero-shot prompt, and the unsteered
    model's log-ratio between them (``log p0(chosen) - log p0(rejected)``)."""

    chosen: Example
    rejected: Example
    reference: float


def rejected_examples(tokenizer: Any, pairs: Sequence[Demo], max_tokens: int) -> list[Example]:
    """Each pair's zero-shot prompt followed by its source, unchanged, as the answer."""
    return encode_pairs(tokenizer, [Demo(pair.source, pair.source) for pair in pairs], max_tokens)


def preference_examples(
    model: nn.Module,
    chosen: Sequence[Example],
    rejected: Sequence[Example],
    pad: int,
    device: torch.device,
    batch_size: int,
) -> list[PreferenceExample]:
    """The pairs with the unsteered model's log-ratios (the model as it runs now: the caller
    makes sure it is unsteered), without gradients."""
    out: list[PreferenceExample] = []
    with torch.no_grad():
        for begin in range(0, len(chosen), batch_size):
            good, bad = chosen[begin : begin + batch_size], rejected[begin : begin + batch_size]
            chosen_logp, rejected_logp = _answer_logprobs(model, good, bad, pad, device)
            ratios = chosen_logp - rejected_logp
            out += [PreferenceExample(g, b, float(r)) for g, b, r in zip(good, bad, ratios, strict=True)]
    return out


def preference_loss(
    model: nn.Module,
    items: Sequence[PreferenceExample],
    pad: int,
    device: torch.device,
    beta: float = BETA,
) -> torch.Tensor:
    """The DPO term (mean over pairs) plus the chosen answers' mean per-token cross-entropy."""
    chosen = [item.chosen for item in items]
    good, bad = _answer_logprobs(model, chosen, [item.rejected for item in items], pad, device)
    reference = torch.tensor([item.reference for item in items], device=good.device)
    preference = -F.logsigmoid(beta * ((good - bad) - reference)).mean()
    tokens = sum(len(e.ids) - e.start for e in chosen)
    return preference - good.sum() / tokens


def mean_preference_loss(
    model: nn.Module,
    items: Sequence[PreferenceExample],
    pad: int,
    device: torch.device,
    batch_size: int,
    beta: float = BETA,
) -> float:
    """:func:`preference_loss` over ``items`` batch by batch (no gradients), weighted by pairs."""
    total = 0.0
    with torch.no_grad():
        for begin in range(0, len(items), batch_size):
            chunk = items[begin : begin + batch_size]
            total += float(preference_loss(model, chunk, pad, device, beta)) * len(chunk)
    return total / max(len(items), 1)


def _answer_logprobs(
    model: nn.Module, chosen: Sequence[Example], rejected: Sequence[Example], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each chosen and each rejected answer's summed log-probability, from one batch of both."""
    logp = target_logprobs(model, batch_of([*chosen, *rejected], pad, device))
    return logp[: len(chosen)], logp[len(chosen) :]
