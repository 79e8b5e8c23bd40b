"""Conditional steering in the vLLM workers' terms, without vLLM: a tiny model stands in for vLLM's.

The reading pass of :mod:`icv.serving.vllm.gating` must read a request's prompt as
:mod:`icv.gate` reads it (the same functions), decide each request of a flat batch by
its own rule, in one pass, and never steer a request it could not read whole.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv.gate import read_prompt_states, readings_of, scores_of
from icv.layers import decoder_layers
from icv.serving import ModelShape, SteeringSpec, SteeringTerm, VectorLibrary
from icv.serving.vllm import worker
from icv.serving.vllm.contract import GATE_ARG, STEERING_ARG, encode
from icv.serving.vllm.gating import GatedRow, RequestGate, gating_refusal


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    tok = ByteTokenizer()
    matching, other = [s for s, _ in DEMOS], [t for _, t in DEMOS]
    cond = icv.extract_condition(model, tok, matching, other, name="c")
    library = VectorLibrary(ModelShape.of(model), conditions={"c": cond, "last": cond.with_threshold(0.0)})
    return model, tok, library, cond


def prompts(tok, texts):
    ids = [tok(t)["input_ids"] for t in texts]
    width = min(len(i) for i in ids)
    return torch.tensor([i[:width] for i in ids])  # equal lengths: one flat batch of rows


def test_each_request_of_a_flat_batch_is_read_as_icv_gate_reads_it_and_decided_by_its_rule(setup):
    model, tok, library, cond = setup
    batch = prompts(tok, [DEMOS[0][0], DEMOS[0][1], DEMOS[1][0]])
    rows, length = batch.shape
    gate = RequestGate(library, list(enumerate(decoder_layers(model))))
    rules = [library.rule("c"), library.rule("~c"), library.rule("c | last")]
    gated = [GatedRow(f"r{i}", f"g{i}", rules[i], i, length) for i in range(rows)]
    starts = np.arange(rows + 1) * length
    gate.decide(gated, starts, np.zeros(rows, dtype=np.int64), lambda: model.model(input_ids=batch))
    assert gate.reading_passes == 1  # one pass for the whole step
    for i in range(rows):
        alone = read_prompt_states(model, batch[i : i + 1], None, readings_of([cond]))
        score = scores_of([cond], alone)[cond]
        fired = bool(rules[i].evaluate({c: score for c in rules[i].conditions})[0])
        (report,) = gate.reports([f"g{i}"])[f"g{i}"].values()
        assert report["steered"] is fired is gate.steered(f"r{i}")
        assert report["scores"]["c"] == pytest.approx(float(score[0]), abs=1e-5)
    assert gate.steered("r0") is not gate.steered("r1")  # c and ~c disagree on the same prompt


def test_a_prompt_not_read_whole_is_left_unsteered_and_says_why(setup):
    model, tok, library, _ = setup
    batch = prompts(tok, [DEMOS[0][0]])
    length = batch.shape[1]
    gate = RequestGate(library, list(enumerate(decoder_layers(model))))
    split = GatedRow("r", "g", library.rule("c | ~c"), 0, length + 5)  # its prompt is longer than the step
    gate.decide(
        [split], np.array([0, length]), np.zeros(1, dtype=np.int64), lambda: model.model(input_ids=batch)
    )
    assert gate.steered("r") is False and gate.reading_passes == 0
    assert "not read whole" in gate.reports(["g"])["g"]["r"]["note"]


def test_a_rejected_or_undecided_request_gets_no_steering_in_the_step(setup):
    _, _, library, _ = setup
    gate = RequestGate(library, [])
    plain = encode(SteeringSpec((SteeringTerm("v", 0.1),)))
    ruled = encode(SteeringSpec((SteeringTerm("v", 0.1),), "all", "c"))
    gate._fired.update({"yes": True, "no": False})

    def state(raw):
        return SimpleNamespace(
            sampling_params=SimpleNamespace(extra_args={STEERING_ARG: raw, GATE_ARG: "g"}),
            num_prompt_tokens=3,
        )

    assert worker._step_request(state(ruled), "yes", gate).steering == ruled
    assert worker._step_request(state(ruled), "no", gate).steering is None
    assert worker._step_request(state(ruled), "undecided", gate).steering is None
    assert worker._step_request(state(plain), "no", gate).steering == plain  # ungated: always
    assert worker._step_request(state(ruled), "yes", None).steering is None  # no gate in the worker
    assert json.loads(plain)  # the argument is the front end's JSON


def test_gating_needs_conditions_a_scheduler_that_never_splits_prompts_and_one_stage(setup):
    _, _, library, _ = setup

    def config(chunked, stages=1):
        return SimpleNamespace(
            scheduler_config=SimpleNamespace(enable_chunked_prefill=chunked),
            parallel_config=SimpleNamespace(pipeline_parallel_size=stages),
        )

    assert gating_refusal(config(False), library) == ""
    assert "--no-enable-chunked-prefill" in gating_refusal(config(True), library)
    assert "pipeline" in gating_refusal(config(False, 2), library)
    assert "no condition" in gating_refusal(config(False), VectorLibrary(library.shape))
