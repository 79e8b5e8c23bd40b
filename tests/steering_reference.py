"""Hand-written reference steering, independent of icv's hooks, for the tests to compare against.

The formulas are written directly from the docstring of ``icv/steer.py`` (and the
paper's reference code, see ``icv-method.md``), in float64, with plain torch hooks
on modules found by attribute paths, not through ``icv.layers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# (path of the decoder layers, of the MLP, of the attention) for the families these tests use.
_PATHS = {
    "llama": ("model.layers", "mlp", "self_attn"),
    "gpt2": ("transformer.h", "mlp", "attn"),
}


def site_module(model: nn.Module, layer: int, site: str) -> nn.Module:
    layers_path, mlp, attn = _PATHS[model.config.model_type]
    block = model.get_submodule(layers_path)[layer]
    return {"block": block, "mlp": block.get_submodule(mlp), "attn": block.get_submodule(attn)}[site]


def rotate(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x' = normalize(x/|x| + boost*delta) * |x|, boost = 1 + max(0, cos(x, -delta))."""
    x64, d = x.double(), delta.double().to(x.device)
    # A zero activation (e.g. a padding token's) stays zero rather than turning into NaN.
    norm = x64.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if float(d.norm()) == 0.0:
        return x
    cos = (x64 @ -d) / (norm.squeeze(-1) * d.norm())
    boost = 1.0 + cos.clamp_min(0.0)
    turned = x64 / norm + boost.unsqueeze(-1) * d
    return (turned / turned.norm(dim=-1, keepdim=True) * norm).to(x.dtype)


def add(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x' = x + delta (delta = strength * scale_l * v_l)."""
    return (x.double() + delta.double().to(x.device)).to(x.dtype)


def paper_icv_layer(x: torch.Tensor, icv: torch.Tensor, lam: float) -> torch.Tensor:
    """The authors' injection (their ICVLayer.forward for one vector), kept in float32.

    ``lambda_sim = 1 + max(0, cos(x, -icv))``;
    ``x' = normalize(normalize(x) + lam * lambda_sim * normalize(icv)) * |x|``.
    """
    x = x.float()
    icv = icv.float().to(x.device)
    original_norm = torch.norm(x, dim=-1, keepdim=True)
    lambda_sim = 1.0 + torch.clamp(F.cosine_similarity(x, -icv[None, None, :], dim=-1), min=0.0)
    y = lam * lambda_sim.unsqueeze(-1) * F.normalize(icv, dim=-1)
    return F.normalize(F.normalize(x, p=2, dim=-1) + y, p=2, dim=-1) * original_norm


Transform = Callable[[torch.Tensor, int], torch.Tensor]  # (activation (B, T, H), layer) -> new


@contextmanager
def manual_steering(
    model: nn.Module,
    site: str,
    layers: Sequence[int],
    transform: Transform,
    keep: Callable[[int, int], torch.Tensor] | None = None,
):
    """Plain forward hooks applying ``transform`` at ``site`` of ``layers``.

    ``keep(past, length)`` returns a boolean mask over this call's positions (by
    absolute position); positions outside it are left untouched.  ``past`` is read
    from the cache the top-level model is given, 0 without one.
    """
    state = {"past": 0}

    def observe(_m, _args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state["past"] = int(cache.get_seq_length()) if cache is not None else 0

    def make(layer: int):
        def hook(_m, _args, output):
            x = output if isinstance(output, torch.Tensor) else output[0]
            y = transform(x, layer)
            if keep is not None:
                mask = keep(state["past"], x.shape[1]).to(x.device).view(1, -1, 1)
                y = torch.where(mask, y, x)
            return y if isinstance(output, torch.Tensor) else (y, *output[1:])

        return hook

    handles = [model.register_forward_pre_hook(observe, with_kwargs=True)]
    try:
        for layer in layers:
            handles.append(site_module(model, layer, site).register_forward_hook(make(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def hook_count(model: nn.Module) -> int:
    """Forward and pre-forward hooks on every module of ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
