"""Where in the network: layer selections and profiles, sites x modes, arithmetic, extraction sites.

Every steered forward is compared with a hand-written reference (tests/steering_reference.py):
the formulas of icv/steer.py's docstring in float64, applied by plain torch hooks.

* rotate: ``x' = normalize(x/|x| + boost*delta)*|x|``, ``boost = 1 + max(0, cos(x, -delta))``,
  ``delta = strength * weight_l * v_l``;
* add: ``x' = x + strength * weight_l * scale_l * v_l``.
"""

from __future__ import annotations

import pytest
import torch
from steering_reference import (
    SITES,
    add,
    decoder_blocks,
    hook_count,
    manual_steering,
    paper_icv_layer,
    rotate,
    site_module,
)
from tiny import DEMOS, FAMILIES, LAYERS, ByteTokenizer, tiny_model

import icv
from icv.layers import ARCHITECTURES, site_modules

PROMPTS = ["the room was", "i think the food", "service"]
ATOL = 2e-5  # float32 hooks vs the float64 reference, through a 3-layer model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vec(model):
    return icv.extract(model, ByteTokenizer(), DEMOS)


@pytest.fixture(scope="module")
def other(model):
    # Different demonstrations (hence different layer scales), same model.
    return icv.extract(model, ByteTokenizer(), [("bad", "good"), ("sad day", "happy day")], name="other")


def logits(model, prompts=PROMPTS):
    with torch.no_grad():
        return model(**ByteTokenizer().batch(prompts)).logits


def reference(model, site, layers, mode, deltas, prompts=PROMPTS):
    """Logits with the reference formula applied at ``site`` of ``layers`` (delta per layer)."""
    apply = rotate if mode == "rotate" else add
    with manual_steering(model, site, layers, lambda x, l: apply(x, deltas[l])):
        return logits(model, prompts)


def steered(model, vec, strength, **options):
    with icv.steer(model, vec, strength, **options):
        return logits(model)


def close(a, b, atol=ATOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


# -- layers -----------------------------------------------------------------------------


def test_a_layer_range_equals_the_reference_on_those_layers(model, vec):
    s = 1.0
    got = steered(model, vec, s, layers=range(1, 3))
    close(got, reference(model, "mlp", [1, 2], "rotate", s * vec.directions))
    assert not torch.allclose(got, steered(model, vec, s), atol=1e-4)  # layer 0 mattered


def test_negative_indices_name_the_same_layers(model, vec):
    assert torch.equal(steered(model, vec, 1.0, layers=[-2, -1]), steered(model, vec, 1.0, layers=[1, 2]))
    assert torch.equal(steered(model, vec, 1.0, layers=[-LAYERS]), steered(model, vec, 1.0, layers=[0]))


def test_only_selected_layers_are_hooked(model, vec):
    before = hook_count(model)
    with icv.steer(model, vec, 1.0, layers=[1]):
        assert hook_count(model) == before + 1
    assert hook_count(model) == before


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_a_profile_weight_multiplies_the_strength_at_that_layer(model, vec, mode):
    s = 0.5 if mode == "rotate" else 0.2
    profile = steered(model, vec, s, mode=mode, layers={1: 2.0})
    close(profile, steered(model, vec, 2 * s, mode=mode, layers=[1]), atol=1e-6)
    scale = vec.layer_scales if mode == "add" else torch.ones(LAYERS)
    site = "mlp" if mode == "rotate" else "block"
    close(profile, reference(model, site, [1], mode, 2 * s * scale[:, None] * vec.directions))


def test_a_float_tensor_is_a_per_layer_profile(model, vec):
    weights = torch.tensor([0.0, 0.5, 1.5])
    got = steered(model, vec, 0.8, layers=weights)
    close(got, reference(model, "mlp", [1, 2], "rotate", 0.8 * weights[:, None] * vec.directions))
    assert torch.equal(got, steered(model, vec, 0.8, layers={1: 0.5, 2: 1.5}))


@pytest.mark.parametrize(
    "layers",
    [
        [LAYERS],
        [-LAYERS - 1],
        {LAYERS: 1.0},
        range(0, LAYERS + 2),
        [],
        {0: 0.0},
        [1.5],
        [True],
        {0: float("nan")},
        torch.ones(LAYERS + 1),
        torch.tensor([0.0, float("inf"), 1.0]),
        1,
        "12",
        torch.tensor([LAYERS]),
    ],
)
def test_bad_layer_selections_are_option_errors_and_leave_no_hook(model, vec, layers):
    before = hook_count(model)
    with pytest.raises(icv.OptionError):
        icv.steer(model, vec, 1.0, layers=layers)
    assert hook_count(model) == before
    assert not icv.is_steered(model)


def test_integer_tensor_selects_layers(model, vec):
    assert torch.equal(
        steered(model, vec, 1.0, layers=torch.tensor([1, 2])), steered(model, vec, 1.0, layers=[1, 2])
    )


# -- sites x modes ----------------------------------------------------------------------


def test_every_family_of_the_table_has_a_tiny_model_and_an_independent_site_table():
    assert set(ARCHITECTURES) == set(FAMILIES) == set(SITES)


def test_the_readme_families_table_gives_every_family_its_sites_and_checks_per_engine():
    from pathlib import Path

    from icv.serving.vllm.sites import VLLM_ARCHITECTURES

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    table = readme.split("<!-- --8<-- [start:families] -->")[1].split("<!-- --8<-- [end:families] -->")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and cells[0] in ARCHITECTURES:
            rows[cells[0]] = cells[1:]
    assert set(rows) == set(ARCHITECTURES)
    tests = (root / "tests" / "test_layers_sites.py").read_text()
    vllm_tests = (root / "tests" / "with_vllm" / "test_vllm_sites.py").read_text()
    for family, (transformers, vllm) in rows.items():
        arch = ARCHITECTURES[family]
        assert transformers.startswith(f"`{arch.mlp}` / `{arch.attn}`; site modules checked: "), family
        name = "test_site_modules_are_the_modules_transformers_names"
        assert f"`{name}[{family}]`" in transformers and f"def {name}(" in tests
        if family in VLLM_ARCHITECTURES:
            arch = VLLM_ARCHITECTURES[family]
            assert vllm.startswith(f"`{arch.mlp}` / `{arch.attn}`; site modules checked: "), family
            name = "test_the_plugins_site_modules_are_the_modules_vllm_names"
        else:
            assert vllm.startswith("refused"), family
            name = "test_a_family_the_plugin_does_not_map_is_refused_with_the_families_it_steers"
        assert f"`{name}[{family}]`" in vllm and f"def {name}(" in vllm_tests


@pytest.mark.parametrize("family", sorted(SITES))
def test_site_modules_are_the_modules_transformers_names(family):
    """icv's module per site and layer is the one tests/steering_reference.py names from
    transformers' modeling code: the same object, of the named class, at the named path."""
    model = tiny_model(family)
    blocks = decoder_blocks(model)
    assert len(blocks) == LAYERS
    for site in ("block", "mlp", "attn"):
        found = site_modules(model, site)
        expected = [site_module(model, layer, site) for layer in range(LAYERS)]
        assert [type(m).__name__ for m in found] == [type(m).__name__ for m in expected], site
        assert all(a is b for a, b in zip(found, expected, strict=True)), f"{family}: {site}"


@pytest.mark.parametrize("family", sorted(SITES))
def test_each_site_and_mode_equals_the_reference_formula(family):
    model = tiny_model(family)
    vec = icv.extract(model, ByteTokenizer(), DEMOS)
    plain = logits(model)
    for site in ("block", "mlp", "attn"):
        for mode in ("rotate", "add"):
            s = 0.7 if mode == "rotate" else 0.3
            got = steered(model, vec, s, mode=mode, site=site)
            assert not torch.allclose(got, plain, atol=1e-4), f"{site}, {mode}: steering changed nothing"
            per_layer = vec.layer_scales[:, None] if mode == "add" else 1.0
            expected = reference(model, site, range(LAYERS), mode, s * per_layer * vec.directions)
            torch.testing.assert_close(
                got, expected, atol=ATOL, rtol=1e-4, msg=lambda m, at=f"{site}, {mode}": f"{at}: {m}"
            )


def test_unknown_site_or_mode_is_an_option_error(model, vec):
    before = hook_count(model)
    with pytest.raises(icv.OptionError, match="site"):
        icv.steer(model, vec, site="embeddings")
    with pytest.raises(icv.OptionError, match="mode"):
        icv.steer(model, vec, mode="replace")
    assert hook_count(model) == before


def test_defaults_come_from_the_vector(model, vec):
    with icv.steer(model, vec) as steering:
        assert (steering.mode, steering.site) == ("rotate", "mlp")
    with icv.steer(model, vec, mode="add") as steering:
        assert steering.site == "block"  # llama.cpp / repeng
    added = icv.extract(model, ByteTokenizer(), DEMOS, injection_mode="add")
    with icv.steer(model, added) as steering:
        assert (steering.mode, steering.site) == ("add", "block")


# -- arithmetic means what it says, in every mode ----------------------------------------


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_scaling_the_vector_is_scaling_the_strength(model, vec, mode):
    s = 0.4 if mode == "rotate" else 0.1
    close(steered(model, vec * 2.5, s, mode=mode), steered(model, vec, 2.5 * s, mode=mode), atol=1e-6)
    close(steered(model, vec / 4, s, mode=mode), steered(model, vec, s / 4, mode=mode), atol=1e-6)


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_negating_the_vector_is_negating_the_strength(model, vec, mode):
    s = 0.6 if mode == "rotate" else 0.2
    assert torch.equal(steered(model, -vec, s, mode=mode), steered(model, vec, -s, mode=mode))
    assert not torch.allclose(
        steered(model, -vec, s, mode=mode), steered(model, vec, s, mode=mode), atol=1e-4
    )


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_a_sum_applies_both_deltas(model, vec, other, mode):
    s = 0.6 if mode == "rotate" else 0.2
    a, b = (
        (vec, other)
        if mode == "rotate"
        else (
            icv.extract(model, ByteTokenizer(), DEMOS, injection_mode="add"),
            icv.extract(
                model, ByteTokenizer(), [("bad", "good"), ("sad day", "happy day")], injection_mode="add"
            ),
        )
    )
    assert not torch.equal(a.layer_scales, b.layer_scales)  # the case that needs care in "add"
    scale = (lambda v: v.layer_scales[:, None]) if mode == "add" else (lambda v: 1.0)
    deltas = s * (scale(a) * a.directions + scale(b) * b.directions)
    site = "mlp" if mode == "rotate" else "block"
    got = steered(model, a + b, s, mode=mode)
    close(got, reference(model, site, range(LAYERS), mode, deltas))
    difference = steered(model, a - b, s, mode=mode)
    close(
        difference,
        reference(model, site, range(LAYERS), mode, s * (scale(a) * a.directions - scale(b) * b.directions)),
    )
    if mode == "add":  # additions commute: the sum is the two steerings at once
        with icv.steer(model, a, s), icv.steer(model, b, s):
            close(got, logits(model), atol=1e-6)


def test_the_default_is_the_papers_injection_exactly(model, vec):
    """A freshly extracted vector at its defaults (rotate at every MLP output, every
    position, every layer) is the authors' ICVLayer with lam = strength."""
    lam = 0.1
    assert torch.allclose(vec.layer_norms(), torch.ones(LAYERS))
    got = steered(model, vec, lam)
    with manual_steering(
        model, "mlp", range(LAYERS), lambda x, l: paper_icv_layer(x, vec.directions[l], lam)
    ):
        expected = logits(model)
    close(got, expected, atol=1e-5)
    assert not torch.allclose(got, logits(model), atol=1e-5)


# -- extraction sites -------------------------------------------------------------------


def _last_token_outputs(model, site, text):
    """(layers, hidden) outputs of ``site`` at the last token of ``text``, run alone; with a
    tuple of sites, {site: those outputs}, from one forward."""
    sites = (site,) if isinstance(site, str) else site
    seen = {}

    def record(key, out):
        out = out if isinstance(out, torch.Tensor) else out[0]
        # A copy: Falcon adds the attention output into its MLP's output in place, after the hook.
        seen[key] = (out[-1] if out.dim() == 2 else out[0, -1]).clone()  # OPT's fc2: (tokens, hidden)

    handles = [
        site_module(model, l, s).register_forward_hook(lambda _m, _a, out, key=(s, l): record(key, out))
        for s in sites
        for l in range(LAYERS)
    ]
    try:
        with torch.no_grad():
            model(torch.tensor([ByteTokenizer()(text)["input_ids"]]))
    finally:
        for h in handles:
            h.remove()
    found = {s: torch.stack([seen[s, l] for l in range(LAYERS)]) for s in sites}
    return found[site] if isinstance(site, str) else found


@pytest.mark.parametrize("family", sorted(SITES))
def test_extraction_at_each_site_reads_the_independently_named_module(family):
    model = tiny_model(family)
    demos = DEMOS[:2]  # one forward per text reads all three sites
    outputs = {
        text: _last_token_outputs(model, ("block", "mlp", "attn"), text) for pair in demos for text in pair
    }
    for site in ("block", "mlp", "attn"):
        vec = icv.extract(model, ByteTokenizer(), demos, site=site, method="mean")
        shifts = torch.stack(
            [outputs[target][site] - outputs[source][site] for source, target in demos]
        ).mean(0)
        torch.testing.assert_close(
            vec.directions,
            shifts / shifts.norm(dim=-1, keepdim=True),
            atol=1e-5,
            rtol=1e-4,
            msg=lambda m, site=site: f"{site}: {m}",
        )


@pytest.mark.parametrize("site", ["block", "mlp", "attn"])
def test_extraction_reads_the_shift_at_the_site(model, site):
    vec = icv.extract(model, ByteTokenizer(), DEMOS, site=site, method="mean")
    shifts = torch.stack(
        [
            _last_token_outputs(model, site, target) - _last_token_outputs(model, site, source)
            for source, target in DEMOS
        ]
    ).mean(0)
    expected = shifts / shifts.norm(dim=-1, keepdim=True)
    close(vec.directions, expected, atol=1e-5)
    states = torch.stack([_last_token_outputs(model, site, t) for pair in DEMOS for t in pair])
    close(vec.layer_scales, states.norm(dim=-1).mean(0), atol=1e-6)
    assert vec.metadata["extraction_site"] == site


def test_block_extraction_reads_the_residual_stream(model):
    vec = icv.extract(model, ByteTokenizer(), DEMOS[:1], method="mean")
    source, target = DEMOS[0]

    def hidden(text):
        with torch.no_grad():
            out = model(torch.tensor([ByteTokenizer()(text)["input_ids"]]), output_hidden_states=True)
        return torch.stack(out.hidden_states[1:])[:, 0, -1]

    shift = hidden(target) - hidden(source)
    # transformers applies the final norm to the last hidden state; the block's own output is unnormed.
    close(vec.directions[:-1], (shift / shift.norm(dim=-1, keepdim=True))[:-1], atol=1e-5)


@pytest.mark.parametrize("site", ["mlp", "attn"])
def test_steering_at_the_extraction_site_with_addition(model, site):
    """A vector read at the MLP (or attention) output and added back there: its scales
    are that site's norms, so strength is a fraction of that activation's size."""
    vec = icv.extract(model, ByteTokenizer(), DEMOS, site=site, injection_mode="add", injection_site=site)
    with icv.steer(model, vec, 0.5) as steering:
        assert (steering.mode, steering.site) == ("add", site)
        got = logits(model)
    close(got, reference(model, site, range(LAYERS), "add", 0.5 * vec.layer_scales[:, None] * vec.directions))


@pytest.mark.real_model
def test_real_model_layer_range_and_sites(real):
    model, tok = real
    vec = icv.extract(
        model, tok, [("The food was cold.", "The food was hot."), ("I hated it.", "I loved it.")]
    )
    ids = tok("The restaurant was", return_tensors="pt")
    with torch.no_grad():
        plain = model(**ids).logits
        with icv.steer(model, vec, 0.1, layers=range(8, 22)):
            ranged = model(**ids).logits
        with icv.steer(model, vec, 0.1, layers={l: 1.0 for l in range(8, 22)}):
            profiled = model(**ids).logits
        assert torch.equal(ranged, profiled)
        assert not torch.allclose(ranged, plain, atol=1e-3)
        for site in ("block", "mlp", "attn"):
            with icv.steer(model, vec, 0.02, mode="add", site=site):
                assert not torch.allclose(model(**ids).logits, plain, atol=1e-3), site
    with pytest.raises(icv.OptionError):
        icv.steer(model, vec, layers=[30])
    assert not icv.is_steered(model)
