"""The server's sampled tokens follow the request's temperature, top_p and seed.

On a tiny llama whose output layer is scaled up (so its next-token distribution is
peaked and temperature visibly reshapes it): through the engine, the first sampled
token's frequencies over many seeds match ``softmax(logits / temperature)`` cut to the
``top_p`` nucleus, and not the distribution of another temperature; through the HTTP
server, a near-zero temperature and a one-token ``top_p`` give the greedy text, a high
temperature does not, and the same seed gives the same text.
"""

from __future__ import annotations

import pytest
import torch
from serving_server import httpx, library_from, save_vectors
from test_serving_engine import Listener
from tiny import DEMOS, char_tokenizer, tiny_model

from icv.serving.engine import BatchingPolicy, Engine
from icv.serving.sampling import SamplingParams, nucleus
from icv.serving.server import BackgroundServer

PROMPT = "the room was"
DRAWS = 400
SHARPEN = 12.0  # the output layer's scale: logits spread over ~10, so temperature matters


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def peaked_model():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    return model


@pytest.fixture(scope="module")
def model():
    return peaked_model()


def _next_token_probs(model, tok, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([tok(PROMPT)["input_ids"]])).logits[0, -1].double()
    probs = nucleus(torch.softmax(logits / temperature, dim=-1), top_p)
    return probs / probs.sum()


def _first_tokens(model, tok, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Frequencies of the first sampled token over DRAWS seeds, through the engine."""
    engine = Engine(model, tok, policy=BatchingPolicy(max_batch=64, max_queue=DRAWS))
    try:
        listeners = []
        for seed in range(DRAWS):
            listener = Listener()
            params = SamplingParams(
                max_tokens=1, temperature=temperature, top_p=top_p, seed=seed, ignore_eos=True
            )
            engine.submit(tok(PROMPT)["input_ids"], params, None, listener)
            listeners.append(listener)
        tokens = [listener.result()[0].token_ids[0] for listener in listeners]
    finally:
        engine.close()
    counts = torch.bincount(torch.tensor(tokens), minlength=model.config.vocab_size).double()
    return counts / counts.sum()


def _distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total variation distance."""
    return float((p - q).abs().sum() / 2)


def _log_likelihood(seen: torch.Tensor, probs: torch.Tensor) -> float:
    """Mean log-probability of the drawn tokens under ``probs`` (highest under the true distribution)."""
    return float((seen * probs.clamp_min(1e-300).log()).sum())


def _within_sampling_error(frequency: float, p: float) -> bool:
    return abs(frequency - p) < 4 * (p * (1 - p) / DRAWS) ** 0.5 + 1e-9


@pytest.mark.parametrize("temperature, other", [(0.7, 2.0), (2.0, 0.7)])
def test_sampled_frequencies_follow_the_temperature(model, tok, temperature, other):
    seen = _first_tokens(model, tok, temperature)
    right, wrong = _next_token_probs(model, tok, temperature), _next_token_probs(model, tok, other)
    assert _distance(right, wrong) > 0.3, "the two temperatures must differ measurably on this model"
    assert _log_likelihood(seen, right) > _log_likelihood(seen, wrong) + 0.2
    top = int(right.argmax())
    assert _within_sampling_error(float(seen[top]), float(right[top]))
    assert not _within_sampling_error(float(seen[top]), float(wrong[top]))


def test_sampled_tokens_stay_in_the_top_p_nucleus_with_its_frequencies(model, tok):
    top_p = 0.4
    seen = _first_tokens(model, tok, 1.0, top_p)
    nucleus_probs = _next_token_probs(model, tok, 1.0, top_p)
    full = _next_token_probs(model, tok, 1.0)
    kept = nucleus_probs > 0
    assert 1 < int(kept.sum()) < 10, "the nucleus should keep a few tokens, not one nor all"
    assert float(seen[~kept].sum()) == 0.0
    for token in kept.nonzero().flatten().tolist():
        assert _within_sampling_error(float(seen[token]), float(nucleus_probs[token])), token
    top = int(full.argmax())
    assert not _within_sampling_error(float(seen[top]), float(full[top])), "renormalised over the nucleus"


# -- through HTTP ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("sampling-vectors")
    save_vectors(tiny_model("llama"), tok, DEMOS, folder)
    served = peaked_model()
    with BackgroundServer(served, tok, library_from(folder, served), max_tokens=64) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client


def complete(http, **fields) -> str:
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 12, "ignore_eos": True, **fields}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def test_near_zero_temperature_and_one_token_top_p_are_greedy(http):
    greedy = complete(http, temperature=0)
    for seed in range(3):
        assert complete(http, temperature=1e-4, seed=seed) == greedy
        assert complete(http, temperature=1.5, top_p=1e-4, seed=seed) == greedy


def test_a_high_temperature_departs_from_greedy_and_a_seed_repeats(http):
    greedy = complete(http, temperature=0)
    hot = [complete(http, temperature=2.0, seed=seed) for seed in range(4)]
    assert all(text != greedy for text in hot)
    assert len(set(hot)) == len(hot)
    assert [complete(http, temperature=2.0, seed=seed) for seed in range(4)] == hot
