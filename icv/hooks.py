"""Small helpers shared by every hook: handles removed together, tuple-or-tensor outputs."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Removable(Protocol):
    """A torch hook handle, or anything else taken off with ``remove()``."""

    def remove(self) -> None: ...


class HookHandles:
    """A group of torch hook handles removed together, at most once each."""

    def __init__(self) -> None:
        self._handles: list[Removable] = []

    def add(self, handle: Removable) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)


def output_tensor(output: Any) -> torch.Tensor:
    """The hidden states in a module's output: a bare tensor (transformers 5) or a tuple's first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find hidden states in a module output of type {type(output).__name__}")


def replace_output(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden states replaced by ``hidden``, in the same structure."""
    if isinstance(output, torch.Tensor):
        return hidden
    return (hidden, *output[1:]) if isinstance(output, tuple) else [hidden, *output[1:]]
