"""Conditional steering: conditions, rules, and ``icv.steer(..., when=)`` gating rows.

On a tiny random model: a condition told apart from texts of two kinds; rules decided
on hand-made scores; in one left-padded batch the rows the gate accepts get
``icv.steer``'s tokens and the others the bare model's, bitwise (both modes, several
position modes, per-row rules, repeated rows, the compiled path with no new trace);
bad conditions are icv errors that leave no hook behind.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from steering_reference import hook_count
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv.condition import Condition

MATCHING = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa", "aa aaaa", "aaa", "ab aa", "aaaab"]
OTHER = ["zzz yy", "zz zzz", "z z z", "zzzzzz y", "yy zz", "zzz", "zy zz", "zzzzy"]
# Rows the condition "a" accepts (0, 2) and rejects (1, 3), of different lengths: left padding.
PROMPTS = ["aaaa a", "zz zzzzzz", "aa", "z zz"]
NEW = 6
STRENGTH = {"rotate": 1.0, "add": 0.5}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def cond(model):
    return icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, name="a")


@pytest.fixture(scope="module")
def vec(model):
    return icv.extract(model, ByteTokenizer(), DEMOS)


def generate(model, prompts=PROMPTS, **kwargs):
    batch = ByteTokenizer().batch(prompts, side="left")
    out = model.generate(**batch, **{"max_new_tokens": NEW, "do_sample": False, "pad_token_id": 0, **kwargs})
    return out[:, batch["input_ids"].shape[1] :]


def hand_made(name="c", threshold=0.0, comparison=">", layer=1, hidden=32, layers=3):
    directions = torch.zeros(layers, hidden)
    directions[:, 0] = 1.0
    return Condition(
        directions,
        dict(
            name=name,
            model_name="tiny-llama",
            model_type="llama",
            layer=layer,
            threshold=threshold,
            comparison=comparison,
        ),
    )


# -- extraction ---------------------------------------------------------------------------


def test_extraction_separates_the_sets_and_reports_its_counts(cond):
    assert cond.f1 == 1.0
    confusion = cond.confusion
    held_out = round(len(MATCHING) * 0.5) + round(len(OTHER) * 0.5)
    assert sum(confusion.values()) == held_out
    assert confusion["tp"] == held_out // 2 and confusion["tn"] == held_out // 2
    assert len(cond.layer_f1) == 3 and cond.layer_f1[cond.layer] == cond.f1
    assert cond.comparison in (">", "<") and math.isfinite(cond.threshold)
    assert cond.metadata["num_matching"] == len(MATCHING)


def test_extraction_is_reproducible_and_layers_can_be_restricted(model, cond):
    again = icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, name="a")
    assert torch.equal(again.directions, cond.directions) and again.threshold == cond.threshold
    only = icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, layers=[0])
    assert only.layer == 0
    assert only.layer_f1[1] == only.layer_f1[2] == 0.0  # not searched


@pytest.mark.parametrize(
    "matching,other,options,error",
    [
        (["a"], OTHER, {}, icv.DemoError),
        (MATCHING, "zzz", {}, icv.DemoError),
        (MATCHING, ["zz", ""], {}, icv.DemoError),
        (MATCHING, OTHER, {"held_out": 1.0}, icv.OptionError),
        (MATCHING, OTHER, {"held_out": float("nan")}, icv.OptionError),
        (MATCHING, OTHER, {"layers": [3]}, icv.OptionError),
        (MATCHING, OTHER, {"batch_size": 0}, icv.OptionError),
        (MATCHING, OTHER, {"positions": "all"}, icv.OptionError),
        (MATCHING, OTHER, {"treshold": 0.1}, icv.UnknownOptionError),
    ],
)
def test_bad_extraction_input_is_refused(model, matching, other, options, error):
    with pytest.raises(error):
        icv.extract_condition(model, ByteTokenizer(), matching, other, **options)
    assert hook_count(model) == 0


def test_the_scores_the_gate_reads_are_the_ones_extraction_read(model, cond, vec):
    """A held-out text's score, read at the prefill of a batch, is its score at extraction."""
    from icv.gate import read_prompt_means

    texts = ["aaaa a", "zz zz"]
    batch = ByteTokenizer().batch(texts, side="left")
    means = read_prompt_means(model, batch["input_ids"], batch["attention_mask"], [cond.layer])
    with icv.steer(model, vec, 1.0, when=cond) as steering:
        generate(model, texts)
    assert steering.decision.scores["a"] == pytest.approx(
        (means[cond.layer] @ cond.direction).tolist(), abs=1e-5
    )
    # Alone, without padding, the same text scores the same (padding is masked out).
    alone = read_prompt_means(
        model, torch.tensor([ByteTokenizer()(texts[1])["input_ids"]]), None, [cond.layer]
    )
    assert float(alone[cond.layer][0] @ cond.direction) == pytest.approx(
        steering.decision.scores["a"][1], abs=1e-5
    )


# -- the value and its checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change,match",
    [
        ({"threshold": float("nan")}, "finite"),
        ({"threshold": float("inf")}, "finite"),
        ({"layer": 3}, "out of range"),
        ({"layer": -1}, "out of range"),
        ({"comparison": ">="}, "comparison"),
        ({"threshold": "0.1"}, "should be float"),
    ],
)
def test_bad_conditions_are_refused(change, match):
    good = hand_made()
    with pytest.raises(icv.OptionError, match=match):
        Condition(good.directions, {**good.metadata, **change})


def test_a_zero_direction_at_the_chosen_layer_is_refused():
    with pytest.raises(icv.OptionError, match="zero"):
        Condition(
            torch.zeros(3, 32),
            dict(model_name="m", model_type="llama", layer=0, threshold=0.0, comparison=">"),
        )


def test_with_threshold_drops_the_search_figures(cond):
    looser = cond.with_threshold(cond.threshold - 0.5, layer=0)
    assert looser.layer == 0 and looser.f1 is None and looser.confusion is None
    assert cond.layer_f1 == looser.layer_f1


# -- rules ----------------------------------------------------------------------------------


def test_rules_on_hand_made_scores():
    a, b, c = hand_made("a", 0.0, ">"), hand_made("b", 0.5, "<"), hand_made("c", 0.2, ">")
    scores = {
        a: torch.tensor([1.0, 1.0, -1.0, -1.0, float("nan")]),
        b: torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]),
        c: torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]),
    }
    # a: T T F F F(nan)   b: T F T F T   c: F F F T T
    assert a.evaluate(scores).tolist() == [True, True, False, False, False]
    assert b.evaluate(scores).tolist() == [True, False, True, False, True]
    assert (a & b).evaluate(scores).tolist() == [True, False, False, False, False]
    assert (a | b).evaluate(scores).tolist() == [True, True, True, False, True]
    assert (~a).evaluate(scores).tolist() == [False, False, True, True, True]
    assert (a & ~b).evaluate(scores).tolist() == [False, True, False, False, False]
    assert ((a | c) & ~b).evaluate(scores).tolist() == [False, True, False, True, False]
    rule = (a & b) | ~a
    assert rule.conditions == [a, b]
    assert rule.describe() == "((a & b) | ~a)"
    with pytest.raises(icv.OptionError, match="no scores"):
        (a & c).evaluate({a: scores[a]})
    with pytest.raises(icv.OptionError, match="combines"):
        a & 1  # noqa: B018


# -- the gate -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rotate", "add"])
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_rejected_rows_are_bitwise_unsteered_in_a_mixed_batch(model, cond, vec, mode, positions):
    plain = generate(model)
    strength = STRENGTH[mode]
    with icv.steer(model, vec, strength, mode=mode, positions=positions):
        steered = generate(model)
    with icv.steer(model, vec, strength, mode=mode, positions=positions, when=cond) as steering:
        gated = generate(model)
    decision = steering.decision
    assert decision.fired == [True, False, True, False]
    assert decision.count == 2 and len(decision.scores["a"]) == 4
    for row, fired in enumerate(decision.fired):
        assert torch.equal(gated[row], (steered if fired else plain)[row]), f"row {row}"
    # The comparison has teeth: steering changes each row here.
    assert all(not torch.equal(steered[row], plain[row]) for row in range(4))
    assert hook_count(model) == 0


def test_negated_rule_steers_the_other_rows(model, cond, vec):
    plain = generate(model)
    with icv.steer(model, vec, 1.0):
        steered = generate(model)
    with icv.steer(model, vec, 1.0, when=~cond) as steering:
        gated = generate(model)
    assert steering.decision.fired == [False, True, False, True]
    for row, fired in enumerate(steering.decision.fired):
        assert torch.equal(gated[row], (steered if fired else plain)[row])


def test_one_rule_per_row_and_per_row_strengths(model, cond, vec):
    plain = generate(model)
    strengths = [1.0, 0.5, 1.5, 0.8]
    with icv.steer(model, vec, strengths):
        steered = generate(model)
    # Row 0: never (cond & ~cond); row 1: always; rows 2, 3: the condition.
    when = [cond & ~cond, None, cond, cond]
    with icv.steer(model, vec, strengths, when=when) as steering:
        gated = generate(model)
    assert steering.decision.fired == [False, True, True, False]
    for row, fired in enumerate(steering.decision.fired):
        assert torch.equal(gated[row], (steered if fired else plain)[row])


def test_repeated_rows_follow_their_prompt(model, cond, vec):
    """Beam search repeats each prompt: every copy is decided like its prompt."""
    options = dict(num_beams=2, num_return_sequences=2)
    plain = generate(model, PROMPTS[:2], **options)
    with icv.steer(model, vec, 1.0, when=[cond, cond]) as steering:
        gated = generate(model, PROMPTS[:2], **options)
    assert steering.decision.fired == [True, True, False, False]
    assert torch.equal(gated[2:], plain[2:])


def test_each_generation_is_decided_anew(model, cond, vec):
    with icv.steer(model, vec, 1.0, when=cond) as steering:
        generate(model, ["zzzz"])
        assert steering.decision.fired == [False]
        generate(model, ["aaaa", "zz"])
        assert steering.decision.fired == [True, False]
    assert icv.steer(model, vec, 1.0).decision is None
    icv.unsteer(model)


def test_gated_steering_without_cache_matches_with_cache(model, cond, vec):
    with icv.steer(model, vec, 1.0, when=cond):
        cached = generate(model)
        uncached = generate(model, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_other_families(family, vec):
    model = tiny_model(family)
    cond = icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER)
    vector = icv.extract(model, ByteTokenizer(), DEMOS)
    plain = generate(model)
    with icv.steer(model, vector, 1.0, site="mlp"):
        steered = generate(model)
    with icv.steer(model, vector, 1.0, site="mlp", when=cond) as steering:
        gated = generate(model)
    for row, fired in enumerate(steering.decision.fired):
        assert torch.equal(gated[row], (steered if fired else plain)[row])
    assert True in steering.decision.fired or False in steering.decision.fired


# -- refusals -------------------------------------------------------------------------------


def test_a_condition_of_another_model_is_refused_and_leaves_nothing(vec):
    qwen = tiny_model("qwen2")
    other = icv.extract_condition(tiny_model("llama"), ByteTokenizer(), MATCHING, OTHER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qwen_vec = icv.extract(qwen, ByteTokenizer(), DEMOS)
    with pytest.raises(icv.ModelMismatchError, match="condition"):
        icv.steer(qwen, qwen_vec, 1.0, when=other)
    assert hook_count(qwen) == 0 and not icv.is_steered(qwen)


def test_wrong_kinds_are_refused(model, cond, vec):
    with pytest.raises(icv.OptionError, match="when="):
        icv.steer(model, cond, 1.0)
    with pytest.raises(icv.OptionError, match="not a steering vector"):
        icv.steer(model, vec, 1.0, when=vec)
    with pytest.raises(icv.OptionError, match="names no condition"):
        icv.steer(model, vec, 1.0, when=[None, None])
    assert hook_count(model) == 0 and not icv.is_steered(model)


def test_a_miscounted_rule_list_is_refused_at_the_prefill(model, cond, vec):
    with pytest.raises(icv.SteeringError, match="per-row rules"):
        with icv.steer(model, vec, 1.0, when=[cond, cond, cond]):
            generate(model)
    assert hook_count(model) == 0


# -- the compiled path ------------------------------------------------------------------------


def test_prepared_model_gates_like_icv_steer(cond, vec):
    bare = tiny_model("llama")
    model = tiny_model("llama")
    with icv.prepare_for_compile(model):
        for how in ({}, {"positions": "generated"}):
            with icv.steer(bare, vec, [1.0, 0.4, 1.2, 0.8], when=cond, **how):
                want = generate(bare)
            with icv.steer(model, vec, [1.0, 0.4, 1.2, 0.8], when=cond, **how) as steering:
                assert torch.equal(generate(model), want)
            assert steering.decision.fired == [True, False, True, False]
        assert torch.equal(generate(model), generate(bare))


def test_compiled_gate_is_data_no_new_trace(cond, vec):
    from torch._dynamo.testing import CompileCounter

    static = {"cache_implementation": "static"}
    bare = tiny_model("llama")
    counter = CompileCounter()
    torch._dynamo.reset()
    model = tiny_model("llama")
    icv.prepare_for_compile(model)
    model.forward = torch.compile(model.forward, backend=counter, fullgraph=True)
    with icv.steer(model, vec, 1.0):
        generate(model, **static)
    frames = counter.frame_count
    assert frames > 0
    for when in (cond, ~cond, [cond, None, ~cond, cond]):
        with icv.steer(bare, vec, 1.0, when=when):
            want = generate(bare, **static)
        with icv.steer(model, vec, 1.0, when=when):
            assert torch.equal(generate(model, **static), want)
    with icv.steer(model, vec, 1.0):
        generate(model, **static)
    assert counter.frame_count == frames, "a gate must not trace the model again"


def test_a_last_token_condition_gates_the_same_way(model, vec):
    """positions="prompt_last": the prompt's last real token (left padding: the last column)."""
    from icv.gate import read_prompt_states

    last = icv.extract_condition(
        model, ByteTokenizer(), MATCHING, OTHER, positions="prompt_last", name="last"
    )
    assert last.positions == "prompt_last"
    plain = generate(model)
    with icv.steer(model, vec, 1.0):
        steered = generate(model)
    with icv.steer(model, vec, 1.0, when=last) as steering:
        gated = generate(model)
    for row, fired in enumerate(steering.decision.fired):
        assert torch.equal(gated[row], (steered if fired else plain)[row])
    # Its score is the last real token's, whichever side the batch is padded on.
    right = ByteTokenizer().batch(PROMPTS, side="right")
    states = read_prompt_states(
        model, right["input_ids"], right["attention_mask"], [("prompt_last", last.layer)]
    )
    scores = (states["prompt_last", last.layer] @ last.direction).tolist()
    assert scores == pytest.approx(steering.decision.scores["last"], abs=1e-5)
    icv.unsteer(model)
