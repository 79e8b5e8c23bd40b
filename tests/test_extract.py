"""Extraction: the paper's aggregation, last-token reading under any padding, errors, hygiene."""

import pytest
import torch
from steering_reference import hook_count
from tiny import tiny_model

import icv
from icv.aggregate import mean_shift, pca_shift
from icv.extract import read_last_token_states


def test_pca_is_first_component_plus_mean_sign_aligned():
    torch.manual_seed(0)
    base = torch.randn(1, 50)
    shifts = base + 0.3 * torch.randn(6, 50)
    result = pca_shift(shifts)
    mean = shifts.mean(0)
    component = result - mean
    assert component.norm() == pytest.approx(1.0, abs=1e-5)
    assert torch.dot(component, mean) > 0
    _, _, vh = torch.linalg.svd(shifts - mean, full_matrices=False)
    assert torch.allclose(component.abs(), vh[0].abs(), atol=1e-5)


def test_pca_with_one_demo_falls_back_to_mean_with_warning():
    shifts = torch.randn(1, 10)
    with pytest.warns(UserWarning, match="one demonstration"):
        assert torch.equal(pca_shift(shifts), shifts[0])
    assert torch.equal(mean_shift(shifts), shifts[0])


def test_last_token_states_match_unpadded_forward(llama, tokenizer):
    texts = ["short", "a much longer text here", "mid length"]
    states = read_last_token_states(llama, tokenizer, texts, batch_size=3)
    for i, text in enumerate(texts):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = llama(ids, output_hidden_states=True).hidden_states
        # slot 0 = embeddings, slot l+1 = block l (before the final norm for the last block)
        assert torch.allclose(states[i, 0], hidden[0][0, -1], atol=1e-5)
        assert torch.allclose(states[i, 1], hidden[1][0, -1], atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_left_and_right_padding_give_the_same_vector(family, tokenizer, demos):
    model = tiny_model(family)
    right = icv.extract(model, tokenizer, demos, padding_side="right", batch_size=8)
    left = icv.extract(model, tokenizer, demos, padding_side="left", batch_size=8)
    single = icv.extract(model, tokenizer, demos, batch_size=1)
    assert torch.allclose(right.directions, single.directions, atol=1e-4)
    assert torch.allclose(left.directions, single.directions, atol=1e-4)


def test_tokenizer_padding_side_does_not_matter(llama, tokenizer, demos):
    a = icv.extract(llama, tokenizer, demos)
    tokenizer.padding_side = "left"
    b = icv.extract(llama, tokenizer, demos)
    assert torch.equal(a.directions, b.directions)


def test_mean_method_and_demo_forms(llama, tokenizer, demos):
    as_objects = [icv.Demo(s, t) for s, t in demos]
    as_dicts = [{"source": s, "target": t} for s, t in demos]
    a = icv.extract(llama, tokenizer, demos, method="mean")
    b = icv.extract(llama, tokenizer, as_objects, method="mean")
    c = icv.extract(llama, tokenizer, as_dicts, method="mean")
    assert torch.equal(a.directions, b.directions) and torch.equal(a.directions, c.directions)
    assert a.metadata["method"] == "mean"
    assert not torch.allclose(a.directions, icv.extract(llama, tokenizer, demos).directions)


def test_demo_hash_depends_on_demos_and_template(llama, tokenizer, demos):
    a = icv.extract(llama, tokenizer, demos).metadata["demos_sha256"]
    assert a == icv.extract(llama, tokenizer, demos).metadata["demos_sha256"]
    assert a != icv.extract(llama, tokenizer, demos[:3]).metadata["demos_sha256"]
    other = icv.extract(llama, tokenizer, demos, template="Text: {text}")
    assert other.metadata["prompt_template"] == "Text: {text}"
    assert other.metadata["demos_sha256"] != a


def test_one_demo_warns_and_uses_mean(llama, tokenizer):
    with pytest.warns(UserWarning, match="one demonstration"):
        vec = icv.extract(llama, tokenizer, [("bad", "good")])
    assert vec.metadata["num_demos"] == 1


@pytest.mark.parametrize(
    "demos, match",
    [
        ([], "no demonstrations"),
        ([("", "x")], "empty"),
        ([("x", "   ")], "empty"),
        ([("x", 3)], "string"),
        ([("x",)], "pair"),
        ("not a list", "list"),
        ([{"source": "x"}], "target"),
    ],
)
def test_bad_demos(llama, tokenizer, demos, match):
    with pytest.raises(icv.DemoError, match=match):
        icv.extract(llama, tokenizer, demos)


def test_identical_sources_and_targets(llama, tokenizer):
    with pytest.raises(icv.DemoError, match="must differ"):
        icv.extract(llama, tokenizer, [("same", "same"), ("x y", "x y")])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"method": "svd"}, "unknown method"),
        ({"site": "nowhere"}, "unknown site"),
        ({"injection_mode": "scale"}, "unknown injection_mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"template": "no placeholder"}, "template"),
        ({"padding_side": "middle"}, "padding_side"),
    ],
)
def test_bad_options(llama, tokenizer, demos, options, match):
    with pytest.raises(icv.ICVError, match=match):
        icv.extract(llama, tokenizer, demos, **options)
    assert hook_count(llama) == 0


def test_unknown_model_type_says_how_to_override(llama, tokenizer, demos):
    llama.config.model_type = "mystery"
    with pytest.raises(icv.ArchitectureError, match="icv.Architecture"):
        icv.extract(llama, tokenizer, demos)
    arch = icv.Architecture(layers="model.layers", mlp="mlp", attn="self_attn")
    vec = icv.extract(llama, tokenizer, demos, architecture=arch)
    with icv.steer(llama, vec, architecture=arch):
        pass


def test_wrong_override_path_is_reported(llama, tokenizer, demos):
    arch = icv.Architecture(layers="model.blocks", mlp="mlp", attn="self_attn")
    with pytest.raises(icv.ArchitectureError, match="model.blocks"):
        icv.extract(llama, tokenizer, demos, architecture=arch)


def test_register_architecture(tokenizer, demos):
    model = tiny_model("llama")
    model.config.model_type = "my_llama"
    icv.register_architecture("my_llama", icv.Architecture("model.layers", "mlp", "self_attn"))
    try:
        assert icv.extract(model, tokenizer, demos).metadata["model_type"] == "my_llama"
    finally:
        from icv.layers import ARCHITECTURES

        ARCHITECTURES.pop("my_llama")


def test_progress_bar_for_long_demo_lists(llama, tokenizer, capsys):
    many = [(f"bad thing {i}", f"good thing {i}") for i in range(40)]
    icv.extract(llama, tokenizer, many, batch_size=4, progress=True)
    assert "icv: reading demonstrations" in capsys.readouterr().err
    icv.extract(llama, tokenizer, many, batch_size=4, progress=False)
    assert capsys.readouterr().err == ""
