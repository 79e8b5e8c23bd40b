"""The vLLM server's steering middleware, without vLLM: a fake downstream ASGI app stands in for it."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv.errors import RequestError
from icv.serving import ModelShape, VectorLibrary
from icv.serving.vllm.contract import GATE_ARG, STEERING_ARG, decode
from icv.serving.vllm.http import SteeringMiddleware, rewrite


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    model = tiny_model("llama")
    folder = tmp_path_factory.mktemp("vectors")
    icv.extract(model, ByteTokenizer(), DEMOS, name="pos").save(folder / "positive.safetensors")
    icv.extract(tiny_model("qwen2"), ByteTokenizer(), DEMOS, name="other").save(folder / "qwen.safetensors")
    matching, other = [s for s, _ in DEMOS], [t for _, t in DEMOS]
    icv.extract_condition(model, ByteTokenizer(), matching, other, name="toxic").save(
        folder / "toxic.safetensors"
    )
    return VectorLibrary.load([folder], ModelShape.of(model))


def body(**fields) -> bytes:
    return json.dumps({"model": "m", "prompt": "hi", **fields}).encode()


def test_steering_moves_into_the_extra_args_with_a_cache_salt(library):
    spec, out = rewrite(
        body(
            steering=[{"vector": "positive", "strength": 0.05}],
            steering_positions="generated",
            vllm_xargs={"other": 1},
            cache_salt="mine",
        ),
        library,
    )
    request = json.loads(out)
    assert "steering" not in request and "steering_positions" not in request
    assert request["vllm_xargs"]["other"] == 1
    assert decode(request["vllm_xargs"][STEERING_ARG]) == spec
    assert request["cache_salt"] == f"mine-icv-{library.fingerprint(spec)}"
    # default strengths are made explicit, so the workers and the response agree
    spec, out = rewrite(body(steering={"vector": "positive"}), library)
    assert spec.terms[0].strength == library.resolve(spec).terms[0].strength is not None


def test_unsteered_and_unreadable_bodies_reach_vllm_unchanged(library):
    for raw in (body(), b"{not json", b"[1, 2]", body(steering=[])[:-1]):
        assert rewrite(raw, library) == (None, raw)
    spec, out = rewrite(body(steering=[]), library)
    assert spec is None and "steering" not in json.loads(out) and "cache_salt" not in json.loads(out)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"steering": [{"vector": "nope"}]}, "vector_not_found"),
        ({"steering": [{"vector": "qwen"}]}, "vector_mismatch"),
        ({"steering": [{"vector": "positive", "strength": "strong"}]}, "invalid_strength"),
        ({"steering": [{"vector": "positive", "power": 1}]}, "invalid_steering"),
        ({"steering": [{"vector": "positive"}] * 9}, "too_many_vectors"),
        ({"steering_positions": "middle"}, "invalid_steering"),
        ({"vllm_xargs": {STEERING_ARG: "{}"}}, "invalid_steering"),
        ({"steering": [{"vector": "positive"}], "steering_when": "nope"}, "condition_not_found"),
        ({"steering": [{"vector": "positive"}], "steering_when": "toxic &"}, "invalid_steering"),
        ({"steering_when": "toxic"}, "invalid_steering"),  # a rule without a steering
        ({"steering": [{"vector": "positive"}], "steering_when": "toxic", "n": 2}, "unsupported_parameter"),
    ],
)
def test_bad_steering_is_refused_with_the_field_at_fault(library, fields, code):
    with pytest.raises(RequestError) as caught:
        rewrite(body(**fields), library)
    assert caught.value.code == code and caught.value.status == 400


def test_a_rule_gets_an_id_and_a_cache_salt_of_its_own(library):
    fields = {"steering": [{"vector": "positive", "strength": 0.05}], "steering_when": "toxic & ~toxic"}
    spec, out = rewrite(body(**fields), library)
    request = json.loads(out)
    assert "steering_when" not in request and spec.when == "toxic & ~toxic"
    assert decode(request["vllm_xargs"][STEERING_ARG]) == spec  # the workers read the rule from it
    gate_id = request["vllm_xargs"][GATE_ARG]
    assert gate_id in request["cache_salt"]
    again = json.loads(rewrite(body(**fields), library)[1])
    assert again["vllm_xargs"][GATE_ARG] != gate_id and again["cache_salt"] != request["cache_salt"]
    assert GATE_ARG not in json.loads(rewrite(body(steering=fields["steering"]), library)[1])["vllm_xargs"]


def test_an_engine_that_cannot_gate_refuses_a_rule_and_says_why(library):
    fields = {"steering": [{"vector": "positive"}], "steering_when": "toxic"}
    with pytest.raises(RequestError, match="chunked prefill") as caught:
        rewrite(body(**fields), library, "it may split a prompt (chunked prefill)")
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "steering_when")
    rewrite(body(steering=fields["steering"]), library, "it may split a prompt")  # ungated: served


class FakeEngine:
    """vLLM's engine client as the middleware uses it: the workers' decisions by front-end id."""

    def __init__(self, decisions):
        self.decisions, self.calls = decisions, 0

    async def collective_rpc(self, method, args=()):
        self.calls += 1
        (ids,) = args
        return [{i: self.decisions for i in ids}, {}]  # rank 0 answers


def test_each_choice_reports_its_prompts_decision(library):
    decisions = {
        "cmpl-abc-0-1a2b3c4d": {"steered": True, "scores": {"toxic": 0.4}},
        "cmpl-abc-1-5e6f7a8b": {"steered": False, "scores": {"toxic": -0.2}},
    }
    engine = FakeEngine(decisions)
    server = SimpleNamespace(state=SimpleNamespace(icv_library=library, icv_engine=engine, icv_gating=""))
    fields = {"steering": [{"vector": "positive"}], "steering_when": "toxic"}
    choices = [{"index": 0, "finish_reason": "length"}, {"index": 1, "finish_reason": "stop"}]
    _, start, out = run(
        server, "/v1/completions", body(**fields), [json.dumps({"choices": choices}).encode()]
    )
    answer = json.loads(out)
    assert [c["steering_decision"]["steered"] for c in answer["choices"]] == [True, False]
    assert answer["steering"]["when"] == "toxic" and engine.calls == 1
    assert dict(start["headers"])[b"content-length"] == str(len(out)).encode()
    # a stream: only the chunk that finishes a choice carries its decision
    events = [
        b'data: {"choices": [{"index": 1, "text": "a", "finish_reason": null}]}\n\ndata: {"choi',
        b'ces": [{"index": 1, "text": "", "finish_reason": "stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    _, _, out = run(
        server, "/v1/completions", body(**fields), events, content_type=b"text/event-stream; charset=utf-8"
    )
    datas = [json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")]
    assert "steering_decision" not in datas[0]["choices"][0]
    assert datas[1]["choices"][0]["steering_decision"] == decisions["cmpl-abc-1-5e6f7a8b"]
    # a chat request has one prompt: its one decision
    engine.decisions = {"chatcmpl-xyz-1a2b3c4d": {"steered": True, "scores": {"toxic": 0.4}}}
    _, _, out = run(
        server, "/v1/chat/completions", body(**fields), [json.dumps({"choices": choices[:1]}).encode()]
    )
    assert json.loads(out)["choices"][0]["steering_decision"]["steered"] is True


def test_a_server_without_vectors_refuses_steering():
    with pytest.raises(RequestError, match="no steering vectors"):
        rewrite(body(steering=[{"vector": "positive"}]), None)


def run(middleware, path, payload, response_chunks, status=200, content_type=b"application/json"):
    """Send ``payload`` through ``middleware`` to an app that answers ``response_chunks``; what came back."""
    seen = {}

    async def app(scope, receive, send):
        message = await receive()
        seen["body"] = message["body"]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"999")],
            }
        )
        for i, chunk in enumerate(response_chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(response_chunks) - 1}
            )

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [],  # an ASGI scope always has headers
        "app": SimpleNamespace(state=middleware.state),
    }
    asyncio.run(SteeringMiddleware(app, max_body=1000)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return seen.get("body"), start, out


@pytest.fixture
def server(library):
    return SimpleNamespace(state=SimpleNamespace(icv_library=library))


def test_a_response_says_which_steering_was_applied(server):
    given, start, out = run(
        server,
        "/v1/completions",
        body(steering=[{"vector": "positive", "strength": 0.05}]),
        [b'{"id": "c1", ', b'"choices": []}'],
    )
    assert STEERING_ARG in json.loads(given)["vllm_xargs"]
    answer = json.loads(out)
    assert answer["steering"] == {"vectors": [{"vector": "positive", "strength": 0.05}], "positions": "all"}
    assert answer["id"] == "c1"
    assert dict(start["headers"])[b"content-length"] == str(len(out)).encode()
    _, _, out = run(server, "/v1/completions", body(), [b'{"id": "c2"}'])
    assert json.loads(out) == {"steering": None, "id": "c2"}


def test_every_event_of_a_stream_carries_the_steering_even_when_split(server):
    events = [b'data: {"id": "a"}\n\ndata: {"id"', b': "b"}\n\n', b"data: [DONE]\n\n"]
    _, start, out = run(
        server,
        "/v1/chat/completions",
        body(steering=[{"vector": "positive", "strength": 0.05}]),
        events,
        content_type=b"text/event-stream; charset=utf-8",
    )
    datas = [line[6:] for line in out.split(b"\n\n") if line.startswith(b"data: ")]
    assert [json.loads(d)["id"] for d in datas[:-1]] == ["a", "b"] and datas[-1] == b"[DONE]"
    assert all(json.loads(d)["steering"]["vectors"][0]["vector"] == "positive" for d in datas[:-1])


def test_errors_are_openai_shaped_and_other_traffic_passes_untouched(server):
    given, start, out = run(server, "/v1/completions", body(steering=[{"vector": "nope"}]), [b"{}"])
    assert given is None and start["status"] == 400
    error = json.loads(out)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "vector_not_found"
    assert error["param"] == "steering[0].vector"
    given, start, out = run(server, "/v1/completions", b"x" * 1001, [b"{}"])
    assert given is None and start["status"] == 413
    # vLLM's own errors and other endpoints are not rewritten
    _, start, out = run(server, "/v1/completions", body(), [b'{"error": {}}'], status=400)
    assert start["status"] == 400 and out == b'{"error": {}}'
    given, _, out = run(server, "/v1/embeddings", b'{"steering": 1}', [b'{"a": 1}'])
    assert given == b'{"steering": 1}' and out == b'{"a": 1}'
