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
from icv.serving.vllm.contract import STEERING_ARG, decode
from icv.serving.vllm.http import SteeringMiddleware, rewrite


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    model = tiny_model("llama")
    folder = tmp_path_factory.mktemp("vectors")
    icv.extract(model, ByteTokenizer(), DEMOS, name="pos").save(folder / "positive.safetensors")
    icv.extract(tiny_model("qwen2"), ByteTokenizer(), DEMOS, name="other").save(folder / "qwen.safetensors")
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
        # conditional steering is the transformers engine's only: refused, never silently ungated
        ({"steering": [{"vector": "positive"}], "steering_when": "toxic"}, "unsupported_parameter"),
    ],
)
def test_bad_steering_is_refused_with_the_field_at_fault(library, fields, code):
    with pytest.raises(RequestError) as caught:
        rewrite(body(**fields), library)
    assert caught.value.code == code and caught.value.status == 400


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
