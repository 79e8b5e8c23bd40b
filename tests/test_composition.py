"""What steering with several vectors, or at the shift's own size, means, checked against formulas written out here.

* ``mode="add", scale="shift"`` is CAA / steering-vectors: ``m * mean_shift_l`` added to each block's output.
* ``steer(a + b, s)`` is ``a`` and ``b`` steered together at ``s`` (exactly, in the additive mode);
  ``steer(p + 0 * f, s)`` is ``steer(p, s)``.
* ``icv.steer_averaged`` is the reference code's several-vector rotation (``paper_reference``).
"""

import warnings

import pytest
import torch
from paper_reference import paper_steering
from steering_reference import add, hook_count, manual_steering, site_module
from tiny import ByteTokenizer, tiny_model

import icv

POSITIVE = [
    ("the food was cold", "the food was warm"),
    ("service was slow", "service was quick"),
    ("i hated it", "i loved it"),
    ("dirty room", "clean room"),
]
FORMAL = [
    ("gonna be late, sry", "I will be late, my apologies"),
    ("thx a lot", "Thank you very much"),
    ("wanna come?", "Would you like to come?"),
]
TEXT = "the waiter was rude and slow"


@pytest.fixture
def model():
    return tiny_model("llama")


@pytest.fixture
def tok():
    return ByteTokenizer()


def logits(model, tok, text=TEXT):
    with torch.no_grad():
        return model(torch.tensor([tok(text)["input_ids"]])).logits


def mean_block_shift(model, tok, demos) -> torch.Tensor:
    """CAA's vector, written out: mean over pairs of (target - source) at each block output, last token."""
    layers = model.config.num_hidden_layers

    def read(text):
        captured = {}
        handles = [
            site_module(model, l, "block").register_forward_hook(
                lambda _m, _a, out, l=l: captured.__setitem__(
                    l, (out if isinstance(out, torch.Tensor) else out[0])[0, -1]
                )
            )
            for l in range(layers)
        ]
        try:
            logits(model, tok, text)
        finally:
            for h in handles:
                h.remove()
        return torch.stack([captured[l].double() for l in range(layers)])

    return torch.stack([read(target) - read(source) for source, target in demos]).mean(dim=0)


# -- the shift at its own size: CAA / steering-vectors ------------------------------------------


@pytest.mark.parametrize("multiplier", [0.5, 1.0, -2.0])
def test_add_at_shift_scale_is_caa(model, tok, multiplier):
    vector = icv.extract(model, tok, POSITIVE, method="mean")
    shift = mean_block_shift(model, tok, POSITIVE)
    with icv.steer(model, vector, multiplier, mode="add", site="block", scale="shift"):
        ours = logits(model, tok)
    layers = range(model.config.num_hidden_layers)
    with manual_steering(model, "block", layers, lambda x, l: add(x, multiplier * shift[l])):
        theirs = logits(model, tok)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, logits(model, tok), atol=1e-3)


def test_shift_scale_defaults_to_one_shift(model, tok):
    vector = icv.extract(model, tok, POSITIVE, method="mean", recommended_strength=0.3)
    with icv.steer(model, vector, mode="add", scale="shift"):
        default = logits(model, tok)
    with icv.steer(model, vector, 1.0, mode="add", scale="shift"):
        one = logits(model, tok)
    assert torch.equal(default, one)


def test_shift_scale_needs_the_additive_mode(model, tok):
    vector = icv.extract(model, tok, POSITIVE)
    with pytest.raises(icv.OptionError, match="mode='add'"):
        icv.steer(model, vector, 1.0, scale="shift")
    with pytest.raises(icv.OptionError, match="unknown scale"):
        icv.steer(model, vector, 1.0, mode="add", scale="norm")
    assert not icv.is_steered(model)


# -- sums are steering together -------------------------------------------------------------------


@pytest.fixture
def pair(model, tok):
    """Two vectors with different recommended strengths and different layer scales."""
    p = icv.extract(model, tok, POSITIVE, name="p", recommended_strength=0.06)
    f = icv.extract(model, tok, FORMAL, name="f", recommended_strength=0.02)
    assert not torch.equal(p.layer_scales, f.layer_scales)
    return p, f


def _as_add(v):
    return v.with_metadata(
        injection_mode="add", injection_site="block", recommended_strength=v.recommended_strength
    )


def test_adding_zero_times_a_vector_changes_nothing(model, tok, pair):
    p, f = pair
    with icv.steer(model, p, 0.07):
        alone = logits(model, tok)
    with icv.steer(model, p + 0 * f, 0.07):
        summed = logits(model, tok)
    assert torch.equal(alone, summed)  # rotation: p + 0*f has p's very directions
    pa, fa = _as_add(p), _as_add(f)
    for scale, s in (("activation", 0.05), ("shift", 0.8)):
        with icv.steer(model, pa, s, scale=scale):
            alone = logits(model, tok)
        with icv.steer(model, pa + 0 * fa, s, scale=scale):
            summed = logits(model, tok)
        torch.testing.assert_close(summed, alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale, s", [("activation", 0.05), ("shift", 0.7)])
def test_a_sum_is_its_parts_steered_together_in_the_additive_mode(model, tok, pair, scale, s):
    p, f = (_as_add(v) for v in pair)
    with icv.steer(model, p + f, s, scale=scale):
        summed = logits(model, tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", icv.StackedSteeringWarning)
        with icv.steer(model, p, s, scale=scale), icv.steer(model, f, s, scale=scale):
            together = logits(model, tok)
    torch.testing.assert_close(summed, together, atol=1e-5, rtol=0)
    with icv.steer(model, p - 0.5 * f, s, scale=scale):
        difference = logits(model, tok)
    with icv.steer(model, p, s, scale=scale), icv.steer(model, f, -0.5 * s, scale=scale):
        apart = logits(model, tok)
    torch.testing.assert_close(difference, apart, atol=1e-5, rtol=0)


def test_folded_strengths_apply_each_part_at_its_own(model, tok, pair):
    p, f = (_as_add(v) for v in pair)
    mix = p.at() + f.at()
    assert mix.recommended_strength == 1.0
    with icv.steer(model, mix):
        folded = logits(model, tok)
    with icv.steer(model, p), icv.steer(model, f):  # each at its recommended strength
        together = logits(model, tok)
    torch.testing.assert_close(folded, together, atol=1e-5, rtol=0)
    assert (p + f).recommended_strength is None


# -- several vectors the reference code's way -------------------------------------------------------


def test_steer_averaged_is_the_reference_several_vector_rotation(model, tok, pair):
    p, f = pair
    with icv.steer_averaged(model, [p, f], [0.3, 0.2]):
        ours = logits(model, tok)
    with paper_steering(model, [p.directions, f.directions], [0.3, 0.2]):
        theirs = logits(model, tok)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with icv.steer(model, p + f, 0.25):
        linear = logits(model, tok)
    assert not torch.allclose(ours, linear, atol=1e-4)  # a different composition, documented as such


def test_steer_averaged_of_one_vector_is_steer(model, tok, pair):
    p, _ = pair
    with icv.steer_averaged(model, [p], 0.2, positions="prompt"):
        averaged = logits(model, tok)
    with icv.steer(model, p, 0.2, positions="prompt"):
        single = logits(model, tok)
    torch.testing.assert_close(averaged, single, atol=1e-6, rtol=0)


def test_steer_averaged_in_the_additive_mode_averages_the_pushes(model, tok, pair):
    p, f = (_as_add(v) for v in pair)
    with icv.steer_averaged(model, [p, f], [0.04, 0.02]):
        averaged = logits(model, tok)
    with icv.steer(model, (p * 0.04 + f * 0.02) / 2, 1.0):
        linear = logits(model, tok)
    torch.testing.assert_close(averaged, linear, atol=1e-5, rtol=0)


def test_steer_averaged_checks_its_input(model, tok, pair):
    p, f = pair
    with pytest.raises(icv.OptionError, match="non-empty list"):
        icv.steer_averaged(model, p)
    with pytest.raises(icv.OptionError, match="3 strengths for 2 vectors"):
        icv.steer_averaged(model, [p, f], [0.1, 0.2, 0.3])
    with pytest.raises(icv.UnknownOptionError):
        icv.steer_averaged(model, [p, f], strenght=0.1)
    assert not icv.is_steered(model)


# -- a forgotten handle ----------------------------------------------------------------------------


def test_a_handle_on_a_steered_model_warns_at_its_first_forward(model, tok, pair):
    p, f = pair
    first = icv.steer(model, p, 0.1)
    second = icv.steer(model, f, 0.1)
    try:
        with pytest.warns(icv.StackedSteeringWarning) as caught:
            logits(model, tok)
        message = str(caught[0].message)
        assert "'p'" in message and "'f'" in message and "icv.unsteer" in message
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            logits(model, tok)  # once is enough
    finally:
        first.remove()
        second.remove()
    assert hook_count(model) == 0


def test_with_blocks_and_a_first_handle_stack_silently(model, tok, pair):
    p, f = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with icv.steer(model, p, 0.1), icv.steer(model, f, 0.1):  # deliberate nesting
            logits(model, tok)
        handle = icv.steer(model, p, 0.1)  # alone on the model
        try:
            logits(model, tok)
            with icv.steer(model, f, 0.1):  # a with block over a handle: deliberate too
                logits(model, tok)
        finally:
            handle.remove()
        stale = icv.steer(model, p, 0.1)
        icv.steer(model, f, 0.1).remove()  # stacked, but gone before any forward pass
        logits(model, tok)
        stale.remove()


# -- which model a vector fits ----------------------------------------------------------------------


def test_another_model_name_warns_unless_strict(model, tok, pair):
    p, f = pair
    copy = p.with_metadata(model_name="/home/me/models/my-llama-copy")
    with pytest.warns(icv.ModelNameWarning, match="model names differ"):
        with icv.steer(model, copy, 0.1):
            steered = logits(model, tok)
    with icv.steer(model, p, 0.1):
        assert torch.equal(steered, logits(model, tok))
    with pytest.raises(icv.ModelMismatchError, match="model_name.*strict"):
        icv.steer(model, copy, 0.1, strict=True)
    with pytest.raises(icv.OptionError, match="strict"):
        icv.steer(model, p, 0.1, strict="yes")
    with pytest.warns(icv.ModelNameWarning):
        assert (copy + f).num_layers == p.num_layers
    # A local copy of the same hub model is the same name: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with icv.steer(model, p.with_metadata(model_name="/some/folder/tiny-llama/"), 0.1):
            pass
    assert not icv.is_steered(model)


def test_imported_partial_control_vector_steers_only_its_layers(model, tok, tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "partial.gguf"), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    writer.add_tensor("direction.1", np.full(32, 0.5, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    short = icv.gguf.import_gguf(tmp_path / "partial.gguf")
    assert short.num_layers == 2 and short.layers == [1]
    padded = icv.gguf.import_gguf(tmp_path / "partial.gguf", model=model)
    assert padded.num_layers == 3 and padded.layers == [1]
    assert torch.equal(padded.directions[2], torch.zeros(32))
    assert torch.equal(
        icv.gguf.import_gguf(tmp_path / "partial.gguf", num_layers=3).directions, padded.directions
    )
    with icv.steer(model, short) as steering:  # padded to the model it steers
        assert hook_count(model) == 1 and steering.active
        steered = logits(model, tok)
    with manual_steering(model, "block", [1], lambda x, l: add(x, torch.full((32,), 0.5))):
        manual = logits(model, tok)
    torch.testing.assert_close(steered, manual, atol=1e-6, rtol=0)
    with icv.steer(model, padded, layers=[0, 1, 2]):  # asked for all: block 0 and 2 get zero rows
        assert hook_count(model) == 3
