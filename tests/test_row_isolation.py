"""One request's numbers fail that request alone: a broken row in a batch of good ones.

A vector finite as a value but far too large for the model (``1e38`` in every direction,
layer scales of 10, added to each block's output) drives its row's logits to NaN.  That row ends with an
error for its client (400, ``steering_overflow``; a stream gets an error event in
OpenAI's shape) while every other row of the batch, greedy or sampled, gives token for
token what it gives alone.  A broken composition (strength 10 on a huge vector, past
float32) is a 400 before anything runs.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.serving.engine import Engine, Failed, Finished
from icv.serving.sampling import SamplingParams
from icv.serving.steering import RowSteering

NEW = 8
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=NEW, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True)


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def broken_vector(model, tok, value: float = 1e38) -> icv.InContextVector:
    """A vector the file readers would refuse (icv.magnitudes), given to the engine directly."""
    good = icv.extract(model, tok, DEMOS, name="broken", progress=False)
    return icv.InContextVector(
        torch.full_like(good.directions, value),
        {**good.metadata, "injection_mode": "add", "injection_site": "block"},
        torch.full_like(good.layer_scales, 10.0),  # what the additive mode adds: 1e39, past float32
    )


class Collect:
    """A sink that keeps every event; ``done`` is set at the request's last."""

    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    def last(self):
        assert self.done.wait(60), "the request did not end"
        return self.events[-1]


def run(model, tok, requests) -> list:
    """Every request submitted before the worker starts, so all are prefilled and decoded together."""
    engine = Engine(model, tok, start=False)
    sinks = []
    try:
        for prompt, params, steering in requests:
            sinks.append(Collect())
            engine.submit(tok(prompt)["input_ids"], params, steering, sinks[-1])
        engine.start()
        return [sink.last() for sink in sinks]
    finally:
        engine.close()


GOOD = [("the room was", GREEDY), ("service felt", SAMPLED), ("we ate", GREEDY), ("the staff", SAMPLED)]


@pytest.mark.parametrize("broken_params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_a_broken_row_fails_alone_and_the_others_give_what_they_give_alone(model, tok, broken_params):
    steering = RowSteering(broken_vector(model, tok))
    positive = RowSteering(icv.extract(model, tok, DEMOS, progress=False) * 1.5)
    good = [(p, params, positive if i % 2 else None) for i, (p, params) in enumerate(GOOD)]
    alone = [run(model, tok, [request])[0] for request in good]
    assert all(isinstance(r, Finished) and len(r.token_ids) == NEW for r in alone)
    together = run(model, tok, [*good[:2], ("the food", broken_params, steering), *good[2:]])
    failed = together.pop(2)
    assert isinstance(failed, Failed), failed
    assert (failed.error.status, failed.error.code, failed.error.param) == (
        400,
        "steering_overflow",
        "steering",
    )
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert not icv.is_steered(model)


def test_a_row_that_breaks_mid_decode_leaves_the_batch_decoding(model, tok):
    # Steered only in decode steps: its prefill is fine, its first decode step is not.
    steering = RowSteering(broken_vector(model, tok), positions="generated")
    good = [(p, params, None) for p, params in GOOD]
    alone = [run(model, tok, [request])[0] for request in good]
    together = run(model, tok, [("the food", GREEDY, steering), *good])
    failed = together.pop(0)
    assert isinstance(failed, Failed) and failed.error.code == "steering_overflow"
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]


# -- over HTTP --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tok):
    from serving_server import BackgroundServer

    from icv.serving import ModelShape, VectorLibrary

    served = tiny_model("llama")
    library = VectorLibrary(ModelShape.of(served))
    library.add("broken", broken_vector(served, tok))
    library.add("huge", broken_vector(served, tok, 1e38))
    with BackgroundServer(served, tok, library, max_tokens=64) as running:
        yield running


def completion(prompt, stream=False, steering=None, **extra):
    body = {
        "prompt": prompt,
        "max_tokens": NEW,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
        **extra,
    }
    if steering:
        body["steering"] = [{"vector": steering, "strength": 1.0}]
    return body


def events_of(text: str) -> list:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def streamed_text(text: str) -> str:
    return "".join(e["choices"][0]["text"] for e in events_of(text) if e.get("choices"))


def test_over_http_the_broken_request_gets_openais_error_and_the_others_their_text(server):
    from serving_server import httpx

    with httpx.Client(base_url=server.url, timeout=60) as http:
        alone_plain = http.post("/v1/completions", json=completion("the room was")).json()["choices"][0][
            "text"
        ]
        alone_stream = streamed_text(
            http.post("/v1/completions", json=completion("we ate", stream=True)).text
        )
        sampled = completion("service felt", temperature=0.9, seed=5)
        alone_sampled = http.post("/v1/completions", json=sampled).json()["choices"][0]["text"]
        results: dict = {}

        def send(key, body):
            with httpx.Client(base_url=server.url, timeout=60) as client:
                results[key] = client.post("/v1/completions", json=body)

        requests = {
            "plain": completion("the room was"),
            "stream": completion("we ate", stream=True),
            "sampled": sampled,
            "broken": completion("the food", steering="broken"),
            "broken_stream": completion("the food", stream=True, steering="broken"),
        }
        threads = [threading.Thread(target=send, args=item) for item in requests.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results["plain"].json()["choices"][0]["text"] == alone_plain
        assert streamed_text(results["stream"].text) == alone_stream
        assert results["sampled"].json()["choices"][0]["text"] == alone_sampled
        broken = results["broken"]
        assert broken.status_code == 400
        assert broken.json()["error"]["code"] == "steering_overflow"
        assert broken.json()["error"]["type"] == "invalid_request_error"
        stream_errors = [e["error"] for e in events_of(results["broken_stream"].text) if "error" in e]
        assert [e["code"] for e in stream_errors] == ["steering_overflow"]
        assert results["broken_stream"].text.rstrip().endswith("data: [DONE]")


def test_a_composition_past_float32_is_a_400_not_a_500(server):
    from serving_server import httpx

    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = completion("the food")
        body["steering"] = [{"vector": "huge", "strength": 10}]
        response = http.post("/v1/completions", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("invalid_strength", "steering"), error
        assert "finite" in error["message"]
        assert http.get("/health").status_code == 200


# -- sampling: all 64 bits of a seed; no temperature makes a finite row NaN ------------------


def test_seeds_differ_in_every_bit():
    from icv.serving.sampling import next_tokens, row_generator

    logits = torch.zeros(1, 1000)  # uniform: any difference in the generator shows
    params = [SamplingParams(temperature=1.0, seed=s) for s in (0, 2**32, 2**63, -1, 2**64 - 1)]
    draws = [
        tuple(next_tokens(logits, [p], [row_generator(p)]) + [row_generator(p).random()]) for p in params
    ]
    assert len(set(draws[:3])) == 3  # 0, 2**32 and 2**63 are different seeds
    assert draws[3] == draws[4]  # -1 is 2**64 - 1 in two's complement
    again = SamplingParams(temperature=1.0, seed=2**32)
    assert next_tokens(logits, [again], [row_generator(again)]) == list(draws[1][:1])


def test_a_tiny_temperature_is_the_argmax_not_nan():
    from icv.serving.sampling import distribution, next_tokens, row_generator

    logits = torch.tensor([[1.0, 3.0, -2.0, 2.9]])
    cold = SamplingParams(temperature=1e-300, seed=1)
    assert distribution(logits[0], cold).tolist() == [0.0, 1.0, 0.0, 0.0]
    assert next_tokens(logits, [cold], [row_generator(cold)]) == [1]
