"""Where the steering sites are in vLLM's own model classes, family by family.

vLLM builds its own modules for most families (``vllm/model_executor/models/<family>.py``)
and runs a few through its Transformers backend, which keeps transformers' decoder
layers (with vLLM's linears and attention inside).  The paths differ from transformers'
where vLLM's classes differ: Mixtral's MoE block is ``block_sparse_moe``; Bloom's
``BloomAttention`` and ``BloomMLP`` return their own outputs (transformers' add the
residual inside them).  Only the families in :data:`VLLM_ARCHITECTURES` are steered;
the plugin refuses any other rather than hook a module it has not been checked on
(``tests/with_vllm/test_vllm_sites.py`` checks every entry on the model vLLM builds).
"""

from __future__ import annotations

from torch import nn

from ...errors import SteeringError
from ...layers import Architecture, decoder_layers

_LLAMA_LIKE = Architecture(layers="model.layers", mlp="mlp", attn="self_attn")

VLLM_ARCHITECTURES: dict[str, Architecture] = {
    **{
        name: _LLAMA_LIKE
        for name in (
            # vLLM's own classes
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "stablelm",
            "granite",
            "cohere",
            # transformers' decoder layers, through vLLM's Transformers backend
            "phi",
            "olmo",
            "olmo2",
            "starcoder2",
            "smollm3",
        )
    },
    "mixtral": Architecture(layers="model.layers", mlp="block_sparse_moe", attn="self_attn"),
    "gpt_neox": Architecture(layers="model.layers", mlp="mlp", attn="attention"),  # Transformers backend
    "gpt2": Architecture(layers="transformer.h", mlp="mlp", attn="attn"),
    "gptj": Architecture(layers="transformer.h", mlp="mlp", attn="attn"),
    "falcon": Architecture(layers="transformer.h", mlp="mlp", attn="self_attention"),
    "opt": Architecture(layers="model.decoder.layers", mlp="fc2", attn="self_attn"),
    "bloom": Architecture(layers="transformer.h", mlp="mlp", attn="self_attention"),
}


def vllm_architecture(model: nn.Module) -> Architecture:
    """The paths of ``model``'s sites (a model vLLM built); refuses a family not in the table."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return VLLM_ARCHITECTURES[str(model_type)]
    except KeyError:
        raise SteeringError(
            f"icv's vLLM plugin does not steer '{model_type}' models ({type(model).__name__}): it steers "
            f"{', '.join(sorted(VLLM_ARCHITECTURES))}; serve this model with `icv serve --engine transformers` "
            "(icv's own engine steers every family of icv.layers.ARCHITECTURES)"
        ) from None


def site_modules(model: nn.Module, site: str) -> list[tuple[int, nn.Module]]:
    """``(layer, module)`` at ``site`` for each decoder layer this worker runs (pipeline parallel: a part)."""
    architecture = vllm_architecture(model)
    path = {"mlp": architecture.mlp, "attn": architecture.attn}.get(site)
    found = []
    for index, layer in enumerate(decoder_layers(model, architecture)):
        if type(layer).__name__ == "PPMissingLayer":  # another pipeline stage's layer
            continue
        found.append((index, layer if path is None else layer.get_submodule(path)))
    if not found:
        raise SteeringError(f"this vLLM worker runs no decoder layer to steer at '{site}'")
    return found
