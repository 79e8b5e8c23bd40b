"""Hand-written reference steering, independent of icv's hooks, for the tests to compare against.

The formulas are written directly from the docstring of ``icv/steer.py`` (and the
paper's reference code, see ``icv-method.md``), in float64, with plain torch hooks
on modules found by attribute paths, not through ``icv.layers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Where each site's output comes from, written from transformers' own modeling code
# (transformers/models/<family>/modeling_<family>.py), NOT from icv/layers.py, so that the
# tests catch a wrong entry there.  Per family: the class of its decoder layers, and per
# site the attribute path inside one decoder layer and the class of the module found there,
# the module whose output is added (as is, or through a norm, dropout or multiplier that
# the layer applies) to the residual stream.
#
# * OPT has no MLP module: ``fc2`` (an ``nn.Linear``) is its feed-forward's last linear.
# * Bloom's ``BloomAttention`` and ``BloomMLP`` each add the residual themselves
#   (``dropout_add(output, residual, ...)``), so their outputs are the residual stream;
#   the contributions are their last linears' outputs, ``self_attention.dense`` and
#   ``mlp.dense_4h_to_h``.
# * Falcon, GPT-J, Phi, Cohere (and GPT-NeoX, StableLM with parallel residuals) run
#   attention and MLP side by side on the same input; both are still separate modules.
# * Gemma2/Gemma3/Olmo2 pass each output through a post-norm before the residual add;
#   Granite scales it by ``residual_multiplier``: the site is the module's own output.


@dataclass(frozen=True)
class Sites:
    """One family's decoder-layer class and, per site, (attribute path in a layer, class there)."""

    layer: str
    mlp: tuple[str, str]
    attn: tuple[str, str]


def _llama_like(prefix: str, mlp: str = "MLP") -> Sites:
    return Sites(f"{prefix}DecoderLayer", ("mlp", f"{prefix}{mlp}"), ("self_attn", f"{prefix}Attention"))


SITES: dict[str, Sites] = {
    "llama": _llama_like("Llama"),
    "mistral": _llama_like("Mistral"),
    "mixtral": _llama_like("Mixtral", "SparseMoeBlock"),
    "qwen2": _llama_like("Qwen2"),
    "qwen3": _llama_like("Qwen3"),
    "qwen3_moe": _llama_like("Qwen3Moe", "SparseMoeBlock"),
    "gemma": _llama_like("Gemma"),
    "gemma2": _llama_like("Gemma2"),
    "gemma3_text": _llama_like("Gemma3"),
    "gemma3": _llama_like("Gemma3"),  # the multimodal wrapper: its language model's layers
    "phi": _llama_like("Phi"),
    "phi3": _llama_like("Phi3"),
    "olmo": _llama_like("Olmo"),
    "olmo2": _llama_like("Olmo2"),
    "stablelm": _llama_like("StableLm"),
    "starcoder2": _llama_like("Starcoder2"),
    "granite": _llama_like("Granite"),
    "cohere": _llama_like("Cohere"),
    "smollm3": _llama_like("SmolLM3"),
    "gpt2": Sites("GPT2Block", ("mlp", "GPT2MLP"), ("attn", "GPT2Attention")),
    "gptj": Sites("GPTJBlock", ("mlp", "GPTJMLP"), ("attn", "GPTJAttention")),
    "gpt_neox": Sites("GPTNeoXLayer", ("mlp", "GPTNeoXMLP"), ("attention", "GPTNeoXAttention")),
    "falcon": Sites("FalconDecoderLayer", ("mlp", "FalconMLP"), ("self_attention", "FalconAttention")),
    "opt": Sites("OPTDecoderLayer", ("fc2", "Linear"), ("self_attn", "OPTAttention")),
    "bloom": Sites("BloomBlock", ("mlp.dense_4h_to_h", "Linear"), ("self_attention.dense", "Linear")),
}


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers, found by their class name, in module order."""
    name = SITES[model.config.model_type].layer
    return [m for m in model.modules() if type(m).__name__ == name]


def site_module(model: nn.Module, layer: int, site: str) -> nn.Module:
    """The module of decoder layer ``layer`` whose output is ``site``'s activation."""
    block = decoder_blocks(model)[layer]
    if site == "block":
        return block
    path, class_name = getattr(SITES[model.config.model_type], site)
    module = block.get_submodule(path)
    assert type(module).__name__ == class_name, (path, type(module).__name__, class_name)
    return module


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
