"""vLLM's own OpenAI server with the plugin, driven by the official ``openai`` client.

One server (the command ``icv serve --engine vllm`` runs) on 127.0.0.1 for the module;
answers are compared with icv.steer + model.generate, bad input must get a 4xx in
OpenAI's error shape with the server serving on, and a bounded load of mixed
steering must come back complete and correct.
"""

from __future__ import annotations

import json
import math
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip(
    "vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests in .venv-vllm"
)
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from vllm_cases import GATED_SENTENCES, MAX_MODEL_LEN, fields, spec  # noqa: E402

import icv  # noqa: E402
from icv.models import DEFAULT_MODEL  # noqa: E402

pytestmark = pytest.mark.real_model

# A compiled engine compiles for 3.5 minutes on two quiet cores, 5-11 minutes on a loaded machine.
STARTUP_SECONDS = 1200
MAX_TOKENS = 10
PROMPTS = [
    icv.prompts.paraphrase_prompt(s)
    for s in ("the waiter ignored us for an hour .", "the room smelled and the bed was hard .")
]
MIXED = [
    None,
    spec(("positive", 0.08)),
    spec(("negative", 0.08)),
    spec(("cheerful", None)),
    spec(("positive", 0.06), ("negative", -0.04), positions="generated"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(vector_folder, tmp_path_factory):
    """The base URL of `icv serve --engine vllm` (the README's one command), stopped at the end."""
    from icv.serving.vllm.launch import VllmServer

    log = tmp_path_factory.mktemp("server") / "vllm.log"
    with VllmServer(
        [vector_folder],
        port=free_port(),
        log=log,
        vllm_args=f"--max-model-len {MAX_MODEL_LEN}",
        startup_seconds=STARTUP_SECONDS,
    ) as running:
        yield running.url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected_text(real, reference, library):
    """``expected_text(spec, prompt_ids, max_tokens)``: the reference's text, as the server writes it."""
    _, tok = real
    cache = {}

    def text(request_spec, ids, max_tokens=MAX_TOKENS):
        key = (request_spec, tuple(ids), max_tokens)
        if key not in cache:
            cache[key] = tok.decode(reference(request_spec, ids, max_tokens), skip_special_tokens=True)
        return cache[key]

    return text


def applied(request_spec, library):
    """What the server says it applied: the request's steering with default strengths made explicit."""
    from icv.serving.request import steering_json

    return steering_json(library.resolve(request_spec) if request_spec else None)


@pytest.mark.parametrize(
    "case", [None, spec(("positive", 0.08)), spec(("cheerful", 1.5), positions="generated")]
)
def test_completions_streaming_and_not_equal_icv_steer(client, real, expected_text, library, case):
    _, tok = real
    want = expected_text(case, tok(PROMPTS[0]).input_ids)
    answer = client.completions.create(
        model=DEFAULT_MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, extra_body=fields(case)
    )
    assert answer.choices[0].text == want
    assert answer.model_extra["steering"] == applied(case, library)
    chunks = list(
        client.completions.create(
            model=DEFAULT_MODEL,
            prompt=PROMPTS[0],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            extra_body=fields(case),
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert all(c.model_extra["steering"] == applied(case, library) for c in chunks)


@pytest.mark.parametrize("case", [spec(("positive", 0.08)), spec(("negative", 0.1), positions="prompt")])
def test_chat_completions_apply_the_chat_template_and_the_steering(client, real, expected_text, case):
    _, tok = real
    messages = [{"role": "user", "content": "Describe the hotel room in one sentence."}]
    ids = tok(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    ).input_ids
    want = expected_text(case, ids)
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, max_tokens=MAX_TOKENS, temperature=0, extra_body=fields(case)
    )
    assert answer.choices[0].message.content == want
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
        extra_body=fields(case),
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want


def test_the_server_lists_its_vectors_and_model(client, server, library):
    vectors = httpx.get(f"{server}/v1/vectors").json()["data"]
    assert [v["name"] for v in vectors] == library.names == ["additive", "cheerful", "negative", "positive"]
    assert all("recommended_strength" in v and "default_strength" in v for v in vectors)
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL]


def post(server, body, **kwargs):
    return httpx.post(
        f"{server}/v1/completions",
        content=body,
        timeout=60,
        headers={"content-type": "application/json"},
        **kwargs,
    )


def body(**extra) -> bytes:
    return json.dumps({"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 2, **extra}).encode()


BAD = {
    "unknown vector": body(steering=[{"vector": "nope"}]),
    "vector of another model": body(steering=[{"vector": "tiny"}]),
    "non-finite strength": body(steering=[{"vector": "positive", "strength": math.inf}]),
    "non-numeric strength": body(steering=[{"vector": "positive", "strength": "high"}]),
    "unknown field in steering": body(steering=[{"vector": "positive", "weight": 1}]),
    "too many vectors": body(steering=[{"vector": "positive"}] * 9),
    "vectors that cannot combine": body(steering=[{"vector": "positive"}, {"vector": "cheerful"}]),
    "negative max_tokens": body(max_tokens=-1, steering=[{"vector": "positive"}]),
    "unknown condition": body(steering=[{"vector": "positive"}], steering_when="nope"),
    "condition of another model": body(steering=[{"vector": "positive"}], steering_when="tinycond"),
    "malformed rule": body(steering=[{"vector": "positive"}], steering_when="rude & (positive"),
    "rule without steering": body(steering_when="rude"),
    "rule with several choices": body(steering=[{"vector": "positive"}], steering_when="rude", n=2),
    "malformed JSON": b'{"model": "x", "prompt": ',
    "oversized body": body(prompt="x" * (5 * 1024 * 1024)),
}


@pytest.mark.parametrize("what", list(BAD))
def test_bad_input_gets_an_openai_error_and_the_server_serves_on(server, what):
    answer = post(server, BAD[what])
    assert 400 <= answer.status_code < 500, answer.text
    error = answer.json()["error"]
    assert error["message"] and error["type"]
    assert post(server, body()).status_code == 200


def running_requests(server) -> float:
    metrics = httpx.get(f"{server}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
    )


def test_a_client_that_leaves_mid_stream_leaves_no_request_behind(server):
    request = body(
        max_tokens=400, stream=True, steering=[{"vector": "positive", "strength": 0.05}], ignore_eos=True
    )
    with httpx.stream(
        "POST",
        f"{server}/v1/completions",
        content=request,
        timeout=60,
        headers={"content-type": "application/json"},
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                break  # one token in, the client hangs up
    deadline = time.monotonic() + 30
    while running_requests(server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert running_requests(server) == 0
    assert post(server, body()).status_code == 200


def test_a_bounded_load_of_mixed_steering_comes_back_complete_and_correct(client, real, expected_text):
    _, tok = real
    jobs = [(PROMPTS[i % len(PROMPTS)], MIXED[i % len(MIXED)]) for i in range(200)]
    wanted = {(p, c): expected_text(c, tok(p).input_ids) for p, c in set(jobs)}

    def one(job):
        prompt, case = job
        started = time.perf_counter()
        answer = client.completions.create(
            model=DEFAULT_MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, extra_body=fields(case)
        )
        return answer.choices[0].text, answer.usage.completion_tokens, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, jobs))
    elapsed = time.perf_counter() - started
    assert len(results) == len(jobs)
    wrong = [(job, text) for job, (text, _, _) in zip(jobs, results, strict=True) if text != wanted[job]]
    assert not wrong, f"{len(wrong)} of {len(jobs)} answers differ from icv.steer, e.g. {wrong[0]}"
    latencies = sorted(seconds for *_, seconds in results)
    tokens = sum(n for _, n, _ in results)
    print(
        f"\nvLLM load: {len(jobs)} requests, 16 clients, {elapsed:.1f} s, {tokens / elapsed:.1f} tokens/s, "
        f"p50 {latencies[len(latencies) // 2]:.2f} s, p95 {latencies[int(len(latencies) * 0.95)]:.2f} s",
        file=sys.stderr,
    )


def test_a_rule_steers_only_the_prompts_it_matches_and_each_choice_says_so(server, real, library):
    """Conditional steering through the compiled server: icv.steer(when=...)'s tokens and decision."""
    import torch

    model, tok = real
    steering = [{"vector": "positive", "strength": 0.08}]
    prompts = [icv.prompts.paraphrase_prompt(s) for s in GATED_SENTENCES]  # [0] matches 'rude'
    answer = httpx.post(
        f"{server}/v1/completions",
        json={
            "model": DEFAULT_MODEL,
            "prompt": prompts,
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "steering": steering,
            "steering_when": "rude",
        },
        timeout=120,
    ).json()
    rule = library.rule("rude")
    vector = library.compose(spec(("positive", 0.08)))
    for prompt, choice in zip(prompts, sorted(answer["choices"], key=lambda c: c["index"]), strict=True):
        ids = torch.tensor([tok(prompt).input_ids])
        with icv.steer(model, vector, 1.0, when=rule) as gate:
            out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=0)
        assert choice["text"] == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        decision = choice["steering_decision"]
        assert decision["steered"] is gate.decision.fired[0]
        assert decision["scores"]["rude"] == pytest.approx(gate.decision.scores["rude"][0], abs=1e-3)
    assert [
        c["steering_decision"]["steered"] for c in sorted(answer["choices"], key=lambda c: c["index"])
    ] == [
        True,
        False,
    ]
    assert answer["steering"]["when"] == "rude"
    # streamed: the finishing chunk carries the decision
    events = []
    with httpx.stream(
        "POST",
        f"{server}/v1/completions",
        json={
            "model": DEFAULT_MODEL,
            "prompt": prompts[1],
            "max_tokens": 4,
            "temperature": 0,
            "stream": True,
            "steering": steering,
            "steering_when": "rude",
        },
        timeout=120,
    ) as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    finishing = [c for e in events for c in e["choices"] if c.get("finish_reason")]
    assert finishing and finishing[-1]["steering_decision"]["steered"] is False


def test_a_gated_evaluation_through_the_vllm_server_gives_the_transformers_engines_answers(
    server, real, library, vector_folder
):
    """``icv.evaluate(engine="server", when=...)`` on ``icv serve --engine vllm``: its condition found by its bytes."""
    from icv.errors import EngineError
    from icv.scorers import FunctionScorer

    model, tok = real
    rude = icv.Condition.load(vector_folder / "rude.safetensors")  # fires on GATED_SENTENCES[0] only
    listed = httpx.get(f"{server}/v1/vectors").json()["conditions"]
    assert "rude" in [c["name"] for c in listed] and all(c["sha256"] for c in listed)
    options = dict(
        style=FunctionScorer("length", lambda outputs, s, r: [float(len(o) > 20) for o in outputs]),
        content=FunctionScorer("one", lambda outputs, s, r: [1.0] * len(outputs)),
        scorers=[],
        vector=library.get("positive").vector,  # the server's own file: used by its name
        strengths=[0.08],
        methods=["zero-shot", "icv"],
        max_new_tokens=MAX_TOKENS,
        progress=False,
        when=rude,
    )
    local = icv.evaluate(model, tok, None, GATED_SENTENCES, **options)
    remote = icv.evaluate(model, tok, None, GATED_SENTENCES, engine="server", url=server, **options)
    assert [(r.outputs, r.fired) for r in remote.results] == [(r.outputs, r.fired) for r in local.results]
    assert remote.result("icv", 0.08).fired == [True, False]
    with pytest.raises(EngineError, match=r"does not serve the condition 'rude'.*another one"):
        icv.evaluate(
            model,
            tok,
            None,
            GATED_SENTENCES,
            engine="server",
            url=server,
            **{**options, "when": rude.with_threshold(rude.threshold + 0.1)},
        )
