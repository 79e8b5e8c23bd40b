"""Extraction over HTTP is bounded work: in slices, one per name, a bounded queue, capped texts, cancellable.

A real uvicorn server on 127.0.0.1 serves a tiny llama whose layers are slowed down
(a forward pre-hook that sleeps), so that an extraction lasts long enough for the
concurrent requests of these tests to meet it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from serving_server import BackgroundServer, httpx, wait_idle
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.layers import decoder_layers
from icv.serving import ModelShape, VectorLibrary
from icv.serving.app import ServerLimits
from icv.serving.engine import BatchingPolicy

CHUNK = 64
LONG_PAIRS = [[(s + " ") * 2, (t + " ") * 2] for s, t in DEMOS] * 4  # 32 texts of about 60 tokens


@contextmanager
def slow_server(delay: float = 0.02, **limits):
    """A server whose every forward pass takes at least ``delay`` seconds (an extraction: one per slice)."""
    model = tiny_model("llama")
    library = VectorLibrary(ModelShape.of(model))
    policy = BatchingPolicy(prefill_chunk=CHUNK, gather_ms=0)
    with BackgroundServer(
        model, char_tokenizer(), library, policy=policy, limits=ServerLimits(**limits), max_tokens=200
    ) as server:
        handle = decoder_layers(model)[0].register_forward_pre_hook(lambda *_: time.sleep(delay))
        try:
            yield server
        finally:
            handle.remove()


def extract(url: str, name: str, pairs=LONG_PAIRS, timeout: float = 60):
    with httpx.Client(base_url=url, timeout=timeout) as client:
        began = time.monotonic()
        response = client.post("/v1/vectors/extract", json={"name": name, "pairs": pairs})
        return response, time.monotonic() - began


def names(url: str) -> set[str]:
    return {v["name"] for v in httpx.get(f"{url}/v1/vectors").json()["data"]}


def test_concurrent_extractions_of_one_name_do_the_work_once():
    with slow_server() as server, ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: extract(server.url, "same"), range(6)))
        wait_idle(server)
        stats = server.engine.stats
    statuses = sorted(r.status_code for r, _ in results)
    assert statuses == [201, 409, 409, 409, 409, 409], [r.text for r, _ in results]
    made = next(seconds for r, seconds in results if r.status_code == 201)
    for response, seconds in results:
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "name_taken"
            assert "being made" in response.json()["error"]["message"]
            assert seconds < made / 2  # refused at once, not after the work
    assert stats.tasks == 1


def test_waiting_extractions_are_bounded():
    with slow_server(max_extractions=2) as server, ThreadPoolExecutor(2) as pool:
        running = [pool.submit(extract, server.url, f"v{i}") for i in range(2)]
        deadline = time.monotonic() + 30
        while server.engine.load()["tasks"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        third, _ = extract(server.url, "v2")
        assert third.status_code == 503 and third.json()["error"]["code"] == "server_busy"
        assert [f.result()[0].status_code for f in running] == [201, 201]
        assert extract(server.url, "v3", DEMOS)[0].status_code == 201  # room again


def test_an_extraction_whose_client_leaves_is_cancelled_and_adds_nothing():
    with slow_server(delay=0.05) as server:
        with pytest.raises(httpx.ReadTimeout):
            extract(server.url, "left", timeout=0.4)
        wait_idle(server)
        stats = server.engine.stats
        assert stats.tasks_cancelled == 1 and stats.tasks == 0
        assert stats.slices < len(LONG_PAIRS)  # stopped early: 32 texts take 16 slices or more
        assert "left" not in names(server.url)
        # The name was released: the same name can be made now, by a client that waits.
        response, _ = extract(server.url, "left", DEMOS)
        assert response.status_code == 201
        assert not icv.is_steered(server.engine.model)


def test_texts_longer_than_the_cap_are_a_400_naming_the_limit():
    with slow_server(delay=0, max_text_tokens=50) as server:
        pairs = [["short", "also short"], ["short", "x" * 60]]
        response, _ = extract(server.url, "long", pairs)
        error = response.json()["error"]
        assert response.status_code == 400 and error["code"] == "text_too_long"
        assert error["param"] == "pairs[1].target" and "at most 50 tokens" in error["message"]
        huge, seconds = extract(server.url, "huge", [["a", "b" * 100_000]])
        assert huge.json()["error"]["code"] == "text_too_long" and seconds < 5
        assert "long" not in names(server.url) and "huge" not in names(server.url)
        assert server.engine.stats.slices == 0
        assert extract(server.url, "long", [["a", "x" * 40], ["b", "y"]])[0].status_code == 201  # name free


def test_a_sliced_extraction_is_extract_with_the_chunk_as_batch_bound(tmp_path):
    """The served vector equals icv.extract(..., max_batch_tokens=the chunk), and decoding went on meanwhile."""
    tok = char_tokenizer()
    with slow_server(delay=0.01) as server:
        steps_before = server.engine.stats.decode_steps
        done = threading.Event()

        def stream():
            body = {"prompt": "the room", "max_tokens": 150, "temperature": 0, "ignore_eos": True}
            with httpx.Client(base_url=server.url, timeout=60) as client:
                client.post("/v1/completions", json=body)
            done.set()

        thread = threading.Thread(target=stream)
        thread.start()
        while server.engine.stats.decode_steps == steps_before:
            time.sleep(0.005)
        slices_before = server.engine.stats.slices
        response, _ = extract(server.url, "sliced")
        assert response.status_code == 201, response.text
        steps_during = server.engine.stats.decode_steps
        thread.join(60)
        assert server.engine.stats.slices - slices_before >= 16
        assert steps_during - steps_before >= 16  # a decode step per slice, or near it
        data = httpx.get(f"{server.url}/v1/vectors/sliced/download").content
    (tmp_path / "v.safetensors").write_bytes(data)
    served = icv.InContextVector.load(tmp_path / "v.safetensors")
    want = icv.extract(
        tiny_model("llama"), tok, LONG_PAIRS, name="sliced", max_batch_tokens=CHUNK, progress=False
    )
    assert served.equal(want)
