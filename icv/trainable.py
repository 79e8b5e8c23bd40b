"""What training fits, and the differentiable injection it fits it through.

Two levels, both written back into the ordinary vector format:

* ``"coefficients"`` (I2CL-style): one factor ``c_l`` per layer; the trained vector's
  direction row ``l`` is ``c_l * v_l`` (the direction's orientation is kept, only its
  size changes), and its shift ``c_l * shift_l`` (as ``vector * k`` scales both).
* ``"directions"`` (LIVE / ReFT-style): a free offset ``e_l`` per layer; the row becomes
  ``v_l + e_l``.

At the training strength ``s`` a row ``r_l`` is injected exactly as :func:`icv.steer`
injects it (:func:`icv.steer.layer_deltas`): the rotation turns the site's output towards
``s * r_l``; the addition adds ``s * layer_scales[l] * r_l``.  :func:`rotate` and
:func:`add` below are :mod:`icv.inject`'s arithmetic written without in-place operations
(autograd needs the values those overwrite); the tests hold them to ``icv.inject``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .hooks import HookHandles, output_tensor, replace_output

LEVELS = ("coefficients", "directions")

_EPS = 1e-12


def rotate(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """:func:`icv.inject.rotate` of ``x`` towards ``d``, differentiable in ``d``."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    d_norm = torch.linalg.vector_norm(d.float(), dim=-1, keepdim=True)
    away = torch.where(d_norm > 0, -d / d_norm.clamp_min(_EPS).to(d.dtype), torch.zeros_like(d))
    coef = torch.linalg.vecdot(x, away).unsqueeze(-1).clamp_min(0.0) + norm
    y = x + coef * d
    return y * torch.nan_to_num(norm / torch.linalg.vector_norm(y, dim=-1, keepdim=True), 0.0, 0.0, 0.0)


def add(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """:func:`icv.inject.add` without a mask."""
    return x + d


INJECT = {"rotate": rotate, "add": add}


class TrainableRows:
    """The trainable part of a vector: per-layer factors or offsets on its direction rows.

    Args:
        base: ``(layers, hidden)`` the starting vector's direction rows.
        level: ``"coefficients"`` or ``"directions"``.
        covered: ``(layers,)`` bool, the layers the vector steers (the others stay zero).
        device: where the rows live (the model's input device).
    """

    def __init__(
        self, base: torch.Tensor, level: str, covered: torch.Tensor, device: torch.device | None = None
    ) -> None:
        self.level = level
        self.base = base.detach().to(device, torch.float32).clone()
        self.covered = covered.detach().to(device, torch.float32)[:, None]
        shape = (base.shape[0],) if level == "coefficients" else tuple(base.shape)
        start = torch.ones if level == "coefficients" else torch.zeros
        self.weight = start(shape, device=self.base.device).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer moves."""
        return [self.weight]

    def rows(self) -> torch.Tensor:
        """``(layers, hidden)``: the direction rows as they stand."""
        if self.level == "coefficients":
            return self.base * self.weight[:, None]
        return self.base + self.weight * self.covered

    def penalty(self) -> torch.Tensor:
        """How far the rows moved from the start: mean squared change of the factors (from 1),
        or of the offsets relative to each row's starting size."""
        if self.level == "coefficients":
            return ((self.weight - 1.0) ** 2 * self.covered[:, 0]).sum() / self.covered.sum().clamp_min(1)
        size = self.base.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        return ((self.weight * self.covered / size) ** 2).sum(-1).sum() / self.covered.sum().clamp_min(1)

    def factors(self) -> torch.Tensor:
        """``(layers,)`` how much each row's size changed: the factors, or new norm / old norm."""
        with torch.no_grad():
            if self.level == "coefficients":
                return self.weight.detach().clone()
            old = self.base.norm(dim=-1)
            return torch.where(old > 0, self.rows().norm(dim=-1) / old.clamp_min(_EPS), torch.ones_like(old))


class TrainingHooks:
    """Forward hooks that inject ``deltas()`` (recomputed each forward pass) at ``modules``.

    ``enabled`` off: the hooks pass outputs through (the unsteered model).  Removed by
    :meth:`remove` (idempotent), which training calls in a ``finally``.
    """

    def __init__(self, modules: list[nn.Module], layers: list[int], mode: str) -> None:
        self.enabled = True
        self.deltas: torch.Tensor | None = None  # (layers, hidden), set before each pass
        self._apply = INJECT[mode]
        self._handles = HookHandles()
        try:
            for layer in layers:
                self._handles.add(modules[layer].register_forward_hook(self._hook_for(layer)))
        except BaseException:
            self.remove()
            raise

    def _hook_for(self, layer: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
            if not self.enabled or self.deltas is None:
                return None
            x = output_tensor(output)
            d = self.deltas[layer].to(x.device, x.dtype)
            y = self._apply(x, d)
            return replace_output(output, y)

        return hook

    def remove(self) -> None:
        self._handles.remove()

    def __len__(self) -> int:
        return len(self._handles)
