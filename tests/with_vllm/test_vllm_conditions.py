"""Conditional steering (``steering_when``) in vLLM's offline engine gives icv.steer(when=...)'s tokens.

Each gated request is decided once, at its prefill, from its prompt read unsteered; a
request its rule rejects must give the bare model's tokens, one it accepts exactly the
steered tokens, and the decision (steered, scores) must be the transformers gate's.
One eager engine with chunked prefill off (what gating needs) serves the module.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from vllm_cases import GATED_SENTENCES, MAX_MODEL_LEN, fields, spec  # noqa: E402

import icv  # noqa: E402
from icv.errors import OptionError, RequestError  # noqa: E402
from icv.serving import SteeringSpec  # noqa: E402
from icv.serving.vllm.contract import STATUS_METHOD  # noqa: E402

pytestmark = pytest.mark.real_model

MAX_TOKENS = 10
PROMPTS = [icv.prompts.paraphrase_prompt(s) for s in GATED_SENTENCES]  # [0] is rude, [1] is not


def gated(request_spec: SteeringSpec, when: str) -> SteeringSpec:
    return SteeringSpec(request_spec.terms, request_spec.positions, when)


CASES = [
    None,
    spec(("positive", 0.08)),  # ungated beside gated ones
    gated(spec(("positive", 0.08)), "rude"),
    gated(spec(("negative", 0.1), positions="prompt"), "~rude"),
    gated(spec(("cheerful", 1.5), positions="generated"), "rude | rude"),  # addition at the block
    gated(spec(("additive", 0.06)), "rude & ~rude"),  # never fires
]


@pytest.fixture(scope="module")
def llm(vector_folder):
    from icv.serving.vllm import SteeredLLM

    engine = SteeredLLM(
        vectors=[vector_folder],
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        enforce_eager=True,
        enable_chunked_prefill=False,
    )
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def gated_reference(real, library):
    """``(tokens, decision)`` of icv.steer(..., when=rule) + generate, alone, greedy float32."""
    import torch

    model, _ = real

    def generate(request_spec, ids, max_tokens):
        batch = torch.tensor([ids])
        kwargs = dict(max_new_tokens=max_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
        rule = library.rule(request_spec.when)
        vector = library.compose(request_spec)
        with icv.steer(model, vector, 1.0, positions=request_spec.positions, when=rule) as steering:
            out = model.generate(batch, **kwargs)
        decision = steering.decision
        return out[0, batch.shape[1] :].tolist(), decision

    return generate


def params(request_spec, max_tokens=MAX_TOKENS, **kwargs):
    from vllm import SamplingParams

    kwargs.setdefault("temperature", 0)
    return SamplingParams(max_tokens=max_tokens, extra_args=fields(request_spec) or None, **kwargs)


def test_gated_requests_in_one_batch_get_icv_steers_tokens_and_decision(
    llm, real, reference, gated_reference
):
    _, tok = real
    statuses = llm.llm.collective_rpc(STATUS_METHOD)
    assert all(status["gating"] == "" for status in statuses), statuses
    passes = statuses[0]["reading_passes"]
    batch = [(p, case) for p in PROMPTS for case in CASES]
    outputs = llm.generate([p for p, _ in batch], [params(c) for _, c in batch], use_tqdm=False)
    fired_count = 0
    for (prompt, case), out in zip(batch, outputs, strict=True):
        ids = tok(prompt).input_ids
        got = list(out.outputs[0].token_ids)
        if case is None or case.when is None:
            assert got == reference(case, ids, MAX_TOKENS), f"{case} on {prompt!r}"
            assert out.steering_decision is None
            continue
        want, decision = gated_reference(case, ids, MAX_TOKENS)
        assert got == want, f"{case} on {prompt!r}: vLLM {tok.decode(got)!r} vs {tok.decode(want)!r}"
        mine = out.steering_decision
        assert mine["steered"] is decision.fired[0], (case, mine, decision)
        assert mine["scores"]["rude"] == pytest.approx(decision.scores["rude"][0], abs=1e-3)
        if not mine["steered"]:  # rejected: the bare model's tokens, nothing of the steering
            assert got == reference(None, ids, MAX_TOKENS)
        fired_count += mine["steered"]
    # 'rude' fires on the first prompt only; '~rude' on the second; the contradiction never.
    assert fired_count == 3
    # the whole batch's gated prefills were read in one pass per step, not one per request
    after = llm.llm.collective_rpc(STATUS_METHOD)[0]["reading_passes"]
    assert passes < after <= passes + 2


def test_a_decision_holds_for_the_whole_generation_and_ungated_steps_read_nothing(llm, real, reference):
    _, tok = real
    ids = tok(PROMPTS[0]).input_ids
    before = llm.llm.collective_rpc(STATUS_METHOD)[0]["reading_passes"]
    (plain,) = llm.generate([PROMPTS[0]], [params(spec(("positive", 0.08)), 24)], use_tqdm=False)
    assert llm.llm.collective_rpc(STATUS_METHOD)[0]["reading_passes"] == before  # no rule: no reading
    (out,) = llm.generate([PROMPTS[0]], [params(gated(spec(("positive", 0.08)), "rude"), 24)], use_tqdm=False)
    assert out.steering_decision["steered"] is True
    assert list(out.outputs[0].token_ids) == list(plain.outputs[0].token_ids)  # steered all 24 tokens
    assert list(plain.outputs[0].token_ids) == reference(spec(("positive", 0.08)), ids, 24)
    assert llm.llm.collective_rpc(STATUS_METHOD)[0]["reading_passes"] == before + 1


def test_bad_rules_are_refused_before_they_reach_the_engine(llm):
    bad = [
        ("nope", "no condition named 'nope'"),
        ("tinycond", "cannot decide for this model"),
        ("rude &", "ends where a condition name was expected"),
        ("positive", "no condition named 'positive'"),  # a vector is not a condition
    ]
    for when, message in bad:
        with pytest.raises(RequestError, match=message):
            llm.generate(["hi"], [params(gated(spec(("positive", 0.1)), when))])
    with pytest.raises(OptionError, match="n=1"):
        llm.generate(["hi"], [params(gated(spec(("positive", 0.1)), "rude"), n=2, temperature=0.5)])
    (out,) = llm.generate(["hi"], [params(None, 2)], use_tqdm=False)  # and it keeps serving
    assert len(out.outputs[0].token_ids) == 2
