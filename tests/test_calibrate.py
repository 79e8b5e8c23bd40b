"""Calibration's choice on synthetic cases where the right answer is known."""

from __future__ import annotations

import importlib

import pytest
import torch
from tiny import ByteTokenizer

import icv
from icv.errors import OptionError
from icv.scorers import FunctionScorer
from icv.sweep import Completions

calibration = importlib.import_module("icv.calibrate")  # icv.calibrate is the function
sweeps = importlib.import_module("icv.sweep")
DEMOS = [("bad day", "good day"), ("i hate it", "i love it")]
INPUTS = ["the food was cold", "slow service"]


class DecodingTokenizer(ByteTokenizer):
    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(97 + int(t) % 26) for t in row if int(t) > 2) for row in rows]


@pytest.fixture
def vector(llama):
    return icv.extract(llama, ByteTokenizer(), DEMOS)


@pytest.fixture
def strength_as_text(monkeypatch):
    """Generation replaced by answers that spell out their strength, so scorers can be functions of it."""
    calls = []

    def fake(model, tokenizer, vector, inputs, strengths, **options):
        calls.append(list(strengths))
        return {s: Completions([f"{s}"] * len(inputs), [f"{s}"] * len(inputs), 0.0) for s in strengths}

    monkeypatch.setattr(sweeps, "steered_answers", fake)  # where the transformers engine finds it
    return calls


def of_strength(name, function, higher_is_better=True):
    return FunctionScorer(
        name, lambda outputs, s, r: [function(float(o)) for o in outputs], higher_is_better=higher_is_better
    )


STYLE = of_strength("style", lambda s: min(1.0, 10 * s))  # rises with strength
CONTENT = of_strength("content", lambda s: 1.0 - 4 * s)  # >= 0.65 up to s = 0.0875


def test_picks_the_strongest_strength_within_the_content_floor(llama, vector, strength_as_text):
    result = icv.calibrate(
        llama,
        ByteTokenizer(),
        vector,
        INPUTS,
        style=STYLE,
        content=CONTENT,
        strengths=[0.03, 0.05, 0.07, 0.09, 0.11],
        min_content=0.65,
    )
    assert result.report.chosen.strength == 0.07
    assert result.vector.recommended_strength == 0.07
    assert result.report.feasible
    assert [p.passes for p in result.report.points] == [True, True, True, False, False]
    assert result.report.baseline.strength == 0.0
    assert strength_as_text == [[0.0, 0.03, 0.05, 0.07, 0.09, 0.11]]  # baseline rides in the same sweep
    assert "0.07 **(chosen)**" in result.report.markdown()
    assert result.report.to_dict()["chosen"]["strength"] == 0.07


def test_perplexity_ceiling_is_relative_to_the_unsteered_outputs(llama, vector, strength_as_text):
    fluency = of_strength(
        "ppl", lambda s: 10.0 + 2000.0 * s * s, higher_is_better=False
    )  # doubles at s = 0.0707
    result = icv.calibrate(
        llama,
        ByteTokenizer(),
        vector,
        INPUTS,
        style=STYLE,
        content=CONTENT,
        fluency=fluency,
        strengths=[0.04, 0.06, 0.08],
        min_content=0.0,
        max_perplexity_ratio=2.0,
    )
    assert result.report.floors["max_perplexity"] == pytest.approx(20.0)
    assert result.report.chosen.strength == 0.06
    assert any("perplexity" in reason for reason in result.report.points[-1].reasons)


def test_perplexity_ceiling_can_be_relative_to_the_inputs(llama, vector, strength_as_text):
    """Against the inputs' own perplexity (here 40: they are not numbers), the ceiling is 80 and
    every strength passes; against the unsteered outputs' (10) only those up to 0.0707 do."""

    def perplexity(text: str) -> float:
        try:
            return 10.0 + 2000.0 * float(text) ** 2
        except ValueError:
            return 40.0

    fluency = FunctionScorer(
        "ppl", lambda outputs, s, r: [perplexity(o) for o in outputs], higher_is_better=False
    )
    options = dict(
        style=STYLE, content=CONTENT, fluency=fluency, strengths=[0.04, 0.06, 0.08], min_content=0.0
    )
    inputs = icv.calibrate(llama, ByteTokenizer(), vector, INPUTS, perplexity_baseline="inputs", **options)
    assert inputs.report.floors["max_perplexity"] == pytest.approx(80.0)
    assert inputs.report.chosen.strength == 0.08 and inputs.report.perplexity_baseline == "inputs"
    unsteered = icv.calibrate(llama, ByteTokenizer(), vector, INPUTS, **options)
    assert unsteered.report.chosen.strength == 0.06 and unsteered.report.perplexity_baseline == "unsteered"
    with pytest.raises(OptionError, match="perplexity_baseline"):
        icv.calibrate(llama, ByteTokenizer(), vector, INPUTS, perplexity_baseline="sources", **options)


def test_ties_go_to_the_smaller_strength(llama, vector, strength_as_text):
    flat = of_strength("style", lambda s: 1.0)
    result = icv.calibrate(
        llama, ByteTokenizer(), vector, INPUTS, style=flat, content=CONTENT, strengths=[0.02, 0.04, 0.06]
    )
    assert result.vector.recommended_strength == 0.02


def test_no_feasible_strength_warns_and_takes_the_smallest(llama, vector, strength_as_text):
    with pytest.warns(UserWarning, match="no strength"):
        result = icv.calibrate(
            llama,
            ByteTokenizer(),
            vector,
            INPUTS,
            style=STYLE,
            content=CONTENT,
            strengths=[0.2, 0.1],
            min_content=0.9,
        )
    assert not result.report.feasible
    assert result.vector.recommended_strength == 0.1


def test_recommended_strength_is_what_steer_uses(llama, vector, strength_as_text):
    result = icv.calibrate(
        llama, ByteTokenizer(), vector, INPUTS, style=STYLE, content=CONTENT, strengths=[0.05], mode="add"
    )
    assert result.vector.metadata["injection_mode"] == "add"
    assert result.vector.metadata["injection_site"] == "block"
    with icv.steer(llama, result.vector) as steering:
        assert "strength=0.05" in repr(steering) and steering.mode == "add"


def test_bad_options(llama, vector):
    with pytest.raises(OptionError, match="non-zero"):
        icv.calibrate(llama, ByteTokenizer(), vector, INPUTS, style=STYLE, strengths=[0.0])
    with pytest.raises(OptionError, match="Scorer"):
        icv.calibrate(llama, ByteTokenizer(), vector, INPUTS, style=lambda o: o)
    with pytest.raises(OptionError, match="inputs"):
        icv.calibrate(llama, ByteTokenizer(), vector, "one string", style=STYLE)


def test_layer_ranges_on_a_tiny_model(llama, vector):
    """Real generation: the chosen layer set is kept in the returned vector, the rest zeroed."""
    prefers_layer_one = FunctionScorer("style", lambda outputs, s, r: [1.0] * len(outputs))
    result = icv.calibrate(
        llama,
        DecodingTokenizer(),
        vector,
        INPUTS,
        style=prefers_layer_one,
        content=FunctionScorer("content", lambda outputs, s, r: [1.0] * len(outputs)),
        strengths=[0.1],
        layer_ranges=[[1], range(0, 3)],
        max_new_tokens=4,
    )
    chosen = result.report.chosen
    assert chosen.layers == [1]  # tie on style and strength: the first candidate wins
    norms = result.vector.layer_norms()
    assert norms[1] > 0 and torch.all(norms[[0, 2]] == 0)
    assert len(result.report.points) == 2
