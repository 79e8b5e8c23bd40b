"""InContextVector: a value with metadata, arithmetic that means what it says, and model checks."""

import pytest
import torch
from tiny import tiny_model

import icv


@pytest.fixture
def vec(llama, tokenizer, demos):
    return icv.extract(llama, tokenizer, demos, name="positive")


def test_public_contract(vec):
    assert vec.directions.shape == (3, 32)
    assert vec.directions.dtype == torch.float32
    m = vec.metadata
    for key in (
        "icv_format_version",
        "library_version",
        "model_name",
        "model_type",
        "hidden_size",
        "num_layers",
        "method",
        "injection_site",
        "num_demos",
        "demos_sha256",
        "prompt_template",
        "recommended_strength",
    ):
        assert key in m
    assert m["num_demos"] == 4 and m["method"] == "pca" and m["injection_mode"] == "rotate"


def test_metadata_is_a_copy(vec):
    vec.metadata["name"] = "changed"
    assert vec.name == "positive"


def test_scaling_negation_division(vec):
    assert torch.equal((vec * 2).directions, vec.directions * 2)
    assert torch.equal((2 * vec).directions, vec.directions * 2)
    assert torch.equal((-vec).directions, -vec.directions)
    assert torch.allclose((vec / 4).directions, vec.directions / 4)
    assert (vec * 2).name == "2*positive"


def test_addition_and_subtraction_are_plain_when_strengths_agree(vec, llama, tokenizer):
    other = icv.extract(llama, tokenizer, [("a b", "c d"), ("e f", "g h")], name="formal")
    assert torch.allclose((vec + other).directions, vec.directions + other.directions)
    assert torch.allclose((vec - other).directions, vec.directions - other.directions)
    assert torch.allclose((vec + 0.5 * other).directions, vec.directions + 0.5 * other.directions)
    assert (vec + other).metadata["num_demos"] == 6
    assert (vec + other).metadata["method"] == "combination"


def test_addition_is_plain_and_recommends_only_an_agreed_strength(vec):
    a = vec.with_metadata(recommended_strength=0.04)
    b = vec.with_metadata(recommended_strength=0.08, name="b")
    total = a + b
    assert torch.equal(total.directions, vec.directions + vec.directions)  # no reweighting
    assert total.recommended_strength is None  # the parts disagree: the mode's default applies
    assert (a + a).recommended_strength == 0.04
    assert (a - 0.5 * a).recommended_strength == 0.04


def test_at_folds_a_strength_in(vec):
    a = vec.with_metadata(recommended_strength=0.04)
    folded = a.at()
    assert torch.equal(folded.directions, vec.directions * 0.04) and folded.recommended_strength == 1.0
    assert torch.equal(folded.shifts, vec.shifts * 0.04)
    assert torch.equal(vec.at(0.5).directions, vec.directions * 0.5)
    with pytest.raises(icv.OptionError, match="no recommended strength"):
        vec.at()
    with pytest.raises(icv.OptionError):
        vec.at("strong")


def test_shifts_go_through_arithmetic_like_directions(vec, llama, tokenizer):
    other = icv.extract(llama, tokenizer, [("a b", "c d"), ("e f", "g h")], name="formal")
    torch.testing.assert_close((vec + 2 * other).shifts, vec.shifts + 2 * other.shifts)
    torch.testing.assert_close((vec - other / 4).shifts, vec.shifts - other.shifts / 4)
    assert torch.equal((-vec).shifts, -vec.shifts)
    # A fresh vector's shift is its direction at the shift's own size.
    torch.testing.assert_close(vec.shifts, vec.directions * vec.shift_norms()[:, None])
    assert bool((vec.shift_norms() > 0).all()) and not torch.allclose(vec.shift_norms(), vec.shift_norms()[0])
    unknown = icv.InContextVector(vec.directions, vec.metadata, vec.layer_scales)
    assert unknown.shifts is None and unknown.shift_norms() is None and (vec + unknown).shifts is None


def test_only_layers_zeroes_the_rest_and_records_them(vec):
    kept = vec.only_layers([0, -1])
    assert kept.layers == [0, 2] and vec.layers is None
    assert torch.equal(kept.directions[1], torch.zeros(vec.hidden_size))
    assert torch.equal(kept.shifts[1], torch.zeros(vec.hidden_size))
    assert torch.equal(kept.directions[2], vec.directions[2])
    assert (kept + vec.only_layers([1])).layers == [0, 1, 2] and (kept + vec).layers is None
    for bad in ([], [3], ["1"], "12"):
        with pytest.raises(icv.OptionError):
            vec.only_layers(bad)


def test_bad_scalars(vec):
    with pytest.raises(icv.OptionError):
        vec * float("nan")
    with pytest.raises(icv.OptionError):
        vec / 0
    with pytest.raises(TypeError):
        vec * "2"
    with pytest.raises(TypeError):
        vec + 1


def test_vectors_of_different_models_do_not_combine(vec, tokenizer, demos):
    other = icv.extract(tiny_model("gpt2"), tokenizer, demos)
    with pytest.raises(icv.ModelMismatchError, match="different models"):
        vec + other


def test_vector_of_another_model_does_not_steer(vec, tokenizer):
    gpt2 = tiny_model("gpt2")
    with pytest.raises(icv.ModelMismatchError):
        icv.steer(gpt2, vec)
    assert not icv.is_steered(gpt2)


def test_with_metadata_refuses_shape_fields(vec):
    with pytest.raises(icv.OptionError):
        vec.with_metadata(num_layers=5)
    assert vec.with_metadata(recommended_strength=0.1).recommended_strength == 0.1
