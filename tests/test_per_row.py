"""Per-row steering in one batch: a strength per row, or a vector per row.

A batch steered with strengths ``[0, s1, s2]`` is three separate runs in one
``generate``; the row with 0 is bitwise unsteered; one vector per row equals
separate runs with each vector; beam search repeats each row's strength over its
beams; a wrong count is an error that leaves no hook behind.
"""

from __future__ import annotations

import functools

import pytest
import torch
from steering_reference import hook_count
from tiny import DEMOS, FAMILIES, ByteTokenizer, tiny_model

import icv

PROMPTS = ["the room was", "i think the food", "service"]
NEW = 6


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vec(model):
    return icv.extract(model, ByteTokenizer(), DEMOS)


@pytest.fixture(scope="module")
def other(model):
    flipped = [(target, source) for source, target in DEMOS[:3]]
    return icv.extract(model, ByteTokenizer(), flipped, name="other")


def run(model, prompts, **kwargs):
    """(new tokens, per-step logits) of generation (greedy unless told)."""
    batch = ByteTokenizer().batch(prompts, side="left")
    options = dict(
        max_new_tokens=NEW, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True
    )
    out = model.generate(**batch, **{**options, **kwargs})
    return out.sequences[:, batch["input_ids"].shape[1] :], torch.stack(out.logits, dim=1)


def forward_logits(model, prompts):
    with torch.no_grad():
        return model(**ByteTokenizer().batch(prompts)).logits


@pytest.mark.parametrize("mode,strengths", [("rotate", [0.0, 0.6, 1.2]), ("add", [0.0, 0.2, 0.4])])
def test_strength_per_row_equals_separate_runs(model, vec, mode, strengths):
    with icv.steer(model, vec, strengths, mode=mode):
        tokens, logits = run(model, PROMPTS)
    for row, (prompt, s) in enumerate(zip(PROMPTS, strengths, strict=True)):
        with icv.steer(model, vec, s, mode=mode):
            alone_tokens, alone_logits = run(model, [prompt])
        assert torch.equal(tokens[row], alone_tokens[0]), f"row {row}"
        torch.testing.assert_close(logits[row], alone_logits[0], atol=1e-5, rtol=1e-4)
    # Each steered row differs from the unsteered run: the comparison has teeth.
    plain_tokens, plain_logits = run(model, PROMPTS)
    for row in (1, 2):
        assert not torch.allclose(logits[row], plain_logits[row], atol=1e-3)


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_row_with_strength_zero_is_bitwise_unsteered(model, vec, mode):
    plain_tokens, plain_logits = run(model, PROMPTS)
    with icv.steer(model, vec, [0.0, 1.0, 0.5], mode=mode):
        tokens, logits = run(model, PROMPTS)
        forward = forward_logits(model, PROMPTS)
    assert torch.equal(logits[0], plain_logits[0])
    assert torch.equal(tokens[0], plain_tokens[0])
    assert torch.equal(forward[0], forward_logits(model, PROMPTS)[0])


def test_strength_zero_for_every_row_is_the_unsteered_model(model, vec):
    plain = forward_logits(model, PROMPTS)
    with icv.steer(model, vec, [0.0, 0.0, 0.0]):
        assert torch.equal(forward_logits(model, PROMPTS), plain)
    with icv.steer(model, vec * 0.0):
        assert torch.equal(forward_logits(model, PROMPTS), plain)


@functools.cache
def family_model_and_vector(family):
    model = tiny_model(family)
    return model, icv.extract(model, ByteTokenizer(), DEMOS, progress=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode,positions", [("rotate", "generated"), ("add", "all")])
def test_every_family_steers_per_row_at_the_mlp(family, mode, positions):
    """Per-row strengths at every family's MLP, whatever shape its output has (OPT's fc2
    flattens the batch to (batch * length, hidden)), with a position mask, equal separate runs."""
    model, vec = family_model_and_vector(family)
    prompts, strengths = PROMPTS[:2], [0.0, 1.0 if mode == "rotate" else 0.3]
    with icv.steer(model, vec, strengths, mode=mode, site="mlp", positions=positions):
        tokens, logits = run(model, prompts, max_new_tokens=3)
    plain_tokens, plain_logits = run(model, prompts[:1], max_new_tokens=3)
    with icv.steer(model, vec, strengths[1], mode=mode, site="mlp", positions=positions):
        alone_tokens, alone_logits = run(model, prompts[1:], max_new_tokens=3)
    assert torch.equal(tokens[0], plain_tokens[0]) and torch.equal(tokens[1], alone_tokens[0])
    torch.testing.assert_close(logits[0], plain_logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], alone_logits[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits[1], run(model, prompts[1:], max_new_tokens=3)[1][0], atol=1e-4)


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_vector_per_row_equals_separate_runs(model, vec, other, mode):
    prompts = PROMPTS[:2]
    strength = 1.0 if mode == "rotate" else 0.3
    with icv.steer(model, [vec, other], strength, mode=mode):
        tokens, logits = run(model, prompts)
    for row, (prompt, v) in enumerate(zip(prompts, [vec, other], strict=True)):
        with icv.steer(model, v, strength, mode=mode):
            alone_tokens, alone_logits = run(model, [prompt])
        assert torch.equal(tokens[row], alone_tokens[0])
        torch.testing.assert_close(logits[row], alone_logits[0], atol=1e-5, rtol=1e-4)


def test_vector_and_strength_per_row(model, vec, other):
    with icv.steer(model, [vec, other], [0.0, 0.8]):
        _, logits = run(model, PROMPTS[:2])
    _, plain = run(model, PROMPTS[:2])
    with icv.steer(model, other, 0.8):
        _, alone = run(model, PROMPTS[1:2])
    assert torch.equal(logits[0], plain[0])
    torch.testing.assert_close(logits[1], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positions", ["all", "generated"])
def test_beam_search_repeats_each_rows_strength_over_its_beams(model, vec, positions):
    beams = dict(num_beams=3, num_return_sequences=2)
    strengths = [0.0, 1.0]
    with icv.steer(model, vec, strengths, positions=positions):
        tokens, _ = run(model, PROMPTS[:2], **beams)
    assert tokens.shape[0] == 4  # two returned sequences per prompt, consecutive
    plain, _ = run(model, PROMPTS[:1], **beams)
    assert torch.equal(tokens[:2], plain)
    with icv.steer(model, vec, strengths[1], positions=positions):
        alone, _ = run(model, PROMPTS[1:2], **beams)
    assert torch.equal(tokens[2:], alone)


def test_sampling_with_num_return_sequences_keeps_rows_apart(model, vec):
    # Each prompt's samples sit in consecutive rows: strength 0 keeps its samples unsteered.
    torch.manual_seed(0)
    with icv.steer(model, vec, [0.0, 2.0]):
        tokens, logits = run(model, PROMPTS[:2], do_sample=True, num_return_sequences=2)
    torch.manual_seed(0)
    plain_tokens, plain_logits = run(model, PROMPTS[:2], do_sample=True, num_return_sequences=2)
    assert torch.equal(logits[:2], plain_logits[:2])
    assert not torch.allclose(logits[2:], plain_logits[2:], atol=1e-3)


def test_too_many_strengths_for_the_batch_is_a_steering_error(model, vec):
    before = hook_count(model)
    with pytest.raises(icv.SteeringError, match="per-row"):
        with icv.steer(model, vec, [0.1, 0.2, 0.3]):
            run(model, PROMPTS[:2])
    assert hook_count(model) == before
    assert not icv.is_steered(model)


def test_a_batch_that_is_a_multiple_of_the_rows_but_not_their_repetition_is_an_error(model, vec):
    """Four different prompts with two strengths is a mistake, not beam search."""
    before = hook_count(model)
    with pytest.raises(icv.SteeringError, match="per-row"):
        with icv.steer(model, vec, [0.1, 0.2]):
            run(model, PROMPTS + ["dirty"])
    assert hook_count(model) == before
    assert not icv.is_steered(model)


def test_strength_count_not_matching_vector_count_is_an_option_error(model, vec, other):
    before = hook_count(model)
    with pytest.raises(icv.OptionError, match="per-row vectors"):
        icv.steer(model, [vec, other], [0.1, 0.2, 0.3])
    assert hook_count(model) == before
    assert not icv.is_steered(model)


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [0.1, "x"], [True, 0.2]])
def test_bad_strength_sequences_are_option_errors(model, vec, bad):
    before = hook_count(model)
    with pytest.raises(icv.OptionError):
        icv.steer(model, vec, bad)
    assert hook_count(model) == before


def test_a_tensor_of_strengths_is_a_sequence(model, vec):
    with icv.steer(model, vec, torch.tensor([0.0, 1.0, 0.5])):
        from_tensor = forward_logits(model, PROMPTS)
    with icv.steer(model, vec, [0.0, 1.0, 0.5]):
        torch.testing.assert_close(forward_logits(model, PROMPTS), from_tensor, atol=0, rtol=0)


def test_vectors_of_different_models_cannot_share_a_batch(model, vec):
    foreign = icv.extract(tiny_model("qwen2"), ByteTokenizer(), DEMOS)
    with pytest.raises(icv.ModelMismatchError):
        icv.steer(model, [vec, foreign])
    assert not icv.is_steered(model)


@pytest.mark.real_model
def test_real_model_strength_sweep_in_one_batch(real):
    model, tok = real
    demos = [
        ("The food was cold.", "The food was hot."),
        ("I hated it.", "I loved it."),
        ("The staff were rude.", "The staff were kind."),
    ]
    vec = icv.extract(model, tok, demos)
    from icv.generation import complete

    prompt = "The restaurant was"
    swept = complete(model, tok, [prompt] * 2, vector=vec, strength=[0.0, 0.1], max_new_tokens=5)
    assert swept[0] == complete(model, tok, [prompt], max_new_tokens=5)[0]
    assert swept[1] == complete(model, tok, [prompt], vector=vec, strength=0.1, max_new_tokens=5)[0]
    assert swept[0] != swept[1]
