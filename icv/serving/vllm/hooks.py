"""Steering as tensor ops in vLLM's forward, reading persistent buffers that the plugin fills per step.

One :class:`SteeringTable` per way of injecting (``rotate`` or ``add``, at ``block``,
``mlp`` or ``attn``) holds three buffers that live as long as the model, at fixed
addresses:

* ``deltas`` ``(layers, slots, hidden)``: what each slot's steering adds or turns
  towards at each layer; slot 0 is all zeros (unsteered) and stays so;
* ``away`` (rotation only): ``-delta/|delta|`` per slot and layer, what the boost measures;
* ``index`` ``(max_tokens,)``: each token's slot in the current step (0: not steered).

A forward hook on every layer's module reads them and applies :func:`icv.steer`'s
arithmetic (:func:`icv.inject.rotate` or :func:`icv.inject.add`) with one gather per
buffer, sliced to the step's (padded) token count.  The hook is a module-level
function and the buffers are registered on the hooked module, so torch.compile
traces the ops into the model's graph with stable sources (vLLM's AOT compile cache
reloads it), CUDA graphs capture reads of fixed addresses, and nothing in the hook
decides anything from data: a new steering only rewrites a slot's rows and the
index, never the graph.  Unsteered tokens gather zeros and come out bitwise
unchanged (``x + 0``; a rotation towards 0 is ``x`` exactly).

In an eager engine (``static=False``) the hooks also skip a step in which no token
of their injection is steered, which a compiled graph cannot do without a branch.

vLLM's decoder layers return ``(hidden_states, residual)``, whose sum is what
transformers calls the block's output: addition at the block adds to
``hidden_states``; rotation at the block rotates the sum ``s`` into ``y`` and
returns ``hidden_states + (y - s)``, exactly ``hidden_states`` where ``y == s``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import inject
from ...hooks import HookHandles, output_tensor, replace_output


@dataclass(frozen=True)
class CompiledSteering:
    """One request's steering, ready for a table slot."""

    key: str  # the library's fingerprint: equal keys steer identically
    mode: str
    site: str
    positions: str
    deltas: torch.Tensor  # (num_layers, hidden) float32: what each layer adds or turns towards

    @property
    def injection(self) -> tuple[str, str]:
        return self.mode, self.site


class _Switch:
    """Whether an eager engine's hooks act on this step (compiled engines have none)."""

    on = False


class SteeringTable:
    """The persistent buffers of one injection, and the hooks that read them."""

    def __init__(
        self,
        injection: tuple[str, str],
        modules: Iterable[tuple[int, nn.Module]],
        *,
        num_layers: int,
        slots: int,
        hidden: int,
        max_tokens: int,
        device: torch.device,
        dtype: torch.dtype,
        static: bool,
    ) -> None:
        self.mode, self.site = injection
        self.slots = slots
        self.deltas = torch.zeros(num_layers, slots, hidden, device=device, dtype=dtype)
        self.away = torch.zeros_like(self.deltas) if self.mode == "rotate" else None
        self.index = torch.zeros(max_tokens, dtype=torch.long, device=device)
        # The host side of the index: the index itself on a CPU, pinned memory on a GPU.
        self._staging = (
            self.index
            if device.type == "cpu"
            else torch.zeros(max_tokens, dtype=torch.long, pin_memory=torch.cuda.is_available())
        )
        self._switch = None if static else _Switch()
        self._prefix = f"_icv_{self.mode}_{self.site}"
        self._modules: list[nn.Module] = []
        self._handles = HookHandles()
        hook = _block_hook if self.site == "block" else _output_hook
        try:
            for layer, module in modules:
                self._attach(module, layer, hook)
        except BaseException:
            self.remove()
            raise

    def _attach(self, module: nn.Module, layer: int, hook: Any) -> None:
        module.register_buffer(f"{self._prefix}_deltas", self.deltas, persistent=False)
        module.register_buffer(f"{self._prefix}_index", self.index, persistent=False)
        if self.away is not None:
            module.register_buffer(f"{self._prefix}_away", self.away, persistent=False)
        self._modules.append(module)
        bound = functools.partial(hook, prefix=self._prefix, layer=layer, mode=self.mode, switch=self._switch)
        self._handles.add(module.register_forward_hook(bound))

    @property
    def max_tokens(self) -> int:
        return int(self.index.shape[0])

    def write_slot(self, slot: int, deltas: torch.Tensor) -> None:
        """Fill ``slot`` with a steering's ``(layers, hidden)`` deltas (slot 0 stays zero)."""
        if not 0 < slot < self.slots:
            raise ValueError(f"slot {slot} is not one of 1..{self.slots - 1}")
        self.deltas[:, slot].copy_(deltas.to(self.deltas.dtype))
        if self.away is not None:
            self.away[:, slot].copy_(inject.away_directions(deltas).to(self.away.dtype))

    def write_index(self, slots: np.ndarray) -> bool:
        """Each of the step's tokens' slot (padding included); whether any token is steered."""
        count = len(slots)
        if count > self.max_tokens:
            raise ValueError(f"a step of {count} tokens does not fit the index of {self.max_tokens}")
        self._staging.numpy()[:count] = slots
        if self._staging is not self.index:
            self.index[:count].copy_(self._staging[:count], non_blocking=True)
        steered = bool(slots.any())
        if self._switch is not None:
            self._switch.on = steered
        return steered

    def clear_index(self, count: int) -> None:
        """Point the first ``count`` tokens back at slot 0 (vLLM's own dummy runs stay unsteered)."""
        self.index[:count].zero_()
        if self._staging is not self.index:
            self._staging[:count].zero_()
        if self._switch is not None:
            self._switch.on = False

    def remove(self) -> None:
        """Take the hooks and buffers off the model."""
        self._handles.remove()
        for module in self._modules:
            for part in ("deltas", "index", "away"):
                module._buffers.pop(f"{self._prefix}_{part}", None)
        self._modules.clear()


def _steer(module: nn.Module, prefix: str, layer: int, mode: str, x: torch.Tensor) -> torch.Tensor:
    # x is vLLM's flat (num_tokens, hidden); the slice follows its (padded) token count.
    index = getattr(module, f"{prefix}_index")[: x.shape[0]]
    d = getattr(module, f"{prefix}_deltas")[layer].index_select(0, index)
    if mode == "add":
        return inject.add(x, d)
    away = getattr(module, f"{prefix}_away")[layer].index_select(0, index)
    return inject.rotate(x, d, away)


def _output_hook(
    module: nn.Module, _args: Any, output: Any, *, prefix: str, layer: int, mode: str, switch: _Switch | None
) -> Any:
    if switch is not None and not switch.on:
        return None
    x = output if type(output) is torch.Tensor else output_tensor(output)
    y = _steer(module, prefix, layer, mode, x)
    return y if type(output) is torch.Tensor else replace_output(output, y)


def _block_hook(
    module: nn.Module, _args: Any, output: Any, *, prefix: str, layer: int, mode: str, switch: _Switch | None
) -> Any:
    if switch is not None and not switch.on:
        return None
    if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], torch.Tensor)):
        return replace_output(output, _steer(module, prefix, layer, mode, output_tensor(output)))
    hidden, residual = output
    if mode == "add":
        return _steer(module, prefix, layer, mode, hidden), residual
    total = hidden + residual
    return hidden + (_steer(module, prefix, layer, mode, total) - total), residual
