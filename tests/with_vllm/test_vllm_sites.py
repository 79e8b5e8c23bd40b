"""Where icv's vLLM plugin steers, family by family, on the model objects vLLM builds.

``VLLM_SITES`` is written from vLLM 0.32's own modeling code
(``vllm/model_executor/models/<family>.py``; for the families vLLM runs through its
Transformers backend, transformers' decoder layers), NOT from icv/serving/vllm/sites.py,
so that a wrong entry there fails here.  Per family: the class of its decoder layers and,
per site, the attribute path inside one layer and the class of the module there, the
module whose output vLLM's layer adds to the residual stream.  The tiny models are built
in one separate process (vllm_site_probe.py), without an engine or weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from tiny import LAYERS, tiny_model  # noqa: E402

import icv  # noqa: E402
from icv.layers import ARCHITECTURES  # noqa: E402
from icv.serving.vllm.sites import VLLM_ARCHITECTURES, site_modules, vllm_architecture  # noqa: E402


def _llama_like(layer: str, mlp: str, attn: str) -> tuple[str, tuple[str, str], tuple[str, str]]:
    return layer, ("mlp", mlp), ("self_attn", attn)


# family: (decoder layer class, (mlp path, class), (attn path, class))
VLLM_SITES: dict[str, tuple[str, tuple[str, str], tuple[str, str]]] = {
    "llama": _llama_like("LlamaDecoderLayer", "LlamaMLP", "LlamaAttention"),
    "mistral": _llama_like("MistralDecoderLayer", "LlamaMLP", "MistralAttention"),
    # vLLM keeps Mixtral's MoE block under its old name (transformers 5 calls it mlp).
    "mixtral": ("MixtralDecoderLayer", ("block_sparse_moe", "MixtralMoE"), ("self_attn", "MixtralAttention")),
    "qwen2": _llama_like("Qwen2DecoderLayer", "Qwen2MLP", "Qwen2Attention"),
    "qwen3": _llama_like("Qwen3DecoderLayer", "Qwen2MLP", "Qwen3Attention"),
    "qwen3_moe": _llama_like("Qwen3MoeDecoderLayer", "Qwen3MoeSparseMoeBlock", "Qwen3MoeAttention"),
    "gemma": _llama_like("GemmaDecoderLayer", "GemmaMLP", "GemmaAttention"),
    "gemma2": _llama_like("Gemma2DecoderLayer", "Gemma2MLP", "Gemma2Attention"),
    "gemma3_text": _llama_like("Gemma3DecoderLayer", "Gemma3MLP", "Gemma3Attention"),
    "phi3": _llama_like("LlamaDecoderLayer", "LlamaMLP", "LlamaAttention"),  # vLLM's Phi3 is a Llama
    "stablelm": _llama_like("StablelmDecoderLayer", "StablelmMLP", "StablelmAttention"),
    "granite": _llama_like("GraniteDecoderLayer", "GraniteMLP", "GraniteAttention"),
    "cohere": _llama_like("CohereDecoderLayer", "CohereMLP", "CohereAttention"),
    # The Transformers backend: transformers' layers, MLPs and attentions.
    "phi": _llama_like("PhiDecoderLayer", "PhiMLP", "PhiAttention"),
    "olmo": _llama_like("OlmoDecoderLayer", "OlmoMLP", "OlmoAttention"),
    "olmo2": _llama_like("Olmo2DecoderLayer", "Olmo2MLP", "Olmo2Attention"),
    "starcoder2": _llama_like("Starcoder2DecoderLayer", "Starcoder2MLP", "Starcoder2Attention"),
    "smollm3": _llama_like("SmolLM3DecoderLayer", "SmolLM3MLP", "SmolLM3Attention"),
    "gpt_neox": ("GPTNeoXLayer", ("mlp", "GPTNeoXMLP"), ("attention", "GPTNeoXAttention")),
    "gpt2": ("GPT2Block", ("mlp", "GPT2MLP"), ("attn", "GPT2Attention")),
    "gptj": ("GPTJBlock", ("mlp", "GPTJMLP"), ("attn", "GPTJAttention")),
    "falcon": ("FalconDecoderLayer", ("mlp", "FalconMLP"), ("self_attention", "FalconAttention")),
    # OPT has no MLP module; fc2, the feed-forward's last linear, is a RowParallelLinear.
    "opt": ("OPTDecoderLayer", ("fc2", "RowParallelLinear"), ("self_attn", "OPTAttention")),
    # vLLM's BloomAttention and BloomMLP return their own outputs (the block adds the residual).
    "bloom": ("BloomBlock", ("mlp", "BloomMLP"), ("self_attention", "BloomAttention")),
}
# Families icv steers in transformers that the plugin refuses: vLLM's multimodal Gemma 3
# (another module tree; its image processor needs torchvision, which vLLM's CPU build here lacks).
REFUSED = {"gemma3"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{family: {"modules": [[name, class], ...], "sites": {site: [[layer, name], ...]}}}."""
    out = tmp_path_factory.mktemp("vllm-sites") / "sites.json"
    probe = Path(__file__).with_name("vllm_site_probe.py")
    done = subprocess.run(
        [sys.executable, str(probe), str(out), *sorted(VLLM_SITES)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_family_icv_steers_is_steered_by_the_plugin_or_refused():
    assert set(VLLM_SITES) | REFUSED == set(ARCHITECTURES)
    assert not set(VLLM_SITES) & REFUSED
    assert set(VLLM_ARCHITECTURES) == set(VLLM_SITES)


@pytest.mark.parametrize("family", sorted(VLLM_SITES))
def test_the_plugins_site_modules_are_the_modules_vllm_names(built, family):
    layer_class, mlp, attn = VLLM_SITES[family]
    modules = dict(map(tuple, built[family]["modules"]))
    blocks = [name for name, cls in built[family]["modules"] if cls == layer_class]
    assert len(blocks) == LAYERS, (family, layer_class, built[family]["model"])
    sites = built[family]["sites"]
    assert sites["block"] == [[layer, name] for layer, name in enumerate(blocks)]
    for site, (path, cls) in (("mlp", mlp), ("attn", attn)):
        expected = [[layer, f"{name}.{path}"] for layer, name in enumerate(blocks)]
        assert sites[site] == expected, f"{family}: {site}"
        assert {modules[name] for _, name in sites[site]} == {cls}, f"{family}: {site}"


@pytest.mark.parametrize("family", sorted(REFUSED) + ["an_unknown_family"])
def test_a_family_the_plugin_does_not_map_is_refused_with_the_families_it_steers(family):
    model = tiny_model(family if family in ARCHITECTURES else "llama")
    model.config.model_type = family
    for refuse in (lambda: vllm_architecture(model), lambda: site_modules(model, "mlp")):
        with pytest.raises(
            icv.SteeringError, match=f"does not steer '{family}'.*llama.*--engine transformers"
        ):
            refuse()
