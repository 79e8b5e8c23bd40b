"""Every client error is a 4xx in OpenAI's shape: deep JSON, lone surrogates, stream_options, logprobs; seeds.

A real server on a tiny model; each request that was a 500 (a ``RecursionError``, a
tokenizer's ``TypeError``) or silently accepted is now a 400 naming the problem, and the
server answers the next request.
"""

from __future__ import annotations

import json

import pytest
from serving_server import BackgroundServer, httpx
from tiny import char_tokenizer, tiny_model

from icv.serving import ModelShape, VectorLibrary
from icv.serving.http import MAX_JSON_DEPTH

ROUTES = ["/v1/completions", "/v1/chat/completions", "/v1/vectors/extract"]


@pytest.fixture(scope="module")
def server():
    model = tiny_model("llama")
    with BackgroundServer(
        model, char_tokenizer(), VectorLibrary(ModelShape.of(model)), max_tokens=32
    ) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
        assert client.get("/health").status_code == 200


def post_raw(http, route: str, text: str):
    return http.post(route, content=text.encode(), headers={"content-type": "application/json"})


def error_of(response, status=400, code="invalid_json"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    return error


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deeply_nested_bodies_are_400(http, route, depth):
    body = '{"prompt":' + "[" * depth + "]" * depth + "}"
    assert "nests more than" in error_of(post_raw(http, route, body))["message"]


@pytest.mark.parametrize(
    "route, body",
    [
        ("/v1/completions", '{"prompt": "caf\\ud800e", "max_tokens": 2}'),
        ("/v1/completions", '{"prompt": ["ok", "\\udfff"], "max_tokens": 2}'),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": "hi \\ud800"}], "max_tokens": 2}',
        ),
        (
            "/v1/chat/completions",
            '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
        ),
        ("/v1/completions", '{"prompt": "x", "stop": ["\\ud800"], "max_tokens": 2}'),
        ("/v1/completions", '{"prompt": "x", "\\ud800": 1}'),
        ("/v1/vectors/extract", '{"name": "s", "pairs": [["a\\ud800", "b"]]}'),
    ],
)
def test_lone_surrogates_are_400(http, route, body):
    assert "lone UTF-16 surrogate" in error_of(post_raw(http, route, body))["message"]


def test_a_surrogate_pair_is_text(http):
    response = post_raw(http, "/v1/completions", '{"prompt": "smile \\ud83d\\ude00", "max_tokens": 2}')
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_without_stream_is_400(http, stream):
    body = {"prompt": "ab", "max_tokens": 2, "stream_options": {"include_usage": True}}
    if stream is not None:
        body["stream"] = stream
    error = error_of(http.post("/v1/completions", json=body), code="invalid_value")
    assert error["param"] == "stream_options"
    body["stream"] = True
    assert http.post("/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize(
    "route, field",
    [
        ("/v1/completions", {"logprobs": 0}),
        ("/v1/completions", {"logprobs": 2}),
        ("/v1/chat/completions", {"logprobs": True}),
    ],
)
def test_logprobs_are_refused_as_not_supported(http, route, field):
    body = (
        {"prompt": "ab"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "ab"}]}
    )
    response = http.post(route, json={**body, "max_tokens": 2, **field})
    error = error_of(response, code="unsupported_parameter")
    assert error["param"] == "logprobs" and "not supported" in error["message"]
    assert http.post(route, json={**body, "max_tokens": 2, "logprobs": None}).status_code == 200


def test_seeds_use_all_64_bits(http):
    def text(seed):
        body = {"prompt": "the room", "max_tokens": 24, "temperature": 1.0, "seed": seed, "ignore_eos": True}
        return http.post("/v1/completions", json=body).json()["choices"][0]["text"]

    texts = {seed: text(seed) for seed in (0, 2**32, 2**63)}
    assert len(set(texts.values())) == 3, texts
    assert text(2**32) == texts[2**32]  # and a seed still repeats itself


def test_an_error_body_is_json_even_for_non_ascii_input(http):
    response = post_raw(http, "/v1/completions", '{"prompt": "x", "f\u00fc\u00df": 1}')
    assert json.loads(response.text)["error"]["code"] == "unknown_parameter"
