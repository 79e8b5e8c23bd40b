"""The server on the embedded SmolLM2: real steering through the official openai client.

Requests sent together (so they share batches) each get, token for token, the
greedy text that ``icv.steer`` + ``model.generate`` give for them alone, for several
vectors, strengths, positions, an additive vector, a composition and no steering.
Also ``icv serve`` itself, started as a user starts it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from serving_server import (
    REVIEW_DEMOS,
    BackgroundServer,
    free_port,
    httpx,
    interrupt,
    library_from,
    save_vectors,
    start_icv_serve,
    wait_idle,
    wait_until_healthy,
)

import icv
from icv.prompts import paraphrase_prompt
from icv.steer import default_strength_for

openai = pytest.importorskip(
    "openai", reason="the client tests need the official openai package (the 'test' extra)"
)

pytestmark = pytest.mark.real_model

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
NEW = 12
DEMOS = REVIEW_DEMOS


@pytest.fixture(scope="module")
def vectors(real, tmp_path_factory):
    model, tok = real
    folder = tmp_path_factory.mktemp("real-vectors")
    return folder, save_vectors(model, tok, DEMOS, folder)


def generate_alone(model, tok, prompt: str, vector=None, strength=None, positions="all", special=True) -> str:
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=special)
    with torch.no_grad():
        if vector is None:
            out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
        else:
            with icv.steer(model, vector, strength, positions=positions):
                out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    return tok.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


SENTENCES = [
    "the waiter ignored us for an hour .",
    "the pizza was soggy and cold .",
    "our room smelled awful .",
    "the manager was rude and unhelpful .",
]


def test_requests_sent_together_each_get_what_icv_steer_gives_alone(real, vectors):
    model, tok = real
    _, v = vectors
    prompts = [paraphrase_prompt(s) for s in SENTENCES]
    # (prompt, steering field, positions, the same steering in Python)
    cases = [
        (prompts[0], None, None, dict()),
        (
            prompts[0],
            [{"vector": "positive", "strength": 0.07}],
            None,
            dict(vector=v["positive"], strength=0.07),
        ),
        (
            prompts[1],
            [{"vector": "positive", "strength": 0.07}],
            "generated",
            dict(vector=v["positive"], strength=0.07, positions="generated"),
        ),
        (
            prompts[2],
            [{"vector": "negative", "strength": 0.06}],
            "prompt",
            dict(vector=v["negative"], strength=0.06, positions="prompt"),
        ),
        (
            prompts[3],
            [{"vector": "positive_add"}],
            None,
            dict(vector=v["positive_add"]),
        ),  # its default strength
        (
            prompts[1],
            [{"vector": "positive", "strength": 0.05}, {"vector": "negative", "strength": -0.03}],
            None,
            dict(vector=v["positive"] * 0.05 + v["negative"] * -0.03, strength=1.0),
        ),
    ]
    want = [generate_alone(model, tok, prompt, **python) for prompt, _, _, python in cases]
    assert want[1] != want[0]  # case 0 is prompt 0 unsteered: the steering changes it (the test has teeth)

    with BackgroundServer(model, tok, library_from(vectors[0], model)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(case):
            prompt, steering, positions, _ = case
            extra = {} if steering is None else {"steering": steering}
            if positions is not None:
                extra["steering_positions"] = positions
            return client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=NEW, temperature=0, extra_body=extra
            )

        with ThreadPoolExecutor(len(cases)) as pool:
            responses = list(pool.map(ask, cases))
        wait_idle(server)
        assert server.engine.stats.peak_batch > 1  # they were batched
    for case, response, expected in zip(cases, responses, want, strict=True):
        assert response.choices[0].text == expected, case[1:3]
    assert responses[0].steering is None
    assert responses[2].steering == {
        "vectors": [{"vector": "positive", "strength": 0.07}],
        "positions": "generated",
    }
    assert responses[4].steering["vectors"] == [
        {"vector": "positive_add", "strength": default_strength_for(v["positive_add"])}
    ]


def test_chat_streaming_and_not_equal_generate_on_the_chat_template(real, vectors):
    model, tok = real
    _, v = vectors
    messages = [{"role": "user", "content": "Describe the hotel room in one sentence."}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = generate_alone(model, tok, rendered, v["positive"], 0.07, positions="generated", special=False)
    extra = {"steering": [{"vector": "positive", "strength": 0.07}], "steering_positions": "generated"}
    with BackgroundServer(model, tok, library_from(vectors[0], model)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        whole = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=NEW, temperature=0, extra_body=extra
        )
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=NEW, temperature=0, stream=True, extra_body=extra
            )
            if chunk.choices
        ]
    assert whole.choices[0].message.content == want == "".join(pieces)


# A loaded 2-core CI machine (other jobs, the rest of the suite) can take minutes to import torch,
# load the model and answer; the test waits that long rather than fail for it (it once did at 120 s).
STARTUP_SECONDS = 600
ANSWER_SECONDS = 600


def test_icv_serve_in_one_command(real, vectors, tmp_path):
    """``icv serve --vectors DIR`` as a user runs it: the openai client gets steered text; Ctrl-C stops it."""
    model, tok = real
    folder, v = vectors
    prompt = paraphrase_prompt(SENTENCES[0])
    want = generate_alone(model, tok, prompt, v["positive"], 0.07)
    port = free_port()
    log = tmp_path / "serve.log"
    process = start_icv_serve(["--vectors", str(folder), "--port", str(port)], log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, url, log, STARTUP_SECONDS)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=ANSWER_SECONDS)
        response = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=NEW,
            temperature=0,
            extra_body={"steering": [{"vector": "positive", "strength": 0.07}]},
        )
        assert response.choices[0].text == want
        page = httpx.get(f"{url}/", timeout=ANSWER_SECONDS)  # the playground, at the address it prints
        assert page.status_code == 200 and "icv playground" in page.text
    finally:
        interrupt(process)
    output = log.read_text()
    assert process.returncode == 0, output
    assert "vectors: negative, positive, positive_add" in output
    assert f"playground: http://127.0.0.1:{port}/ " in output
