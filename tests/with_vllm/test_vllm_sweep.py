"""``icv.evaluate(..., engine="vllm")`` and ``icv.calibrate(..., engine="vllm")``: the answers of the
transformers engine, from one vLLM batch of per-request steerings.

Each call starts one eager engine (about a minute on two cores; the compiled engine's tokens
are the eager one's, test_vllm_engine.py) on the embedded model in float32, and the whole
sweep (every method, strength and input) goes to it as one batch.  With ``when=`` the
engine gets the rule's conditions in its folder and runs with chunked prefill off.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from vllm_cases import DEMOS, GATED_SENTENCES, MAX_MODEL_LEN  # noqa: E402

import icv  # noqa: E402
from icv.engines import VllmEngine  # noqa: E402
from icv.errors import OptionError  # noqa: E402
from icv.models import model_name_of  # noqa: E402
from icv.scorers import FunctionScorer  # noqa: E402

pytestmark = pytest.mark.real_model

INPUTS = [
    "the waiter ignored us for an hour .",
    "the room smelled and the bed was hard .",
    "my order arrived late and cold .",
]


def cheerful() -> FunctionScorer:
    words = {"good", "great", "delicious", "friendly", "loved", "warm", "wonderful", "excellent", "enjoyed"}
    return FunctionScorer(
        "cheerful", lambda outputs, s, r: [float(bool(words & set(o.lower().split()))) for o in outputs]
    )


def kept() -> FunctionScorer:
    return FunctionScorer(
        "kept",
        lambda outputs, sources, r: [
            len(set(o.lower().split()) & set(s.split())) / max(1, len(set(s.split())))
            for o, s in zip(outputs, sources, strict=True)
        ],
        needs_sources=True,
    )


def engine(model) -> VllmEngine:
    return VllmEngine(model_name_of(model), enforce_eager=True, max_model_len=MAX_MODEL_LEN, seed=0)


def test_an_evaluation_sweep_on_vllm_gives_the_transformers_engines_answers(real):
    model, tok = real
    vector = icv.extract(model, tok, DEMOS, name="positive", progress=False)
    # A vector from icv.train is an ordinary file: its arm rides the same batch (two steps: the
    # point is the file, not the fit).
    trained = icv.train(model, tok, DEMOS, init=vector, steps=2, held_out=0, progress=False)
    options = dict(
        style=cheerful(),
        content=kept(),
        scorers=[],
        vector=vector,
        strengths=[0.05, 0.1],
        # ICL alone adds nothing the hybrid does not (demos in the prompt) and doubles the run
        methods=["zero-shot", "icv", "icl+icv", "trained"],
        hybrid_strengths=[0.03],
        trained=trained,
        trained_strengths=[0.1],
        max_new_tokens=16,
        progress=False,
    )
    local = icv.evaluate(model, tok, DEMOS, INPUTS[:2], **options)
    fast = icv.evaluate(model, tok, DEMOS, INPUTS[:2], engine=engine(model), **options)
    got = {(r.method, r.strength): r.outputs for r in fast.results}
    expected = {(r.method, r.strength): r.outputs for r in local.results}
    assert got == expected
    assert fast.settings["engine"] == "vllm"
    assert local.result("icv", 0.1).outputs != local.result("zero-shot").outputs, "the sweep should steer"
    assert local.result("trained").outputs != local.result("zero-shot").outputs, (
        "the trained arm should steer"
    )
    assert fast.settings["training"] == trained.metadata["training"]
    assert [r.style_success for r in fast.results] == [r.style_success for r in local.results]


def test_a_calibration_on_vllm_with_two_layer_sets_and_addition_matches_transformers(real):
    model, tok = real
    vector = icv.extract(model, tok, DEMOS, name="positive", progress=False)
    options = dict(
        style=cheerful(),
        content=kept(),
        strengths=[0.04, 0.1],
        layer_ranges=[range(0, 30), range(10, 20)],
        min_content=0.0,
        max_new_tokens=12,
        mode="add",
        progress=False,
    )
    local = icv.calibrate(model, tok, vector, INPUTS[:2], **options)
    fast = icv.calibrate(model, tok, vector, INPUTS[:2], engine=engine(model), **options)
    assert fast.report.baseline.examples == local.report.baseline.examples
    assert [(p.layers, p.examples) for p in fast.report.points] == [
        (p.layers, p.examples) for p in local.report.points
    ]
    assert fast.vector.recommended_strength == local.vector.recommended_strength


def test_a_gated_evaluation_on_vllm_gives_the_transformers_engines_answers_and_decisions(real, vector_folder):
    model, tok = real
    rude = icv.Condition.load(vector_folder / "rude.safetensors")  # fires on GATED_SENTENCES[0] only
    vector = icv.extract(model, tok, DEMOS, name="positive", progress=False)
    options = dict(
        style=cheerful(),
        content=kept(),
        scorers=[],
        vector=vector,
        strengths=[0.0, 0.1],  # strength 0: sent unsteered, its decision from the 0.1 row's
        methods=["zero-shot", "icv"],
        max_new_tokens=12,
        progress=False,
        when=rude,
    )
    local = icv.evaluate(model, tok, None, GATED_SENTENCES, **options)
    fast = icv.evaluate(model, tok, None, GATED_SENTENCES, engine=engine(model), **options)
    got = {(r.method, r.strength): (r.outputs, r.fired) for r in fast.results}
    assert got == {(r.method, r.strength): (r.outputs, r.fired) for r in local.results}
    assert fast.settings["engine"] == "vllm" and fast.settings["when"] == "rude"
    steered, zero = fast.result("icv", 0.1), fast.result("zero-shot").outputs
    assert steered.fired == [True, False] and fast.result("icv", 0.0).fired == [True, False]
    assert steered.outputs[1] == zero[1]  # rejected: the bare model's answer
    unconditioned = icv.evaluate(model, tok, None, GATED_SENTENCES, **{**options, "when": None})
    assert steered.outputs[0] == unconditioned.result("icv", 0.1).outputs[0] != zero[0]
    assert "| 1/2 |" in fast.markdown()


def test_a_gated_sweep_refuses_chunked_prefill_before_vllm_starts(real, vector_folder):
    model, tok = real
    rude = icv.Condition.load(vector_folder / "rude.safetensors")
    vector = icv.extract(model, tok, DEMOS, name="positive", progress=False)
    chunked = VllmEngine(model_name_of(model), enable_chunked_prefill=True)
    with pytest.raises(OptionError, match="enable_chunked_prefill"):
        icv.evaluate(
            model,
            tok,
            None,
            GATED_SENTENCES,
            style=cheerful(),
            content=kept(),
            scorers=[],
            vector=vector,
            strengths=[0.1],
            methods=["icv"],
            engine=chunked,
            when=rude,
        )
