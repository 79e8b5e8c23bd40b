"""Read last-token activations of many texts in batched forward passes.

Only the activation at each text's last real token is kept (through forward
hooks), never every token's hidden states, so memory grows with
``texts x layers x hidden`` and not with the texts' lengths.  The forward pass
stops right after the last decoder layer: the final norm and the LM head are
never computed.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ArchitectureError, OptionError
from .hooks import HookHandles, output_tensor


class _StopForward(Exception):
    """Raised by the last layer's hook: nothing after it is needed."""


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last_index: torch.Tensor
    position_ids: torch.Tensor | None


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text; texts longer than ``max_length`` keep their last tokens."""
    ids = [list(tokenizer(text, add_special_tokens=True)["input_ids"]) for text in texts]
    too_long = [i for i, seq in enumerate(ids) if len(seq) > max_length]
    if too_long:
        warnings.warn(
            f"{len(too_long)} demonstration text(s) exceed the model's context of "
            f"{max_length} tokens and were truncated from the left",
            stacklevel=4,
        )
        ids = [seq[-max_length:] for seq in ids]
    return ids


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device) -> Batch:
    """Pad to a rectangle on ``side``; positions stay 0-based for each text either way."""
    if side not in ("left", "right"):
        raise OptionError(f"padding_side must be 'left' or 'right', got {side!r}")
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    # The last real token: the rightmost 1 in the mask, whichever side was padded.
    last = width - 1 - mask.flip(1).argmax(dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0) if side == "left" else None
    return Batch(ids.to(device), mask.to(device), last, positions)


def accepts_position_ids(model: nn.Module) -> bool:
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class LastTokenRecorder:
    """Hooks on ``modules`` (one per layer) that record each row's last-token activation.

    With ``embeddings=True`` the input of the first module (the embedding output)
    is recorded too, as row 0: the paper's PCA runs over embeddings and layers.
    ``embedding_module``: read row 0 from this module's output instead (the reference
    code hooks the token embedding itself; for models that add position embeddings
    or scale after it, that differs from the first block's input).
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        stop_after: nn.Module | None,
        embeddings: bool,
        embedding_module: nn.Module | None = None,
    ):
        self._modules = list(modules)
        self._stop_after = stop_after
        self._embeddings = embeddings
        self._embedding_module = embedding_module
        self._rows: torch.Tensor | None = None
        self._states: list[torch.Tensor | None] = []

    def _take(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self._rows is not None
        index = self._rows.to(hidden.device)
        if hidden.dim() == 2:  # (rows * tokens, hidden): OPT's feed-forward runs on flattened tokens
            hidden = hidden.view(index.shape[0], -1, hidden.shape[-1])
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        return picked.float().cpu()

    def _layer_hook(self, slot: int, module: nn.Module) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            self._states[slot] = self._take(output_tensor(output))
            if module is self._stop_after:
                raise _StopForward

        return hook

    def _embedding_hook(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        self._states[0] = self._take(hidden)

    def _embedding_output_hook(self, _module: nn.Module, _args: Any, output: Any) -> None:
        self._states[0] = self._take(output_tensor(output))

    @contextmanager
    def attached(self) -> Iterator[LastTokenRecorder]:
        handles = HookHandles()
        try:
            offset = 1 if self._embeddings else 0
            if self._embeddings and self._embedding_module is not None:
                handles.add(self._embedding_module.register_forward_hook(self._embedding_output_hook))
            elif self._embeddings:
                handles.add(
                    self._modules[0].register_forward_pre_hook(self._embedding_hook, with_kwargs=True)
                )
            for i, module in enumerate(self._modules):
                handles.add(module.register_forward_hook(self._layer_hook(i + offset, module)))
            yield self
        finally:
            handles.remove()

    @torch.no_grad()
    def run(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``(batch, slots, hidden)`` float32 last-token states for one batch."""
        slots = len(self._modules) + (1 if self._embeddings else 0)
        self._states = [None] * slots
        self._rows = batch.last_index
        kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask, "use_cache": False}
        if batch.position_ids is not None:
            kwargs["position_ids"] = batch.position_ids.to(batch.input_ids.device)
        try:
            model(batch.input_ids, **kwargs)
        except _StopForward:
            pass
        missing = [i for i, state in enumerate(self._states) if state is None]
        if missing:
            raise ArchitectureError(
                f"hooked modules {missing} were not reached during the forward pass: "
                "the architecture's paths do not match how this model runs"
            )
        return torch.stack(self._states, dim=1)  # type: ignore[arg-type]
