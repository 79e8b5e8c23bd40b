"""The strength steering guesses when none is given: a budget spread over the model's layers, said out loud."""

import warnings

import pytest
import torch

import icv
from icv.steer import default_strength_for
from icv.strength import DEFAULT_BUDGET, Strength, default_strength, planned_strength


@pytest.fixture
def vec(llama, tokenizer, demos):
    return icv.extract(llama, tokenizer, demos, name="positive")


def test_the_default_is_a_budget_per_layer():
    # The two embedded models: SmolLM2-135M (30 layers) and Gemma 3 270M (18 layers).
    assert default_strength("rotate", 30) == 0.05 and default_strength("rotate", 18) == 0.0833
    assert default_strength("add", 30) == 0.01 and default_strength("add", 18) == 0.0167
    for mode, budget in DEFAULT_BUDGET.items():
        assert default_strength(mode, 24) * 24 == pytest.approx(budget, rel=1e-3)


def test_where_a_strength_comes_from(vec):
    assert planned_strength(vec, "rotate", "mlp", 0.2) == Strength(0.2, "given")
    assert planned_strength(vec, "rotate", "mlp") == Strength(default_strength("rotate", 3), "default")
    calibrated = vec.with_metadata(recommended_strength=0.07)
    assert planned_strength(calibrated, "rotate", "mlp") == Strength(0.07, "recommended")
    # A rotation's recommendation is an angle: it says nothing about addition.
    assert planned_strength(calibrated, "add", "block") == Strength(default_strength("add", 3), "default")
    assert default_strength_for(calibrated, mode="add") == default_strength("add", 3)
    assert [
        s.label() for s in (Strength(0.2, "given"), Strength(0.07, "recommended"), Strength(0.5, "default"))
    ] == ["0.2", "0.07 (recommended)", "0.5 (default)"]


def _logits(model, vec, **options):
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    with icv.steer(model, vec, **options):
        return model(ids).logits


def test_steering_without_a_strength_guesses_and_says_so(llama, vec):
    guess = default_strength("rotate", vec.num_layers)
    with pytest.warns(
        icv.DefaultStrengthWarning, match=f"'positive' recommends none for rotate: using {guess:g}"
    ) as caught:
        guessed = _logits(llama, vec)
    assert caught[0].filename == __file__  # points at the caller's line
    assert torch.equal(guessed, _logits(llama, vec, strength=guess))
    with pytest.warns(icv.DefaultStrengthWarning, match=f"using {default_strength('add', 3):g}"):
        _logits(llama, vec, mode="add")


def test_a_given_or_recommended_strength_is_not_a_guess(llama, vec):
    with warnings.catch_warnings():
        warnings.simplefilter("error", icv.DefaultStrengthWarning)
        _logits(llama, vec, strength=0.1)
        _logits(llama, vec.with_metadata(recommended_strength=0.1))
        _logits(llama, vec, strength=[0.1])
