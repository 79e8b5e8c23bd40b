"""The rows a server decodes together: one KV cache, left-padded, that rows join and leave.

Every row's tokens sit at the right end of the cache, padding on the left, as
``model.generate`` lays out a left-padded batch; each row's positions count only
its own tokens (``cumsum(mask) - 1``), so a row computes what it computes alone.
New rows are prefilled on their own and then joined to the running rows by
padding the shorter cache on the left; finished rows are dropped, and columns
that became padding in every row are cut off, so the cache is only as wide as the
longest live row needs.

The cache is transformers' ``DynamicCache`` with plain full-attention layers for
every layer (sliding-window layers see a sliding mask over the full cache, which
computes the same), because joining and dropping rows needs tensors that can be
concatenated and indexed along the batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..errors import SteeringError


def left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``prompts`` padded on the left to the longest."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position within its own row (what ``generate`` computes); padding gets 1."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill_(mask == 0, 1)


class DecodeBatch:
    """A KV cache and attention mask of rows decoded together (row order is the caller's)."""

    def __init__(self, model: nn.Module, cache: DynamicCache, mask: torch.Tensor) -> None:
        self._model = model
        self._takes_positions = _accepts(model, "position_ids")
        self._takes_logits_to_keep = _accepts(model, "logits_to_keep")
        # transformers >= 5.2x calls the cache `cache`; earlier versions `past_key_values`.
        self._cache_argument = "cache" if _accepts(model, "cache") else "past_key_values"
        self.cache = cache
        self.mask = mask

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    @torch.no_grad()
    def prefill(
        cls, model: nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
    ) -> tuple[DecodeBatch, torch.Tensor]:
        """Run ``prompts`` (left-padded) through ``model``; the batch and each row's last logits."""
        ids, mask = left_padded(prompts, pad_id, device)
        batch = cls(model, DynamicCache(), mask)
        logits = batch._forward(ids, positions_of(mask))
        return batch, logits

    @torch.no_grad()
    def feed(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append columns to every row (a prompt's next chunk); each row's logits after its last column.

        ``ids``, ``mask`` and ``positions`` are ``(rows, columns)``: the next columns of
        :func:`left_padded` prompts and of :func:`positions_of` their whole mask.
        """
        self.mask = torch.cat([self.mask, mask], dim=1)
        return self._forward(ids, positions)

    @torch.no_grad()
    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one new token per row; each row's logits for the token after it."""
        if len(tokens) != self.size:
            raise ValueError(f"{len(tokens)} tokens for {self.size} rows")
        self.mask = F.pad(self.mask, (0, 1), value=1)
        # A (rows, 1) tensor of its own, not a view: a compiled forward guards on its inputs' bases.
        ids = torch.tensor([[int(t)] for t in tokens], dtype=torch.long, device=self.mask.device)
        positions = self.mask.sum(dim=1, keepdim=True) - 1
        return self._forward(ids, positions)

    def extend(self, other: DecodeBatch) -> None:
        """Append ``other``'s rows after this batch's rows (both then share one cache)."""
        width = max(self.width, other.width)
        mine, theirs = self._layers(), other._layers()
        if len(mine) != len(theirs):
            raise SteeringError("cannot join two batches whose caches have different layer counts")
        self._pad_to(width)
        other._pad_to(width)
        for a, b in zip(mine, theirs, strict=True):
            a.keys = torch.cat([a.keys, b.keys], dim=0)
            a.values = torch.cat([a.values, b.values], dim=0)
        self.mask = torch.cat([self.mask, other.mask], dim=0)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order); cut the columns that are padding in all of them."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        layers = self._layers()
        self.mask = self.mask.index_select(0, index)
        live = (self.mask.sum(dim=0) > 0).nonzero()
        start = int(live[0]) if live.numel() else self.width
        self.mask = self.mask[:, start:]
        for layer in layers:
            layer.keys = _rows_from(layer.keys, index, start)
            layer.values = _rows_from(layer.values, index, start)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        kwargs = {
            "input_ids": ids,
            "attention_mask": self.mask,
            self._cache_argument: self.cache,
            "use_cache": True,
        }
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self._model(**kwargs)
        return out.logits[:, -1, :]

    def _pad_to(self, width: int) -> None:
        extra = width - self.width
        if extra <= 0:
            return
        layers = self._layers()
        self.mask = F.pad(self.mask, (extra, 0), value=0)
        for layer in layers:
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))

    def _layers(self) -> list[_FilledLayer]:
        layers = list(getattr(self.cache, "layers", ()))
        for layer in layers:
            if type(layer) is not DynamicLayer or not layer.is_initialized:
                raise SteeringError(
                    f"this model's KV cache ({type(layer).__name__}) cannot be batched by the server"
                )
        filled = cast(list[_FilledLayer], layers)
        for layer in filled:
            if layer.keys.shape[-2] != self.width:
                raise SteeringError("the KV cache and the attention mask disagree on the batch's width")
        return filled


def _rows_from(tensor: torch.Tensor, rows: torch.Tensor, start: int) -> torch.Tensor:
    """``tensor``'s ``rows``, from column ``start`` on, as a tensor of its own.

    Not a view: every other step leaves the cache in fresh tensors (``torch.cat``), and a
    compiled forward guards on whether its inputs are views, so a view here would
    compile the decode step again.
    """
    picked = tensor.index_select(0, rows.to(tensor.device))
    return picked if start == 0 else picked[..., start:, :].clone()


class _FilledLayer(Protocol):
    """An initialised ``DynamicLayer``: its keys and values are tensors (transformers types them optional)."""

    keys: torch.Tensor
    values: torch.Tensor


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
