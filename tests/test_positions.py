"""Where in time steering acts: positions="all" | "prompt" | "generated", under the KV cache.

Proved on the tiny llama (float32) and briefly on the embedded model:

* greedy generation steered with the KV cache gives the same tokens as without it,
  for every positions mode and both modes;
* a left-padded batch steered gives each row the tokens of that prompt steered alone
  (the prompts below are ones where the unsteered model already agrees: asserted);
* "prompt" steers the prompt and nothing after it, "generated" leaves the prompt's
  forward bitwise unchanged; both match a hand-written reference hook that masks by
  absolute position;
* beam search works with positions.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from steering_reference import hook_count, manual_steering, rotate
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv.positions import PositionTracker, past_length

PROMPTS = ["the room was", "i think the food", "service"]
NEW = 8
# Strong enough that the tiny random model's greedy tokens change.
STRENGTH = {"rotate": 1.0, "add": 0.3}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vec(model):
    return icv.extract(model, ByteTokenizer(), DEMOS)


def generate(model, prompts, *, new=NEW, **kwargs):
    batch = ByteTokenizer().batch(prompts, side="left")
    out = model.generate(**batch, max_new_tokens=new, do_sample=False, pad_token_id=0, **kwargs)
    return out[:, batch["input_ids"].shape[1] :]


def steered(model, vec, prompts, *, mode="rotate", positions="all", strength=None, **kwargs):
    strength = STRENGTH[mode] if strength is None else strength
    with icv.steer(model, vec, strength, mode=mode, positions=positions):
        return generate(model, prompts, **kwargs)


def test_the_tiny_model_agrees_with_itself_unsteered(model):
    # The premise of the equality tests below: without steering, cache == no cache and
    # batch == alone already hold for these prompts (float32, tiny llama).
    batch = generate(model, PROMPTS)
    assert torch.equal(batch, generate(model, PROMPTS, use_cache=False))
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(batch[row], generate(model, [prompt])[0])


@pytest.mark.parametrize("mode", ["rotate", "add"])
@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_cache_and_no_cache_give_the_same_tokens(model, vec, mode, positions):
    with_cache = steered(model, vec, PROMPTS, mode=mode, positions=positions, use_cache=True)
    without = steered(model, vec, PROMPTS, mode=mode, positions=positions, use_cache=False)
    assert torch.equal(with_cache, without)
    # The comparison is not vacuous: steering changed something.
    assert not torch.equal(with_cache, generate(model, PROMPTS))


@pytest.mark.parametrize(
    "mode,positions", [("rotate", "all"), ("rotate", "prompt"), ("rotate", "generated"), ("add", "generated")]
)
def test_left_padded_batch_gives_each_row_its_alone_tokens(model, vec, mode, positions):
    batch = steered(model, vec, PROMPTS, mode=mode, positions=positions)
    for row, prompt in enumerate(PROMPTS):
        alone = steered(model, vec, [prompt], mode=mode, positions=positions)
        assert torch.equal(batch[row], alone[0]), f"row {row} ({prompt!r})"


def test_all_is_the_default(model, vec):
    default = steered(model, vec, PROMPTS, positions="all")
    with icv.steer(model, vec, STRENGTH["rotate"]):
        assert torch.equal(default, generate(model, PROMPTS))


def cache_argument(model) -> str:
    """The forward's cache keyword: ``cache`` in newer transformers 5.x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _scores(model, prompts, **kwargs):
    batch = ByteTokenizer().batch(prompts, side="left")
    out = model.generate(
        **batch,
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
        **kwargs,
    )
    return out.sequences, torch.stack(out.logits, dim=1), batch["input_ids"].shape[1]


@pytest.mark.parametrize("positions", ["prompt", "generated"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_positions_match_a_reference_masked_by_absolute_position(model, vec, positions, use_cache):
    """Every step's logits equal one full forward with a reference hook steering only
    positions < P ("prompt") or >= P ("generated"), P the padded prompt width."""
    s = STRENGTH["rotate"]
    with icv.steer(model, vec, s, positions=positions):
        sequences, logits, width = _scores(model, PROMPTS, use_cache=use_cache)
    attention = ByteTokenizer().batch(PROMPTS)["attention_mask"]
    attention = torch.cat([attention, torch.ones(len(PROMPTS), NEW, dtype=torch.long)], dim=1)
    # Generated EOS / pad tokens do not occur in these runs; keep the check honest.
    assert not (sequences[:, width:] == 0).any()
    position_ids = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 1)  # as generate does

    def keep(past, length):
        absolute = torch.arange(past, past + length)
        return absolute < width if positions == "prompt" else absolute >= width

    deltas = s * vec.directions
    with (
        torch.no_grad(),
        manual_steering(model, "mlp", range(3), lambda x, l: rotate(x, deltas[l]), keep=keep),
    ):
        reference = model(
            sequences[:, :-1],
            attention_mask=attention[:, :-1],
            position_ids=position_ids[:, :-1],
            use_cache=False,
        ).logits[:, width - 1 :]
    torch.testing.assert_close(logits, reference, atol=2e-5, rtol=1e-4)


def test_prompt_mode_steers_the_prompt_forward_like_all(model, vec):
    ids = ByteTokenizer().batch(PROMPTS)
    with torch.no_grad():
        plain = model(**ids).logits
        with icv.steer(model, vec, STRENGTH["rotate"], positions="all"):
            everywhere = model(**ids).logits
        with icv.steer(model, vec, STRENGTH["rotate"], positions="prompt"):
            prompt_only = model(**ids).logits
    assert not torch.allclose(plain, prompt_only, atol=1e-3)
    torch.testing.assert_close(prompt_only, everywhere, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_generated_mode_leaves_the_prompt_bitwise_alone(model, vec, mode):
    ids = ByteTokenizer().batch(PROMPTS)
    with torch.no_grad():
        plain = model(**ids).logits
        with icv.steer(model, vec, STRENGTH[mode], mode=mode, positions="generated"):
            steered_forward = model(**ids).logits
    assert torch.equal(plain, steered_forward)
    # In generate: the first step's logits (from the last prompt position) are bitwise
    # the unsteered ones, so the first token is too; later tokens change.
    _, base_logits, _ = _scores(model, PROMPTS)
    with icv.steer(model, vec, STRENGTH[mode], mode=mode, positions="generated"):
        _, logits, _ = _scores(model, PROMPTS)
    assert torch.equal(logits[:, 0], base_logits[:, 0])
    assert not torch.allclose(logits[:, 1:], base_logits[:, 1:], atol=1e-3)


def test_prompt_mode_leaves_generated_positions_unsteered_in_the_cache_path(model, vec):
    """With the cache, a decoding step's own activations are untouched in "prompt" mode:
    decoding from a prompt prefilled under "all" steering gives the same logits."""
    batch = ByteTokenizer().batch(PROMPTS)
    with torch.no_grad():
        with icv.steer(model, vec, STRENGTH["rotate"], positions="prompt"):
            sequences, logits, width = _scores(model, PROMPTS)
        # Manual: prefill steered (all positions), then feed the generated tokens unsteered.
        attention = batch["attention_mask"]
        with icv.steer(model, vec, STRENGTH["rotate"], positions="all"):
            out = model(
                **batch,
                position_ids=(attention.cumsum(-1) - 1).masked_fill(attention == 0, 1),
                use_cache=True,
            )
        cache = out.past_key_values
        steps = [out.logits[:, -1]]
        for t in range(NEW - 1):
            attention = torch.cat([attention, torch.ones(len(PROMPTS), 1, dtype=torch.long)], dim=1)
            position = (attention.cumsum(-1) - 1)[:, -1:]
            out = model(
                sequences[:, width + t : width + t + 1],
                attention_mask=attention,
                position_ids=position,
                use_cache=True,
                **{cache_argument(model): cache},
            )
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(logits, torch.stack(steps, dim=1), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_beam_search_with_positions(model, vec, positions):
    kwargs = dict(num_beams=3, early_stopping=True, new=5)
    prompts = PROMPTS[1:]  # of different lengths: one is left-padded
    with_cache = steered(model, vec, prompts, positions=positions, **kwargs)
    without = steered(model, vec, prompts, positions=positions, use_cache=False, **kwargs)
    assert torch.equal(with_cache, without)
    for row, prompt in enumerate(prompts):
        assert torch.equal(with_cache[row], steered(model, vec, [prompt], positions=positions, **kwargs)[0])


def test_static_cache_counts_positions_too(model, vec):
    dynamic = steered(model, vec, PROMPTS, positions="generated")
    static = steered(model, vec, PROMPTS, positions="generated", cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_a_new_generate_call_starts_a_new_prompt(model, vec):
    """Chained generation under one steering (with the KV cache): the second call's
    prompt is the first call's whole output, and its prompt length is re-read, so its
    logits equal those of a fresh steering.  (A one-token first call once made the
    second look like its next step; without the cache that stays ambiguous: docs.)"""
    prompt = ByteTokenizer().batch(["the room was"])

    def logits_from(ids):
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        return torch.stack(out.logits, dim=1)

    with icv.steer(model, vec, STRENGTH["rotate"], positions="prompt"):
        ids = model.generate(**prompt, max_new_tokens=1, do_sample=False, pad_token_id=0)
        chained = logits_from(ids)
    with icv.steer(model, vec, STRENGTH["rotate"], positions="prompt"):
        fresh = logits_from(ids)
    assert torch.equal(chained, fresh)


def test_past_length_reads_the_cache_generate_passes():
    class Cache:
        def get_seq_length(self):
            return 7

    assert past_length({"cache": Cache()}) == 7
    assert past_length({"past_key_values": Cache()}) == 7
    assert past_length({"cache_position": torch.tensor([5, 6])}) == 5
    assert past_length({}) == 0
    legacy = ((torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)),)
    assert past_length({"past_key_values": legacy}) == 4


def test_tracker_masks_by_absolute_position():
    tracker = PositionTracker("generated")
    x = torch.zeros(2, 5, 4)
    tracker.observe(None, (), {"input_ids": torch.ones(2, 5, dtype=torch.long), "cache": _Cache(0)})
    assert tracker.mask_for(x).flatten().tolist() == [0, 0, 0, 0, 0]
    tracker.observe(None, (), {"input_ids": torch.ones(2, 1, dtype=torch.long), "cache": _Cache(5)})
    assert tracker.mask_for(x[:, :1]).flatten().tolist() == [1]
    with pytest.raises(ValueError):
        PositionTracker("all")


class _Cache:
    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


def test_unknown_positions_is_an_option_error(model, vec):
    before = hook_count(model)
    with pytest.raises(icv.OptionError, match="positions"):
        icv.steer(model, vec, positions="first")
    assert hook_count(model) == before


@pytest.mark.real_model
def test_real_model_cache_batch_and_generated_positions(real):
    """The embedded model, positions="generated" (the mode most sensitive to position
    bookkeeping): cache == no cache, and the padded row == that prompt alone."""
    model, tok = real
    demos = [
        ("The food was cold.", "The food was hot."),
        ("I hated it.", "I loved it."),
        ("The staff were rude.", "The staff were kind."),
    ]
    vec = icv.extract(model, tok, demos)
    prompts = ["The restaurant down the street was", "My day was"]
    from icv.generation import left_padded

    def run(ps, use_cache):
        batch = left_padded(tok, ps, torch.device("cpu"))
        with icv.steer(model, vec, 0.1, positions="generated"):
            out = model.generate(
                **batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id, use_cache=use_cache
            )
        return out[:, batch["input_ids"].shape[1] :]

    cached = run(prompts, True)
    assert torch.equal(cached, run(prompts, False))
    assert torch.equal(cached[1], run(prompts[1:], True)[0])
