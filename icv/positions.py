"""Which token positions steering acts on, from absolute positions in the sequence.

A forward pre-hook on the top-level model sees every call ``generate`` makes and
works out the absolute position of each token in the call: the tokens already
in the KV cache plus the offset within the call.  The prompt is what the first
call of a generation holds; everything after it is generated.  Without a KV
cache every call starts again at position 0 with one more token: such a call
is recognised as the continuation of the previous one, so the prompt length
stays put.  (So, without the cache only, a new ``generate`` whose prompt is
exactly the previous call's whole output, under the same steering, keeps the
previous prompt length: open a new steering for it.)  Deciding from absolute
positions (never from the current chunk's length) keeps the modes right with
and without the cache, under left padding and with beam search.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

POSITIONS = ("all", "prompt", "generated")


def past_length(kwargs: dict[str, Any]) -> int:
    """How many tokens precede this call's first token (from the cache it is given)."""
    cache_position = kwargs.get("cache_position")
    if isinstance(cache_position, torch.Tensor) and cache_position.numel():
        return int(cache_position.reshape(-1)[0])
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and isinstance(cache[0], (tuple, list)):
        return int(cache[0][0].shape[-2])  # legacy tuple of (key, value) per layer
    return 0


def _has_cache(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("cache", kwargs.get("past_key_values")) is not None


class PositionTracker:
    """Keeps the current call's position mask for ``"prompt"`` or ``"generated"`` steering."""

    def __init__(self, positions: str) -> None:
        if positions not in ("prompt", "generated"):
            raise ValueError(positions)
        self._steer_prompt = positions == "prompt"
        self.prompt_length = 0
        self.new_prompt = False
        self.batch = 1  # the current call's rows
        self._previous: torch.Tensor | None = None
        self._mask = torch.ones(1, 1, 1, dtype=torch.bool)
        self._cast: dict[tuple, torch.Tensor] = {}

    def observe(self, _model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
        if not isinstance(tokens, torch.Tensor):
            return
        self.batch, length = tokens.shape[0], tokens.shape[1]
        past = past_length(kwargs)
        # A call given a cache is a prefill exactly when the cache is empty; only a
        # cache-less call needs the heuristic that tells a next step from a new prompt.
        # new_prompt: this call is a generation's first (its prefill), what a gate decides at.
        self.new_prompt = past == 0 and (_has_cache(kwargs) or not self._continues(ids))
        if self.new_prompt:
            self.prompt_length = length
        self._previous = ids.detach() if isinstance(ids, torch.Tensor) else None
        absolute = torch.arange(past, past + length)
        keep = absolute < self.prompt_length if self._steer_prompt else absolute >= self.prompt_length
        self._mask = keep.view(1, length, 1)
        self._cast = {}

    def _continues(self, ids: object) -> bool:
        """A cache-less call that repeats the previous call's rows plus one new token."""
        previous = self._previous
        if not isinstance(ids, torch.Tensor) or previous is None:
            return False
        if ids.shape[1] != previous.shape[1] + 1 or ids.shape[0] != previous.shape[0]:
            return False
        prefix = ids[:, :-1].to(previous.device)
        # Beam search may reorder rows: each row must extend some previous row.
        return bool((prefix[:, None, :] == previous[None, :, :]).all(-1).any(-1).all())

    @property
    def keep(self) -> torch.Tensor:
        """The current call's ``(length,)`` bool mask: which of its positions are steered."""
        return self._mask.view(-1)

    def mask_for(self, x: torch.Tensor) -> torch.Tensor:
        """The mask as a ``(1, length, 1)`` tensor on ``x``'s device and dtype."""
        key = (x.device, x.dtype)
        mask = self._cast.get(key)
        if mask is None:
            mask = self._cast[key] = self._mask.to(x.device, x.dtype)
        return mask
