"""The HTTP server on a tiny model: OpenAI's API through real clients, bad input, disconnects, load.

A real uvicorn server on 127.0.0.1 (a free port) serves a tiny random llama with a
real tokenizer (one token per character, a chat template); the official ``openai``
client and httpx talk to it.  Expected texts come from ``icv.steer`` +
``model.generate`` on a second copy of the same model, so the references never
touch the served model.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving_server import BackgroundServer, expected, httpx, library_from, save_vectors, wait_idle
from starlette.responses import Response
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.serving.app import ServerLimits
from icv.serving.engine import BatchingPolicy
from icv.serving.http import unless_gone

openai = pytest.importorskip(
    "openai", reason="the client tests need the official openai package (the 'test' extra)"
)

MAX_BODY = 16 * 1024
NEW = 8


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, tok):
    """Vector files for the tiny llama (and one of another model), and the vectors themselves."""
    folder = tmp_path_factory.mktemp("served-vectors")
    loaded = save_vectors(tiny_model("llama"), tok, DEMOS, folder)
    icv.extract(tiny_model("qwen2"), tok, DEMOS, progress=False).save(folder / "qwen.safetensors")
    return folder, loaded


@pytest.fixture(scope="module")
def server(vectors, tok):
    folder, _ = vectors
    model = tiny_model("llama")
    limits = ServerLimits(max_body_bytes=MAX_BODY)
    with BackgroundServer(
        model,
        tok,
        library_from(folder, model),
        max_tokens=200,
        limits=limits,
        policy=BatchingPolicy(max_batch=16, gather_ms=2),
    ) as running:
        yield running
    assert not icv.is_steered(model)


@pytest.fixture(scope="module")
def reference():
    """A second copy of the served model: references never steer the model the server uses."""
    return tiny_model("llama")


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def body(prompt, steering=None, positions=None, **extra):
    payload = {"model": "tiny-llama", "prompt": prompt, "max_tokens": NEW, "temperature": 0, **extra}
    if steering is not None:
        payload["steering"] = [{"vector": name, "strength": strength} for name, strength in steering]
    if positions is not None:
        payload["steering_positions"] = positions
    return payload


# -- the official client ---------------------------------------------------------------


def test_openai_client_completions_streaming_and_not(client, vectors, reference, tok, server):
    _, loaded = vectors
    steering = {"steering": [{"vector": "positive", "strength": 1.5}], "steering_positions": "generated"}
    want = expected(reference, tok, "the room was", [(loaded["positive"], 1.5)], positions="generated")
    assert want != expected(reference, tok, "the room was")  # the steering changes this text
    whole = client.completions.create(
        model="tiny-llama", prompt="the room was", max_tokens=NEW, temperature=0, extra_body=steering
    )
    assert whole.choices[0].text == want
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens == len(tok("the room was")["input_ids"])
    assert whole.steering == {"vectors": [{"vector": "positive", "strength": 1.5}], "positions": "generated"}
    chunks = list(
        client.completions.create(
            model="tiny-llama",
            prompt="the room was",
            max_tokens=NEW,
            temperature=0,
            stream=True,
            extra_body=steering,
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    wait_idle(server)


def test_openai_client_chat_streaming_and_not(client, vectors, reference, tok):
    _, loaded = vectors
    messages = [{"role": "user", "content": "how was the room?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = expected(reference, tok, rendered, [(loaded["negative"], 2.0)], special=False)
    extra = {"steering": {"vector": "negative", "strength": 2.0}}
    whole = client.chat.completions.create(
        model="tiny-llama", messages=messages, max_tokens=NEW, temperature=0, extra_body=extra
    )
    assert whole.choices[0].message.content == want and whole.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=messages,
        max_tokens=NEW,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_unsteered_requests_say_so_and_equal_plain_generate(client, reference, tok):
    whole = client.completions.create(model="tiny-llama", prompt="service", max_tokens=NEW, temperature=0)
    assert whole.choices[0].text == expected(reference, tok, "service")
    assert whole.steering is None


def test_composed_vectors_and_add_mode_equal_the_same_arithmetic_in_python(http, vectors, reference, tok):
    _, loaded = vectors
    mix = [("positive", 1.0), ("negative", -0.5)]
    response = http.post("/v1/completions", json=body("i think", mix, "prompt")).json()
    assert response["choices"][0]["text"] == expected(
        reference, tok, "i think", [(loaded[n], s) for n, s in mix], positions="prompt"
    )
    response = http.post("/v1/completions", json=body("so slow", [("positive_add", 0.8)])).json()
    assert response["choices"][0]["text"] == expected(
        reference, tok, "so slow", [(loaded["positive_add"], 0.8)]
    )


def test_several_prompts_and_token_ids_in_one_request(http, reference, tok):
    ids = tok("hello")["input_ids"]
    response = http.post("/v1/completions", json=body(["the room was", "service"])).json()
    assert [c["index"] for c in response["choices"]] == [0, 1]
    texts = [c["text"] for c in response["choices"]]
    assert texts == [expected(reference, tok, p) for p in ("the room was", "service")]
    response = http.post("/v1/completions", json=body(ids)).json()
    assert response["choices"][0]["text"] == expected(reference, tok, "hello")


def test_models_vectors_and_health(http):
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny-llama"]
    listed = http.get("/v1/vectors").json()
    assert [v["name"] for v in listed["data"]] == ["negative", "positive", "positive_add"]
    assert all("default_strength" in v and "metadata" in v for v in listed["data"])
    assert [u["name"] for u in listed["unfit"]] == ["qwen"]
    health = http.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-llama"


# -- bad input ------------------------------------------------------------------------


BAD = [
    ("unknown vector", body("hi", [("nope", 0.1)]), 400, "vector_not_found"),
    ("vector of another model", body("hi", [("qwen", 0.1)]), 400, "vector_mismatch"),
    ("non-numeric strength", body("hi", [("positive", "0.1")]), 400, "invalid_strength"),
    (
        "infinite strength",
        '{"prompt": "hi", "steering": [{"vector": "positive", "strength": 1e999}]}',
        400,
        "invalid_strength",
    ),
    (
        "NaN strength",
        '{"prompt": "hi", "steering": [{"vector": "positive", "strength": NaN}]}',
        400,
        "invalid_strength",
    ),
    (
        "unknown field in steering",
        {"prompt": "hi", "steering": [{"vector": "positive", "strenght": 1}]},
        400,
        "invalid_steering",
    ),
    ("too many vectors", body("hi", [("positive", 0.1)] * 9), 400, "too_many_vectors"),
    ("bad positions", body("hi", [("positive", 0.1)], "last"), 400, "invalid_steering"),
    ("negative max_tokens", body("hi", max_tokens=-1), 400, "invalid_value"),
    ("zero max_tokens", body("hi", max_tokens=0), 400, "invalid_value"),
    ("max_tokens over the server's limit", body("hi", max_tokens=201), 400, "invalid_max_tokens"),
    ("prompt past the context", body("x" * 250), 400, "context_length_exceeded"),
    ("malformed JSON", '{"prompt": "hi",', 400, "invalid_json"),
    ("not an object", "[1, 2]", 400, "invalid_json"),
    ("not UTF-8", b'{"prompt": "\xff"}', 400, "invalid_json"),
    ("oversized body", {"prompt": "x" * MAX_BODY}, 413, "body_too_large"),
    ("prompt of the wrong type", {"prompt": 5}, 400, "invalid_type"),
    ("empty prompt", {"prompt": []}, 400, "invalid_type"),
    ("token id outside the vocabulary", {"prompt": [5, 100000]}, 400, "invalid_token"),
    ("temperature of the wrong type", body("hi", temperature="hot"), 400, "invalid_type"),
    ("temperature out of range", body("hi", temperature=3), 400, "invalid_value"),
    ("stream of the wrong type", body("hi", stream="yes"), 400, "invalid_type"),
    ("unknown argument", body("hi", frobnicate=1), 400, "unknown_parameter"),
    ("unsupported n", body("hi", n=2), 400, "unsupported_parameter"),
    ("unknown model", body("hi", model="gpt-4"), 404, "model_not_found"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_completion_requests_get_openai_errors_and_the_server_keeps_serving(http, server, case):
    _, payload, status, code = case
    if isinstance(payload, dict):
        response = http.post("/v1/completions", json=payload)
    else:
        response = http.post("/v1/completions", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert http.post("/v1/completions", json=body("hi", max_tokens=2)).status_code == 200
    wait_idle(server)


BAD_CHAT = [
    ("messages of the wrong type", {"messages": "hi"}, "invalid_type"),
    ("empty messages", {"messages": []}, "invalid_type"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, "invalid_value"),
    ("content of the wrong type", {"messages": [{"role": "user", "content": 5}]}, "invalid_type"),
    (
        "tools",
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
        "unsupported_parameter",
    ),
]


@pytest.mark.parametrize("case", BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_requests_get_openai_errors(http, case):
    _, payload, code = case
    response = http.post("/v1/chat/completions", json=payload)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_unknown_routes_and_methods_get_openai_errors(http):
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    response = http.get("/v1/completions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_the_openai_client_raises_its_own_error_types(client):
    with pytest.raises(openai.BadRequestError, match="no vector named 'nope'"):
        client.completions.create(
            model="tiny-llama", prompt="hi", extra_body={"steering": [{"vector": "nope"}]}
        )
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")


# -- disconnects ----------------------------------------------------------------------


def test_a_client_gone_mid_stream_leaves_no_hook_and_no_stuck_request(server, http):
    before = server.engine.stats.cancelled
    payload = body("the room was", [("positive", 1.0)], max_tokens=190, stream=True)
    with httpx.Client(base_url=server.url, timeout=60) as gone:
        with gone.stream("POST", "/v1/completions", json=payload) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
    # The connection is closed: the row must leave the batch long before its 190 tokens (its
    # greedy continuation has no end of sequence, so only the cancellation can end it early).
    wait_idle(server, timeout=20)
    assert server.engine.stats.cancelled == before + 1
    assert http.post("/v1/completions", json=body("hi", max_tokens=2)).status_code == 200


def test_a_client_gone_before_a_whole_response_frees_its_row(server):
    """A non-streaming client that hangs up while its request decodes: the row is dropped."""
    before = server.engine.stats.cancelled
    payload = json.dumps(body("the room was", [("positive", 1.0)], max_tokens=190)).encode()
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + payload)
        # Hang up only once the engine decodes it: leaving on a timer raced both ways (before
        # the server had read the request, or after 190 tiny-model tokens had finished).
        deadline = time.monotonic() + 10
        while server.engine.load()["running"] == 0:
            assert time.monotonic() < deadline, "the request never started decoding"
            time.sleep(0.002)
    wait_idle(server, timeout=20)
    assert server.engine.stats.cancelled >= before + 1


# -- load -----------------------------------------------------------------------------


LOAD_COMBOS = [
    ("the room was", None, "all"),
    ("the room was", [("positive", 1.5)], "all"),
    ("service", [("negative", 2.0)], "generated"),
    ("i think", [("positive", 1.0), ("negative", -0.5)], "prompt"),
    ("so slow", [("positive_add", 0.8)], "all"),
    ("hello there", None, "all"),
]


def test_concurrent_clients_with_mixed_steering_each_get_their_own_answer(server, vectors, reference, tok):
    """200 requests from 16 concurrent clients, mixed vectors: every response checked, none lost."""
    _, loaded = vectors
    want = [
        expected(reference, tok, p, [(loaded[n], s) for n, s in (st or [])], pos)
        for p, st, pos in LOAD_COMBOS
    ]
    picks = random.Random(0).choices(range(len(LOAD_COMBOS)), k=200)
    local = threading.local()

    def one(index: int) -> tuple[int, str]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=server.url, timeout=120)
        prompt, steering, positions = LOAD_COMBOS[index]
        response = local.client.post("/v1/completions", json=body(prompt, steering, positions))
        response.raise_for_status()
        return index, response.json()["choices"][0]["text"]

    before = server.engine.stats.snapshot()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, picks))
    assert len(results) == 200
    wrong = [(i, text, want[i]) for i, text in results if text != want[i]]
    assert not wrong, wrong[:3]
    after = server.engine.stats.snapshot()
    assert after["finished"] - before["finished"] == 200
    assert after["peak_batch"] > 1  # requests really shared batches
    wait_idle(server)


def test_the_stream_is_server_sent_events_ending_in_done(http):
    payload = body(["ab", "cd"], stream=True, stream_options={"include_usage": True})
    with http.stream("POST", "/v1/completions", json=payload) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]) == 2
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)


def test_time_to_first_piece_is_one_step_not_a_whole_batch(server):
    """A request that arrives while a long one decodes starts at the next step."""
    long_payload = body("the room was", max_tokens=150, stream=True)
    with (
        httpx.Client(base_url=server.url, timeout=60) as first,
        httpx.Client(base_url=server.url, timeout=60) as second,
    ):
        with first.stream("POST", "/v1/completions", json=long_payload) as running:
            lines = running.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            short = second.post("/v1/completions", json=body("hi", max_tokens=2))
            assert short.status_code == 200
            # The short one is done while the long one (no end of sequence in its 150 greedy
            # tokens) still decodes: it joined the running batch instead of waiting for it.
            assert server.engine.load()["running"] >= 1


def test_a_client_gone_before_the_answer_is_a_499_and_a_cancel_not_a_500():
    """The work is only asked to cancel when the client leaves: its result must not be read (it was a 500)."""

    class Request:
        def __init__(self, gone: bool) -> None:
            self.gone = gone

        async def receive(self) -> dict:
            if not self.gone:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

    async def forever() -> Response:
        await asyncio.sleep(3600)
        return Response(status_code=200)

    async def answer() -> Response:
        return Response(status_code=201)

    cancelled: list[bool] = []
    left = asyncio.run(unless_gone(Request(gone=True), forever(), lambda: cancelled.append(True)))  # type: ignore[arg-type]
    stayed = asyncio.run(unless_gone(Request(gone=False), answer(), lambda: cancelled.append(False)))  # type: ignore[arg-type]
    assert left.status_code == 499 and stayed.status_code == 201 and cancelled == [True]
