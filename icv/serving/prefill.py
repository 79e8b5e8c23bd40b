"""Chunked prefill: new rows' prompts go through the model a bounded amount of work per engine step.

The model of it is vLLM's chunked prefill: a long prompt is not run in one forward
pass that holds every decoding row for its whole length; the engine feeds it a
chunk at a time and runs a decode step for the rows already decoding between two
chunks.  So a running stream waits at most one chunk's time for a new prompt.

What a chunk may cost is ``budget`` prompt tokens (padding included, for all the
group's rows together) *as they cost with nothing before them*.  A token of a
later chunk also attends to every token before it, and on a long prompt that is
most of its cost (on SmolLM2-135M at 4,000 tokens of context, attention took half
of a 256-token chunk's time, and later chunks 1.2-1.7x the first's), so a budget of
tokens alone lets each chunk cost more than the last.  The chunk's width shrinks
as the context grows instead (:func:`chunk_columns`), by the model's
:func:`attention_span`: the context at which a token's attention costs what its
weights cost.  Every chunk then costs about what the first does, however long the
prompt.

A group's prompts are left-padded together as :meth:`DecodeBatch.prefill` pads
them, and each chunk is the next columns of that one layout, with positions taken
from the whole mask: the KV cache at the end is the one an unchunked prefill
builds, and each row's last logits come from the last chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Generic, TypeVar

import torch
from torch import nn
from transformers import DynamicCache

from ..errors import ICVError
from ..layers import decoder_layers
from .batch import DecodeBatch, left_padded, positions_of

R = TypeVar("R")  # what the engine keeps per row (its request)


def attention_span(model: nn.Module) -> float | None:
    """Tokens of context at which one token's attention costs what its pass through the weights costs.

    Per layer, a token's matrix products take ``2 * P`` operations (``P`` the layer's
    parameters) and its attention ``4 * heads * head_dim`` per token it attends to
    (scores and the weighted sum), so the span is ``P / (2 * heads * head_dim)``
    (3,072 for SmolLM2-135M).  ``None`` when the model does not say its heads: chunks
    are then bounded in tokens alone.
    """
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    if not isinstance(heads, int) or not isinstance(head_dim, int) or heads < 1 or head_dim < 1:
        return None
    try:
        layer = decoder_layers(model)[0]
    except ICVError:
        return None
    weights = sum(p.numel() for p in layer.parameters())
    return weights / (2 * heads * head_dim) if weights else None


def chunk_columns(done: int, rows: int, budget: int, span: float | None) -> int:
    """How many columns the next chunk takes after ``done``: the most whose cost fits ``budget``.

    ``x`` columns of ``rows`` rows after ``done`` cost ``rows * x * (1 + (done + x) / span)``
    tokens' worth (each token's weights, and its attention to at most ``done + x``
    tokens); at least one column, so every chunk makes progress.
    """
    per_row = budget / rows
    if span is None:
        return max(1, int(per_row))
    # The largest x with x * x / span + x * (1 + done / span) <= per_row.
    linear = 1 + done / span
    columns = (math.sqrt(linear * linear + 4 * per_row / span) - linear) * span / 2
    return max(1, int(columns + 1e-9))


def chunk_plan(width: int, rows: int, budget: int, span: float | None) -> list[int]:
    """The columns of every chunk of a group ``width`` columns wide, in order (their sum is ``width``)."""
    plan: list[int] = []
    done = 0
    while done < width:
        columns = min(width - done, chunk_columns(done, rows, budget, span))
        plan.append(columns)
        done += columns
    return plan


class ChunkedPrefill(Generic[R]):
    """Rows whose prompts are being prefilled, chunk by chunk; :meth:`advance` runs the next chunk."""

    def __init__(
        self,
        model: nn.Module,
        rows: Sequence[R],
        prompts: Sequence[Sequence[int]],
        pad_id: int,
        device: torch.device,
        budget: int,
        span: float | None = None,
    ) -> None:
        if budget < 1:
            raise ValueError(f"a chunk's budget must be at least one token, got {budget}")
        self.rows = list(rows)
        self._ids, self._mask = left_padded(prompts, pad_id, device)
        self._positions = positions_of(self._mask)
        self.batch = DecodeBatch(model, DynamicCache(), self._mask[:, :0])
        self.done = 0  # columns already through the model
        self._budget = budget
        self._span = span

    @property
    def width(self) -> int:
        return int(self._ids.shape[1])

    @property
    def remaining_tokens(self) -> int:
        """Tokens (padding included) still to run: what the engine orders groups by."""
        return (self.width - self.done) * len(self.rows)

    @property
    def finished(self) -> bool:
        return self.done >= self.width

    def advance(self) -> torch.Tensor | None:
        """Run the next chunk; each row's last logits once the prompts are through, else ``None``."""
        start = self.done
        end = min(self.width, start + chunk_columns(start, len(self.rows), self._budget, self._span))
        logits = self.batch.feed(
            self._ids[:, start:end], self._mask[:, start:end], self._positions[:, start:end]
        )
        self.done = end
        return logits if self.finished else None
