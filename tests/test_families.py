"""Every supported architecture: extraction shape, exact no-op at strength 0, steering, hook hygiene."""

import pytest
import torch
from steering_reference import hook_count as library_hooks
from tiny import FAMILIES, HIDDEN, LAYERS, tiny_model

import icv

PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model = tiny_model(request.param)
    return request.param, model


def test_extraction_has_one_direction_per_layer(family, tokenizer, demos):
    name, model = family
    vector = icv.extract(model, tokenizer, demos)
    assert vector.directions.shape == (LAYERS, HIDDEN)
    assert vector.metadata["model_type"] == model.config.model_type
    assert torch.allclose(vector.layer_norms(), torch.ones(LAYERS), atol=1e-5)
    assert library_hooks(model) == 0


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_strength_zero_is_bitwise_noop_and_nonzero_changes(family, tokenizer, demos, mode):
    _, model = family
    vector = icv.extract(model, tokenizer, demos)
    with torch.no_grad():
        base = model(PROMPT).logits
        with icv.steer(model, vector, strength=0.0, mode=mode):
            zero = model(PROMPT).logits
        with icv.steer(model, vector, strength=0.5, mode=mode):
            steered = model(PROMPT).logits
        after = model(PROMPT).logits
    assert torch.equal(base, zero)
    assert not torch.allclose(base, steered)
    assert torch.equal(base, after)
    assert library_hooks(model) == 0


def test_hooks_removed_after_exception(family, tokenizer, demos):
    _, model = family
    vector = icv.extract(model, tokenizer, demos)
    with pytest.raises(ZeroDivisionError):
        with icv.steer(model, vector, strength=0.5):
            assert library_hooks(model) > 0
            raise ZeroDivisionError
    assert library_hooks(model) == 0
    assert not icv.is_steered(model)


def test_generate_works_steered(family, tokenizer, demos):
    _, model = family
    vector = icv.extract(model, tokenizer, demos)
    with icv.steer(model, vector, strength=1.0):
        out = model.generate(PROMPT, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, PROMPT.shape[1] + 5)
    assert library_hooks(model) == 0


def test_unsteer_removes_lost_handles(tokenizer, demos):
    model = tiny_model("llama")
    vector = icv.extract(model, tokenizer, demos)
    with torch.no_grad():
        base = model(PROMPT).logits
    icv.steer(model, vector, strength=0.5)
    icv.steer(model, vector, strength=0.2, mode="add")
    assert icv.is_steered(model) and library_hooks(model) > 0
    assert icv.unsteer(model) == 2
    assert not icv.is_steered(model) and library_hooks(model) == 0
    with torch.no_grad():
        assert torch.equal(model(PROMPT).logits, base)
    assert icv.unsteer(model) == 0
