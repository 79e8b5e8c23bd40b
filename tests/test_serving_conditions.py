"""Conditional steering in ``icv serve``: ``steering_when`` per request, conditions in the vector library.

A real server on a tiny llama (one token per character) serves a vector and a condition
file from one folder; each prompt's text equals ``icv.steer(..., when=condition)`` +
``generate`` on a second copy of the model, and each choice reports its decision.
"""

from __future__ import annotations

import pytest
import torch
from serving_server import BackgroundServer, httpx, library_from, save_vectors
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.errors import RequestError
from icv.serving.engine import BatchingPolicy

MATCHING = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa", "aa aaaa", "aaa", "ab aa", "aaaab"]
OTHER = ["zzz yy", "zz zzz", "z z z", "zzzzzz y", "yy zz", "zzz", "zy zz", "zzzzy"]
NEW = 8
STRENGTH = 1.0


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("served-conditions")
    loaded = save_vectors(tiny_model("llama"), tok, DEMOS, folder)
    cond = icv.extract_condition(tiny_model("llama"), tok, MATCHING, OTHER, name="letters")
    cond.save(folder / "a.safetensors")
    icv.extract_condition(tiny_model("qwen2"), tok, MATCHING, OTHER).save(folder / "qwen_cond.safetensors")
    return folder, loaded, cond


@pytest.fixture(scope="module")
def server(files, tok):
    folder, _, _ = files
    model = tiny_model("llama")
    library = library_from(folder, model)
    with BackgroundServer(
        model, tok, library, max_tokens=64, policy=BatchingPolicy(max_batch=8, gather_ms=2)
    ) as running:
        yield running
    assert not icv.is_steered(model)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def reference(tok, prompt, vector=None, when=None):
    """Greedy text by icv.steer (with ``when``) + generate on a fresh copy of the model."""
    model = tiny_model("llama")
    ids = torch.tensor([tok(prompt)["input_ids"]])
    options = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=NEW,
        do_sample=False,
        pad_token_id=0,
    )
    if vector is None:
        out = model.generate(**options)
    else:
        with icv.steer(model, vector, STRENGTH, when=when):
            out = model.generate(**options)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def body(prompt, when=None, **more):
    fields = {
        "prompt": prompt,
        "max_tokens": NEW,
        "temperature": 0,
        "steering": [{"vector": "positive_add", "strength": STRENGTH}],
    }
    if when is not None:
        fields["steering_when"] = when
    return {**fields, **more}


@pytest.mark.parametrize(
    "prompt,rule,steered", [("aaaa a", "a", True), ("zz zzzzzz", "a", False), ("zz zzzzzz", "~a", True)]
)
def test_each_prompt_gets_icv_steers_tokens_and_its_decision(http, files, tok, prompt, rule, steered):
    _, loaded, cond = files
    when = cond if rule == "a" else ~cond
    want = reference(tok, prompt, loaded["positive_add"], when)
    assert want == reference(tok, prompt, loaded["positive_add"] if steered else None)
    assert reference(tok, prompt, loaded["positive_add"]) != reference(tok, prompt)  # the test has teeth
    response = http.post("/v1/completions", json=body(prompt, rule)).json()
    choice = response["choices"][0]
    assert choice["text"] == want
    assert choice["steering_decision"]["steered"] is steered
    assert set(choice["steering_decision"]["scores"]) == {"letters"}
    assert response["steering"]["when"] == rule


def test_several_prompts_are_decided_each(http, files, tok):
    _, loaded, cond = files
    prompts = ["aaaa a", "zz zzzzzz", "aa"]
    response = http.post("/v1/completions", json=body(prompts, "a & ~(a & ~a)")).json()
    decisions = [c["steering_decision"]["steered"] for c in response["choices"]]
    assert decisions == [True, False, True]
    for prompt, choice in zip(prompts, response["choices"], strict=True):
        assert choice["text"] == reference(tok, prompt, loaded["positive_add"], cond)


def test_requests_without_a_rule_report_no_decision(http):
    response = http.post("/v1/completions", json=body("aaaa a")).json()
    assert "steering_decision" not in response["choices"][0]


@pytest.mark.parametrize(
    "fields,param,code",
    [
        ({"steering_when": "nothing"}, "steering_when", "condition_not_found"),
        ({"steering_when": "a &"}, "steering_when", "invalid_steering"),
        ({"steering_when": "a b"}, "steering_when", "invalid_steering"),
        ({"steering_when": "(a"}, "steering_when", "invalid_steering"),
        ({"steering_when": 3}, "steering_when", "invalid_steering"),
        ({"steering_when": "x" * 600}, "steering_when", "invalid_steering"),
        ({"steering_when": "qwen_cond"}, "steering_when", "vector_mismatch"),
        ({"steering_when": "positive"}, "steering_when", "condition_not_found"),
        ({"steering_when": "a", "steering": None}, "steering_when", "invalid_steering"),
    ],
)
def test_bad_rules_are_400s(http, server, fields, param, code):
    response = http.post("/v1/completions", json={**body("aaaa a"), **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code
    assert server.engine.idle


def test_the_vllm_plugin_refuses_rules_it_cannot_apply(files):
    http_module = pytest.importorskip("icv.serving.vllm.http")
    import json

    folder, _, _ = files
    library = library_from(folder, tiny_model("llama"))
    with pytest.raises(RequestError, match="no steering vectors"):
        http_module.rewrite(json.dumps(body("aaaa a", "a")).encode(), None)
    # an engine that may split prompts over steps cannot gate (tests/test_vllm_http.py: one that can)
    with pytest.raises(RequestError, match="cannot be served by this engine: chunked"):
        http_module.rewrite(json.dumps(body("aaaa a", "a")).encode(), library, "chunked prefill")
    with pytest.raises(RequestError, match="vector_mismatch|cannot decide for this model"):
        http_module.rewrite(json.dumps(body("aaaa a", "qwen_cond")).encode(), library, "")
    with pytest.raises(RequestError, match="give the 'steering' too"):
        http_module.rewrite(json.dumps({"prompt": "x", "steering_when": "a"}).encode(), None)


def test_a_stream_reports_the_decision_in_its_last_chunk(http, files, tok):
    import json

    _, loaded, cond = files
    with http.stream("POST", "/v1/completions", json=body("zz zzzzzz", "a", stream=True)) as response:
        lines = [
            line[6:] for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"
        ]
    chunks = [json.loads(line) for line in lines]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == reference(tok, "zz zzzzzz")
    assert chunks[-1]["choices"][0]["steering_decision"]["steered"] is False
    assert all("steering_decision" not in c["choices"][0] for c in chunks[:-1])


def test_the_vector_listing_names_the_conditions_apart_from_the_vectors(http, files):
    _, loaded, cond = files
    listing = http.get("/v1/vectors").json()
    assert {v["name"] for v in listing["data"]} == set(loaded)  # no condition among the vectors
    (served,) = listing["conditions"]
    assert served["name"] == "a" and served["kind"] == "condition"
    assert (served["layer"], served["threshold"], served["comparison"], served["positions"]) == (
        cond.layer,
        cond.threshold,
        cond.comparison,
        cond.positions,
    )
    assert served["f1"] == cond.f1 and served["metadata"]["name"] == "letters"
    assert "/" not in served["metadata"]["model_name"]  # no path of the server's disk
    assert any(u["name"] == "qwen_cond" for u in listing["unfit"])
