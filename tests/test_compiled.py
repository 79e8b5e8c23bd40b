"""Steering a compiled model (``icv.prepare_for_compile``): icv.steer's tokens, no new trace per steering.

Proved on tiny random models (float32):

* prepared but not compiled, every steering gives exactly the tokens of ``icv.steer`` on
  the bare model (both modes, every site, all/prompt/generated positions, per-row
  strengths and vectors, beam search), on families whose sites return tensors, tuples
  or flattened batches; a prepared model that is not steered is bitwise the bare model;
* compiled the way transformers documents (static cache, ``model.forward`` compiled with
  ``fullgraph=True``), a steering made after the first compilation (a new vector, a new
  strength, other positions, a per-row mix, none) adds no compiled frame (Dynamo's
  ``CompileCounter``) and gives the bare model's eager tokens; so does the default
  backend (inductor);
* bad use is refused with :class:`icv.SteeringError` and leaves nothing behind.
"""

from __future__ import annotations

import pytest
import torch
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv import compiled

PROMPTS = ["the room was", "i think the food", "service"]
NEW = 6
STRENGTH = {"rotate": 1.0, "add": 0.3}


@pytest.fixture(scope="module")
def vec():
    return icv.extract(tiny_model("llama"), ByteTokenizer(), DEMOS)


@pytest.fixture(scope="module")
def other():
    return icv.extract(tiny_model("llama"), ByteTokenizer(), [(b, a) for a, b in DEMOS])


def generate(model, prompts=PROMPTS, **kwargs):
    batch = ByteTokenizer().batch(prompts, side="left")
    out = model.generate(**batch, max_new_tokens=NEW, do_sample=False, pad_token_id=0, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


def steered(model, vector, strength, *, prompts=PROMPTS, generation=None, **how):
    with icv.steer(model, vector, strength, **how):
        return generate(model, prompts, **(generation or {}))


def prepared(family="llama", **how):
    model = tiny_model(family)
    return model, icv.prepare_for_compile(model, **how)


@pytest.mark.parametrize(
    "how",
    [
        dict(mode="rotate", site="mlp", positions="all"),
        dict(mode="rotate", site="block", positions="prompt"),
        dict(mode="rotate", site="attn", positions="generated"),
        dict(mode="add", site="block", positions="all"),
        dict(mode="add", site="mlp", positions="generated"),
    ],
    ids=lambda how: "{mode}@{site}-{positions}".format(**how),
)
def test_prepared_model_steers_like_icv_steer(vec, how):
    model, _ = prepared(mode=how["mode"], site=how["site"])
    bare = tiny_model("llama")
    strength = STRENGTH[how["mode"]]
    want = steered(bare, vec, strength, **how)
    assert not torch.equal(want, generate(bare)), "the steering must change the tokens"
    assert torch.equal(steered(model, vec, strength, **how), want)


def test_per_row_strengths_and_vectors_match(vec, other):
    model, _ = prepared()
    bare = tiny_model("llama")
    for vector, strength in [(vec, [0.5, 1.5, 0.0]), ([vec, other, vec], [1.0, 0.7, 0.0])]:
        want = steered(bare, vector, strength, positions="generated")
        assert torch.equal(steered(model, vector, strength, positions="generated"), want)


def test_beam_search_repeats_each_rows_steering(vec):
    model, _ = prepared()
    bare = tiny_model("llama")
    beams = dict(num_beams=2, num_return_sequences=2)
    want = steered(bare, vec, [1.0, 0.0, 0.5], generation=beams)
    assert torch.equal(steered(model, vec, [1.0, 0.0, 0.5], generation=beams), want)


@pytest.mark.parametrize("family", ["opt", "gpt2", "falcon", "gemma2"])
def test_families_with_tuple_or_flat_outputs(family):
    model, _ = prepared(family)
    bare = tiny_model(family)
    vector = icv.extract(bare, ByteTokenizer(), DEMOS)
    want = steered(bare, vector, [1.0, 0.4, 0.0], positions="prompt")
    assert torch.equal(steered(model, vector, [1.0, 0.4, 0.0], positions="prompt"), want)


def test_unsteered_prepared_model_is_bitwise_the_bare_model(vec):
    model, _ = prepared()
    bare = tiny_model("llama")
    batch = ByteTokenizer().batch(PROMPTS)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, bare(**batch).logits)
        with icv.steer(model, vec, 1.0):
            pass  # removing a steering writes zeros back
        assert torch.equal(model(**batch).logits, bare(**batch).logits)


def test_buffers_grow_with_the_batch_and_the_prompt(vec, monkeypatch):
    monkeypatch.setattr(compiled, "_FIRST_ROWS", 2)
    monkeypatch.setattr(compiled, "_FIRST_POSITIONS", 4)
    monkeypatch.setattr(compiled, "_FIRST_SLOTS", 2)
    model, _ = prepared()
    bare = tiny_model("llama")
    prompts = [*PROMPTS, "a longer prompt than four tokens", "x"]
    strengths = [1.0, 0.2, 0.0, 0.6, 1.4]
    want = steered(bare, vec, strengths, prompts=prompts, positions="prompt")
    assert torch.equal(steered(model, vec, strengths, prompts=prompts, positions="prompt"), want)
    want = steered(bare, vec, 1.0, prompts=prompts)
    assert torch.equal(steered(model, vec, 1.0, prompts=prompts), want)


def _compiled_model(backend):
    torch._dynamo.reset()
    model, table = prepared()
    model.forward = torch.compile(model.forward, backend=backend, fullgraph=True)
    return model, table


STATIC = {"cache_implementation": "static"}


def _steerings(vec, other):
    """(vector, strength, how) for steerings made after the model has compiled."""
    return [
        (vec, 0.5, {}),
        (other, 1.0, {"positions": "generated"}),
        (vec + other, 0.8, {"positions": "prompt"}),
        ([vec, other, vec], [1.0, 0.5, 0.0], {}),
        (vec, [0.3, 0.0, 1.2], {"positions": "generated"}),
    ]


def test_a_compiled_model_steers_without_a_new_trace(vec, other):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    model, _ = _compiled_model(counter)
    bare = tiny_model("llama")
    first = steered(model, vec, 1.0, generation=STATIC)  # traces the prefill and the decode step
    assert torch.equal(first, steered(bare, vec, 1.0, generation=STATIC))
    frames = counter.frame_count
    assert frames > 0, "the forward must run compiled"
    for vector, strength, how in _steerings(vec, other):
        want = steered(bare, vector, strength, generation=STATIC, **how)
        assert torch.equal(steered(model, vector, strength, generation=STATIC, **how), want)
    assert torch.equal(generate(model, **STATIC), generate(bare, **STATIC))
    assert counter.frame_count == frames, "a new steering must not trace the model again"


def test_inductor_compiled_steering_gives_eager_tokens(vec, other):
    model, _ = _compiled_model("inductor")
    bare = tiny_model("llama")
    for vector, strength, how in [(vec, 1.0, {}), *_steerings(vec, other)[2:4]]:
        want = steered(bare, vector, strength, generation=STATIC, **how)
        assert torch.equal(steered(model, vector, strength, generation=STATIC, **how), want)


# -- refusals -------------------------------------------------------------------------------


def test_one_live_steering_at_a_time(vec):
    model, table = prepared()
    with icv.steer(model, vec, 1.0):
        with pytest.raises(icv.SteeringError, match="already holds a live steering"):
            icv.steer(model, vec, 0.5)
        assert table.steered
    assert not table.steered and not icv.is_steered(model)


def test_an_unprepared_mode_and_site_is_refused(vec):
    model, _ = prepared(mode="rotate", site="mlp")
    with pytest.raises(icv.SteeringError, match="prepare_for_compile"):
        icv.steer(model, vec, 0.3, mode="add", site="block")
    assert not icv.is_steered(model)
    icv.prepare_for_compile(model, mode="add")  # a second injection, its own buffers
    with icv.steer(model, vec, 0.3, mode="add", site="block"):
        assert icv.is_steered(model)


def test_averaged_steering_is_refused_and_leaves_nothing(vec, other):
    model, table = prepared()
    with pytest.raises(icv.SteeringError, match="steer_averaged"):
        icv.steer_averaged(model, [vec, other], 1.0)
    assert not icv.is_steered(model) and not table.steered


def test_a_miscounted_batch_is_refused(vec):
    model, _ = prepared()
    with icv.steer(model, vec, [1.0, 0.5]), pytest.raises(icv.SteeringError, match="per-row"):
        generate(model)


def test_preparing_twice_is_refused_and_removal_cleans_up(vec):
    model, table = prepared()
    with pytest.raises(icv.SteeringError, match="already prepared"):
        icv.prepare_for_compile(model)
    table.remove()
    table.remove()  # twice is fine
    assert not any(name.startswith("_icv") for name, _ in model.named_buffers())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    bare = tiny_model("llama")
    assert torch.equal(steered(model, vec, 1.0), steered(bare, vec, 1.0))  # icv.steer's own hooks again
    with pytest.raises(icv.SteeringError, match="removed"):
        table.write(torch.zeros(1, 3, 32), "all")


def test_bad_options_are_refused():
    model = tiny_model("llama")
    with pytest.raises(icv.OptionError, match="mode"):
        icv.prepare_for_compile(model, mode="push")
    with pytest.raises(icv.OptionError, match="site"):
        icv.prepare_for_compile(model, site="head")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_unsteer_clears_the_table_and_the_preparation_is_a_context_manager(vec):
    bare = tiny_model("llama")
    with icv.prepare_for_compile(tiny_model("llama")) as table:
        model = table.model
        icv.steer(model, vec, 1.0, positions="generated")  # a handle left behind
        assert table.steered and "steered" in repr(table)
        assert icv.unsteer(model) == 1
        assert not table.steered
        assert torch.equal(generate(model), generate(bare))
    assert not table.active and "removed" in repr(table)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_model_whose_layers_cannot_be_found_is_refused_and_left_clean(vec):
    model = tiny_model("llama")
    with pytest.raises(icv.ArchitectureError):
        icv.prepare_for_compile(
            model, architecture=icv.Architecture(layers="model.nowhere", mlp="mlp", attn="a")
        )
    assert compiled._prepared.get(model, {}) == {}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
