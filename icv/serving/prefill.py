"""Chunked prefill: new rows' prompts go through the model a bounded number of tokens per engine step.

The model of it is vLLM's chunked prefill: a long prompt is not run in one forward
pass that holds every decoding row for its whole length; the engine feeds it a
chunk at a time (at most ``budget`` tokens, padding included, for all the group's
rows together) and runs a decode step for the rows already decoding between two
chunks.  So a running stream waits at most one chunk's time for a new prompt.

A group's prompts are left-padded together as :meth:`DecodeBatch.prefill` pads
them, and each chunk is the next columns of that one layout, with positions taken
from the whole mask: the KV cache at the end is the one an unchunked prefill
builds, and each row's last logits come from the last chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

import torch
from torch import nn
from transformers import DynamicCache

from .batch import DecodeBatch, left_padded, positions_of

R = TypeVar("R")  # what the engine keeps per row (its request)


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
    ) -> None:
        if budget < 1:
            raise ValueError(f"a chunk's budget must be at least one token, got {budget}")
        self.rows = list(rows)
        self._ids, self._mask = left_padded(prompts, pad_id, device)
        self._positions = positions_of(self._mask)
        self.batch = DecodeBatch(model, DynamicCache(), self._mask[:, :0])
        self.done = 0  # columns already through the model
        self.columns = max(1, budget // len(self.rows))

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
        start, end = self.done, min(self.width, self.done + self.columns)
        logits = self.batch.feed(
            self._ids[:, start:end], self._mask[:, start:end], self._positions[:, start:end]
        )
        self.done = end
        return logits if self.finished else None
