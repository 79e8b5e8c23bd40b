"""Distillation targets: the unsteered model's own in-context distribution on each pair's target.

The teacher is the model, unsteered, given the in-context prompt :func:`icv.evaluate`'s ICL
arm writes (:func:`icv.prompts.icl_prompt`: demonstrations before the query), teacher-forced
on the pair's target; the student is the steered model given the zero-shot prompt, on the
same target tokens (the target is tokenized on its own, so both see identical ids).  The loss
is KL(teacher || student) per target token (LIVE, Peng et al. 2024).

The demonstrations in a pair's teacher prompt are up to :data:`TEACHER_DEMOS` of the
*training* pairs, never the pair itself (and never a held-out pair: held-out pairs are only
ever queries), drawn with the seed; where the model's context is short, demonstrations are
dropped until the prompt fits.

Memory: the teacher's logits are computed once, without gradients, and only the
:data:`TOP_K` most likely tokens per target position are kept (their log-probabilities and
ids), not the vocabulary: 64 pairs x 30 target tokens x 64 entries is under a megabyte where
the full SmolLM2 vocabulary would be 377 MB.  The KL is taken over those ``k`` tokens plus one
bucket for the rest of the vocabulary (an exact KL between the two distributions coarsened
to ``k + 1`` outcomes: zero only when the student matches the teacher there).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .demos import Demo
from .errors import DemoError
from .prompts import icl_prompt
from .supervision import Example, batch_of

TEACHER_DEMOS = 8
TOP_K = 64
_TINY = 1e-8


@dataclass(frozen=True)
class SoftExample:
    """A student example (zero-shot prompt + target) and its teacher's top-k per target token.

    ``ids``/``logp``: ``(target tokens, k)``; row ``t`` is the teacher's distribution over the
    target's token ``t`` (the one after position ``example.start + t - 1``).
    """

    example: Example
    ids: torch.Tensor
    logp: torch.Tensor


def teacher_demos(count: int, query: int, fit: Sequence[int], seed: int) -> list[int]:
    """The training pairs (indices) in pair ``query``'s teacher prompt: up to ``count`` of
    ``fit`` other than ``query``, a seeded draw per pair, in their original order."""
    others = [i for i in fit if i != query]
    chosen = random.Random(seed * 1_000_003 + query).sample(others, min(count, len(others)))
    return sorted(chosen)


def teacher_examples(
    tokenizer: Any,
    pairs: Sequence[Demo],
    examples: Sequence[Example],
    fit: Sequence[int],
    seed: int,
    max_tokens: int,
) -> list[Example]:
    """Per pair: the in-context prompt's tokens followed by the same target tokens as ``examples``."""
    if len(fit) < 2:
        raise DemoError(
            f"distillation needs at least two training pairs (each is the other's demonstration), "
            f"got {len(fit)} after holding some out: give more pairs, lower held_out, or use "
            "objective='teacher'"
        )
    teachers = []
    for query, (pair, student) in enumerate(zip(pairs, examples, strict=True)):
        target = list(student.ids[student.start :])
        chosen = [pairs[i] for i in teacher_demos(TEACHER_DEMOS, query, fit, seed)]
        while True:
            prompt = list(tokenizer(icl_prompt(chosen, pair.source), add_special_tokens=True)["input_ids"])
            if len(prompt) + len(target) <= max_tokens or not chosen:
                break
            chosen = chosen[:-1]  # the context is short: fewer demonstrations
        if not chosen:
            raise DemoError(
                f"pair {query}: no demonstration fits in its teacher prompt within {max_tokens} tokens "
                "(the model's context, or max_tokens=): shorten the pairs, or use objective='teacher'"
            )
        teachers.append(Example(tuple(prompt + target), len(prompt)))
    return teachers


def _target_logits(
    model: nn.Module, examples: Sequence[Example], pad: int, device: torch.device
) -> list[torch.Tensor]:
    """Per example, ``(target tokens, vocab)`` float32 logits predicting each target token."""
    batch = batch_of(examples, pad, device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    # Position t predicts token t + 1: the target's tokens start..n-1 come from start-1..n-2.
    return [logits[row, e.start - 1 : len(e.ids) - 1].float() for row, e in enumerate(examples)]


def soft_targets(
    model: nn.Module,
    students: Sequence[Example],
    teachers: Sequence[Example],
    pad: int,
    device: torch.device,
    batch_size: int,
    top_k: int = TOP_K,
) -> list[SoftExample]:
    """The teacher's top-``top_k`` log-probabilities per target token (the model as it runs now:
    the caller makes sure it is unsteered), without gradients."""
    out: list[SoftExample] = []
    with torch.no_grad():
        for begin in range(0, len(teachers), batch_size):
            chunk = teachers[begin : begin + batch_size]
            for offset, logits in enumerate(_target_logits(model, chunk, pad, device)):
                logp = F.log_softmax(logits, dim=-1)
                top = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
                out.append(SoftExample(students[begin + offset], top.indices, top.values))
    return out


def distillation_loss(
    model: nn.Module, soft: Sequence[SoftExample], pad: int, device: torch.device
) -> torch.Tensor:
    """Mean per-token KL(teacher || student) over the targets, on the top-k + rest coarsening."""
    student = _target_logits(model, [s.example for s in soft], pad, device)
    total: torch.Tensor | None = None
    tokens = 0
    for logits, s in zip(student, soft, strict=True):
        logq_all = F.log_softmax(logits, dim=-1)
        ids, logp = s.ids.to(logits.device), s.logp.to(logits.device)
        logq = logq_all.gather(-1, ids)
        p = logp.exp()
        kl = (p * (logp - logq)).sum(-1)
        rest_p = (1 - p.sum(-1)).clamp_min(0)
        rest_q = (1 - logq.exp().sum(-1)).clamp_min(_TINY)
        kl = kl + rest_p * (torch.log(rest_p.clamp_min(_TINY)) - torch.log(rest_q))
        part = kl.sum()
        total = part if total is None else total + part
        tokens += kl.shape[0]
    assert total is not None
    return total / max(tokens, 1)


def mean_distillation_loss(
    model: nn.Module, soft: Sequence[SoftExample], pad: int, device: torch.device, batch_size: int
) -> float:
    """:func:`distillation_loss` over all of ``soft`` (no gradients), token-weighted across batches."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(soft), batch_size):
            chunk = soft[begin : begin + batch_size]
            count = sum(s.ids.shape[0] for s in chunk)
            total += float(distillation_loss(model, chunk, pad, device)) * count
            tokens += count
    return total / max(tokens, 1)
