"""One table from ``config.model_type`` to the modules steering needs.

Paths are dotted attribute paths: ``layers`` from the top-level model to the
``ModuleList`` of decoder blocks, ``mlp`` and ``attn`` from one block to the
module whose output is the MLP's (resp. attention's) contribution to the
residual stream, before it is added back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import ArchitectureError, OptionError


@dataclass(frozen=True)
class Architecture:
    """Where the decoder blocks, their MLP and their attention live.

    Args:
        layers: the dotted path from the model to its list of decoder blocks
            (``"model.layers"``).
        mlp: the path from a block to its MLP (``"mlp"``).
        attn: the path from a block to its attention (``"self_attn"``).
    """

    layers: str
    mlp: str
    attn: str


_LLAMA_LIKE = Architecture(layers="model.layers", mlp="mlp", attn="self_attn")

ARCHITECTURES: dict[str, Architecture] = {
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi",
            "phi3",
            "olmo",
            "olmo2",
            "stablelm",
            "starcoder2",
            "granite",
            "cohere",
            "smollm3",
        )
    },
    "gemma3": Architecture(layers="model.language_model.layers", mlp="mlp", attn="self_attn"),
    "gpt2": Architecture(layers="transformer.h", mlp="mlp", attn="attn"),
    "gptj": Architecture(layers="transformer.h", mlp="mlp", attn="attn"),
    "gpt_neox": Architecture(layers="gpt_neox.layers", mlp="mlp", attn="attention"),
    "falcon": Architecture(layers="transformer.h", mlp="mlp", attn="self_attention"),
    # OPT has no MLP module: fc2 is the last linear of its feed-forward.
    "opt": Architecture(layers="model.decoder.layers", mlp="fc2", attn="self_attn"),
    # Bloom's attention and MLP each add the residual themselves (transformers'
    # BloomAttention/BloomMLP end in dropout_add(output, residual)): their last linears
    # give their own outputs.
    "bloom": Architecture(layers="transformer.h", mlp="mlp.dense_4h_to_h", attn="self_attention.dense"),
}


def register_architecture(model_type: str, architecture: Architecture) -> None:
    """Teach the library a model type it does not know (or override a known one).

    Args:
        model_type: transformers' ``config.model_type`` of the model.
        architecture: where its decoder layers, MLPs and attentions are.
    """
    ARCHITECTURES[model_type] = architecture


def _resolve(root: nn.Module, path: str, what: str, model_type: str) -> nn.Module:
    module = root
    for part in path.split("."):
        child = getattr(module, part, None)
        if child is None and part.isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)):
            child = module[int(part)]
        if not isinstance(child, nn.Module):
            raise ArchitectureError(
                f"cannot find the {what} at '{path}' in a '{model_type}' model; pass "
                f"architecture=icv.Architecture(layers=..., mlp=..., attn=...) or call "
                f"icv.register_architecture('{model_type}', ...) with the right paths"
            )
        module = child
    return module


def architecture_of(model: nn.Module, override: Architecture | None = None) -> Architecture:
    """The table entry for ``model`` (or ``override``), with a helpful error if unknown."""
    if override is not None:
        return override
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise ArchitectureError("the model has no config.model_type; pass architecture=icv.Architecture(...)")
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ArchitectureError(
            f"unknown model type '{model_type}' (known: {known}); pass "
            "architecture=icv.Architecture(layers='model.layers', mlp='mlp', attn='self_attn') "
            f"with the paths of your model, or icv.register_architecture('{model_type}', ...)"
        ) from None


def decoder_layers(model: nn.Module, override: Architecture | None = None) -> list[nn.Module]:
    """The decoder blocks of ``model``, in order."""
    arch = architecture_of(model, override)
    model_type = getattr(model.config, "model_type", "?")
    layers = _resolve(model, arch.layers, "decoder layers", model_type)
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)) or len(layers) == 0:
        raise ArchitectureError(
            f"'{arch.layers}' in a '{model_type}' model is not a non-empty list of decoder layers"
        )
    return list(layers)


def input_embeddings(model: nn.Module) -> nn.Module | None:
    """The token embedding module (transformers' ``get_input_embeddings()``); ``None`` if the model has none."""
    get = getattr(model, "get_input_embeddings", None)
    return get() if callable(get) else None


SITES = ("block", "mlp", "attn")


def site_modules(model: nn.Module, site: str, override: Architecture | None = None) -> list[nn.Module]:
    """The module per layer whose output is the activation at ``site``."""
    layers = decoder_layers(model, override)
    if site == "block":
        return layers
    arch = architecture_of(model, override)
    path = {"mlp": arch.mlp, "attn": arch.attn}.get(site)
    if path is None:
        raise OptionError(f"unknown site '{site}': choose one of {', '.join(SITES)}")
    model_type = getattr(model.config, "model_type", "?")
    return [_resolve(layer, path, f"{site} module of each layer", model_type) for layer in layers]


def hidden_size_of(model: nn.Module) -> int:
    """The width of the model's residual stream (its embeddings' size)."""
    size = getattr(input_embeddings(model), "embedding_dim", None)
    config: Any = model.config  # a transformers config (nn.Module's type does not declare it)
    return int(size if size is not None else config.hidden_size)
