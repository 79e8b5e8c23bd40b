"""Teacher-forcing examples: a pair's zero-shot prompt followed by its target, and the loss on them.

A pair ``(source, target)`` becomes the tokens of ``paraphrase_prompt(source)`` (the prompt
the vector replaces demonstrations in, as :func:`icv.evaluate` asks it) followed by the
target and its closing quote, the tokens a steered model should write there (the quote is
where :func:`icv.prompts.cut_answer` ends an answer).  The prompt and the target are
tokenized separately and joined, so the target's tokens are the ones generation would
produce after the prompt (no token merges across the boundary).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .demos import Demo
from .errors import DemoError
from .prompts import paraphrase_prompt

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One pair's tokens: ``ids`` = prompt + target; the target starts at ``start``."""

    ids: tuple[int, ...]
    start: int


def encode_pairs(tokenizer: Any, pairs: Sequence[Demo], max_tokens: int) -> list[Example]:
    """Each pair as an :class:`Example`; a pair longer than ``max_tokens`` is a :class:`DemoError`."""
    examples = []
    for number, pair in enumerate(pairs):
        prompt = list(tokenizer(paraphrase_prompt(pair.source), add_special_tokens=True)["input_ids"])
        target = list(tokenizer(f'{pair.target}"', add_special_tokens=False)["input_ids"])
        if not target:
            raise DemoError(f"pair {number}: its target has no tokens")
        if len(prompt) + len(target) > max_tokens:
            raise DemoError(
                f"pair {number}: prompt and target are {len(prompt) + len(target)} tokens, more than "
                f"the {max_tokens} that training takes (the model's context, or max_tokens=): "
                "shorten the pair or leave it out"
            )
        examples.append(Example(tuple(prompt + target), len(prompt)))
    return examples


@dataclass
class TokenBatch:
    """Right-padded examples: ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the target)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def batch_of(examples: Sequence[Example], pad_id: int, device: torch.device) -> TokenBatch:
    """The examples padded on the right (the last real token is then each row's own)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for row, example in enumerate(examples):
        n = len(example.ids)
        ids[row, :n] = torch.tensor(example.ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, example.start : n] = ids[row, example.start : n]
    return TokenBatch(ids.to(device), mask.to(device), labels.to(device))


def target_loss(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """Mean cross-entropy of the target tokens given everything before them (teacher forcing)."""
    predicted, wanted = _target_predictions(model, batch)
    return F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), wanted.reshape(-1), ignore_index=IGNORE
    )


def target_logprobs(model: nn.Module, batch: TokenBatch) -> torch.Tensor:
    """``(rows,)``: each row's summed log-probability of its target tokens (teacher forcing)."""
    predicted, wanted = _target_predictions(model, batch)
    per_token = F.cross_entropy(predicted.transpose(1, 2), wanted, ignore_index=IGNORE, reduction="none")
    return -per_token.sum(dim=1)


def _target_predictions(model: nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, positions, vocab)`` float32 logits and the ``(rows, positions)`` labels they predict."""
    # Only the positions that predict a target token need logits: with right padding they are
    # the batch's last ``keep`` positions.  The output layer (a quarter of a small model's
    # forward pass, vocabulary-wide) and its softmax then run on those alone.
    keep = logits_to_keep(model, batch.labels)
    options = {"logits_to_keep": keep} if keep else {}
    # No key/value cache: nothing is generated, and checkpointed layers refuse one.
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False, **options
    ).logits
    # Position t predicts token t + 1: the logits of positions width - keep .. width - 2.
    width = batch.labels.shape[1]
    return logits[:, -(keep or width) : -1].float(), batch.labels[:, width - (keep or width) + 1 :]


def logits_to_keep(model: nn.Module, labels: torch.Tensor) -> int:
    """How many last positions must have logits for ``labels`` (0: all, or the model cannot say)."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return 0
    targeted = (labels != IGNORE).any(dim=0).nonzero()
    if not len(targeted):
        return 0
    # The first target token is predicted by the position before it.
    return labels.shape[1] - int(targeted[0]) + 1


def mean_loss(
    model: nn.Module, examples: Sequence[Example], pad_id: int, device: torch.device, batch_size: int
) -> float:
    """The mean per-token target loss over ``examples`` (no gradients), batch by batch."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for begin in range(0, len(examples), batch_size):
            chunk = examples[begin : begin + batch_size]
            count = sum(len(e.ids) - e.start for e in chunk)
            total += float(target_loss(model, batch_of(chunk, pad_id, device))) * count
            tokens += count
    return total / max(tokens, 1)
