"""Hooks on vLLM's decoder layers that give every token of a step its own request's steering.

One :class:`InjectionHooks` per way of injecting (``rotate`` or ``add``, at ``block``,
``mlp`` or ``attn``) holds one forward hook per layer.  Before each step it is armed
with a table of the step's steerings, ``(layers, slots, hidden)`` with slot 0 the
zero delta, and a per-token slot index (:mod:`.rows`); each layer's hook then
gathers its rows with one ``index_select`` and applies the same arithmetic as
:func:`icv.steer` (:func:`icv.steer.rotate_towards`, or an addition).  No Python
loop over requests, no device synchronisation, and nothing at all while disarmed
(warm-up and profiling runs, steps without a steered token).

vLLM's decoder layers return ``(hidden_states, residual)``, whose sum is what
transformers calls the block's output: addition at the block adds to
``hidden_states``; rotation at the block rotates the sum ``s`` into ``y`` and
returns ``hidden_states + (y - s)``, which is exactly ``hidden_states`` where a token
is unsteered (``y == s`` bitwise there).  The MLP and attention return plain tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...hooks import HookHandles, output_tensor, replace_output
from ...steer import away_directions, rotate_towards


@dataclass(frozen=True)
class CompiledSteering:
    """One request's steering, ready for the hooks."""

    key: str  # the library's fingerprint: equal keys steer identically
    mode: str
    site: str
    positions: str
    deltas: torch.Tensor  # (num_layers, hidden) float32: what each layer adds or turns towards

    @property
    def injection(self) -> tuple[str, str]:
        return self.mode, self.site


class InjectionHooks:
    """A forward hook per layer for one injection, and the step's table they read."""

    def __init__(self, mode: str, site: str, modules: Iterable[tuple[int, nn.Module]]) -> None:
        self.mode = mode
        self.site = site
        self.active = False
        self._index: torch.Tensor | None = None
        self._deltas: torch.Tensor | None = None  # (layers, slots, hidden)
        self._away: torch.Tensor | None = None
        self._table_key: tuple | None = None
        self._handles = HookHandles()
        make = self._block_hook if site == "block" else self._output_hook
        try:
            for layer, module in modules:
                self._handles.add(module.register_forward_hook(make(layer)))
        except BaseException:
            self.remove()
            raise

    def arm(
        self,
        steerings: Sequence[CompiledSteering],
        index: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        """Steer the next forward: ``steerings`` fill slots 1.., ``index`` gives each token's slot."""
        key = (tuple(s.key for s in steerings), device, dtype)
        if key != self._table_key:  # rebuilt only when the batch's set of steerings changes
            table = torch.stack([torch.zeros_like(steerings[0].deltas), *(s.deltas for s in steerings)])
            self._deltas = table.transpose(0, 1).to(device, dtype).contiguous()
            self._away = away_directions(self._deltas) if self.mode == "rotate" else None
            self._table_key = key
        self._index = torch.from_numpy(index).to(device, non_blocking=True)
        self.active = True

    def disarm(self) -> None:
        self.active = False
        self._index = None

    def remove(self) -> None:
        self.disarm()
        self._handles.remove()

    def _apply(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        assert self._deltas is not None and self._index is not None
        d = self._deltas[layer].index_select(0, self._index)
        if self.mode == "add":
            return x + d
        assert self._away is not None
        away = self._away[layer].index_select(0, self._index)
        return rotate_towards(x, d, torch.linalg.vecdot(x, away).unsqueeze_(-1))

    def _output_hook(self, layer: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if not self.active:
                return None
            x = output if type(output) is torch.Tensor else output_tensor(output)
            y = self._apply(layer, x)
            return y if type(output) is torch.Tensor else replace_output(output, y)

        return hook

    def _block_hook(self, layer: int) -> Callable[[nn.Module, Any, Any], Any]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if not self.active:
                return None
            if not (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], torch.Tensor)):
                x = output_tensor(output)  # a layer that returns its whole output
                return replace_output(output, self._apply(layer, x))
            hidden, residual = output
            if self.mode == "add":
                return self._apply(layer, hidden), residual
            total = hidden + residual
            return hidden + (self._apply(layer, total) - total), residual

        return hook
