"""Per-row steering: check that a batch's rows line up with the strengths or vectors given.

With ``r`` per-row strengths (or vectors), a batch of ``r`` rows is one row each, and
a batch of ``k * r`` rows is what beam search and ``num_return_sequences`` make: each
prompt repeated ``k`` times, consecutively.  A batch of ``k * r`` rows whose groups
hold different prompts is a miscount that would otherwise steer silently with the
wrong strengths, so it is refused where the prompt is seen: at the prefill.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import SteeringError
from .positions import PositionTracker, past_length


class RowGroupCheck:
    """A forward pre-hook (on the top-level model) that refuses miscounted batches."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        # Its prompt length says which leading columns every repeat of a row shares, and
        # its batch how the hooks lay out a site's output that flattens the batch.
        self.calls = PositionTracker("prompt")

    def observe(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.calls.observe(model, args, kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return
        batch = ids.shape[0]
        if batch % self.rows:
            raise SteeringError(
                f"steering was given {self.rows} per-row strengths or vectors, but the batch "
                f"has {batch} rows: give one per prompt"
            )
        repeats = batch // self.rows
        if repeats == 1 or past_length(kwargs) > 0:
            return
        prompts = ids[:, : self.calls.prompt_length].reshape(self.rows, repeats, -1)
        if not bool((prompts == prompts[:, :1]).all()):
            raise SteeringError(
                f"steering was given {self.rows} per-row strengths or vectors, but the batch "
                f"has {batch} different rows: give one per prompt (a batch of {repeats} x "
                f"{self.rows} rows is accepted only as each prompt repeated, as beam search "
                "and num_return_sequences do)"
            )
