"""Every family of ``icv/layers.py``'s table: the hooks sit on the modules the architecture names.

``tests/steering_reference.py`` finds each site from the model's own classes (the block's
``...Attention`` child, its ``...MLP`` or ``...MoeBlock`` child, the last linear of a module
that adds the residual itself), never through ``icv.layers``; these tests hold the library's
table to it, module for module, and compare what is read and steered there with plain hooks
on those modules.  Steered logits per site and mode: ``test_layers_sites.py``.
"""

from __future__ import annotations

import pytest
import torch
from steering_reference import site_module
from tiny import DEMOS, FAMILIES, LAYERS, ByteTokenizer, tiny_model

import icv
from icv.layers import ARCHITECTURES, SITES, site_modules

ALL = sorted(FAMILIES)


def test_every_family_in_the_table_has_a_tiny_model():
    assert sorted(ARCHITECTURES) == ALL


def _names(model: torch.nn.Module, modules: list[torch.nn.Module]) -> list[str]:
    where = {id(module): name for name, module in model.named_modules()}
    return [where.get(id(module), "<not in the model>") for module in modules]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("family", ALL)
def test_the_library_hooks_the_module_the_architecture_names(family, site):
    model = tiny_model(family)
    expected = [site_module(model, layer, site) for layer in range(LAYERS)]
    assert _names(model, site_modules(model, site)) == _names(model, expected)


def _last_token_outputs(model, site: str, text: str) -> torch.Tensor:
    """(layers, hidden): what each layer's ``site`` module outputs at the last token of ``text``."""
    seen: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(_module, _args, output):
            # A copy: falcon adds the attention into its MLP's output in place, after the hook.
            # OPT's feed-forward sees the tokens flattened to (tokens, hidden).
            x = output if isinstance(output, torch.Tensor) else output[0]
            seen[layer] = x.reshape(-1, x.shape[-1])[-1].clone()

        return hook

    handles = [site_module(model, l, site).register_forward_hook(keep(l)) for l in range(LAYERS)]
    try:
        with torch.no_grad():
            model(torch.tensor([ByteTokenizer()(text)["input_ids"]]))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([seen[l] for l in range(LAYERS)])


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("family", ALL)
def test_extraction_reads_the_activation_of_the_named_module(family, site):
    model = tiny_model(family)
    vector = icv.extract(model, ByteTokenizer(), DEMOS, site=site, method="mean")
    shift = torch.stack(
        [_last_token_outputs(model, site, t) - _last_token_outputs(model, site, s) for s, t in DEMOS]
    ).mean(0)
    torch.testing.assert_close(
        vector.directions, shift / shift.norm(dim=-1, keepdim=True), atol=1e-5, rtol=1e-4
    )
    states = torch.stack([_last_token_outputs(model, site, text) for pair in DEMOS for text in pair])
    torch.testing.assert_close(vector.layer_scales, states.norm(dim=-1).mean(0), atol=1e-5, rtol=1e-4)
