"""The playground page in a real headless Chromium, on a real server with the embedded SmolLM2.

The page is driven as a user drives it (clicks, keys, files) and checked against the
HTTP API it is built on: the columns hold, token for token, what the API returns for
the very requests the page sent; a vector built from typed pairs downloads as a file
that loads; bad input shows a message; Stop frees the server's rows.  The page may
reach its own server only (no asset from the internet).

``ICV_PLAYGROUND_SCREENSHOT=docs/img/playground.png`` also saves the screenshot the
serving page of the docs shows.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from browser import LocalOnly, launch, sync_playwright
from serving_server import REVIEW_DEMOS, BackgroundServer, httpx, library_from, wait_idle

import icv
from icv.gguf import import_gguf
from icv.prompts import paraphrase_prompt
from icv.serving.access import AccessPolicy
from icv.serving.app import ServerLimits

pytestmark = pytest.mark.real_model

SCREENSHOT_ENV = "ICV_PLAYGROUND_SCREENSHOT"
SENTENCE = "the food was cold and the waiter was rude ."
UPLOAD_LIMIT = 1 << 20
PAIRS = REVIEW_DEMOS


@pytest.fixture(scope="module")
def folder(real, tmp_path_factory):
    """The served vector files: 'positive' and 'negative' from the review pairs."""
    model, tok = real
    folder = tmp_path_factory.mktemp("playground-vectors")
    icv.extract(model, tok, PAIRS, name="positive", progress=False).save(folder / "positive.safetensors")
    icv.extract(model, tok, [(t, s) for s, t in PAIRS], name="negative", progress=False).save(
        folder / "negative.safetensors"
    )
    return folder


@pytest.fixture(scope="module")
def server(real, folder):
    model, tok = real
    limits = ServerLimits(max_upload_bytes=UPLOAD_LIMIT)
    with BackgroundServer(model, tok, library_from(folder, model), max_tokens=400, limits=limits) as running:
        yield running
    assert not icv.is_steered(model)


@pytest.fixture(scope="module")
def chromium():
    with sync_playwright()() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, server):
    """A fresh page on the playground, ready; afterwards, nothing was fetched from elsewhere."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    guard = LocalOnly("127.0.0.1")
    context.route("**/*", guard)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-ready=true]", timeout=30_000)
    yield page
    context.close()
    wait_idle(server)
    assert not errors, f"the page's script failed: {errors}"
    assert not guard.refused, f"the page asked for something outside its server: {guard.refused}"


def vector_row(page, name: str):
    return page.locator(f".vector[data-name='{name}']")


def wait_for_columns(page, timeout: float = 120_000) -> list[dict]:
    """Every column once it has ended (done, failed or stopped): its request, text, state and note."""
    page.wait_for_function(
        "() => { const c = [...document.querySelectorAll('.column')];"
        " return c.length && c.every(x => ['done', 'failed', 'stopped'].includes(x.dataset.state)); }",
        timeout=timeout,
    )
    return page.eval_on_selector_all(
        ".column",
        """columns => columns.map(c => ({
        path: c.dataset.path, body: JSON.parse(c.dataset.body), state: c.dataset.state,
        text: c.querySelector('.text').textContent, note: c.querySelector('.end').textContent}))""",
    )


def api_text(server, path: str, body: dict) -> str:
    """What the HTTP API answers to ``body`` sent alone, not streamed."""
    response = httpx.post(f"{server.url}{path}", json={**body, "stream": False}, timeout=120)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def test_columns_hold_what_the_api_returns_for_the_same_requests(page, server, tmp_path):
    listed = {v["name"]: v for v in httpx.get(f"{server.url}/v1/vectors").json()["data"]}
    assert page.locator("#model").inner_text() == httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
    assert page.locator("#prompt-sent").text_content() == paraphrase_prompt(SENTENCE)
    row = vector_row(page, "positive")
    default = float(row.locator(".strength").input_value())
    assert default == pytest.approx(listed["positive"]["default_strength"], rel=1e-3)
    assert row.locator(".default").inner_text() == f"default {default:g}"  # the slider's mark, named
    row.locator(".slider").focus()
    for _ in range(25):
        page.keyboard.press("ArrowRight")  # the slider's step is 1/100 of the default strength
    moved = float(row.locator(".strength").input_value())
    assert moved == pytest.approx(default * 1.25, rel=0.02)
    assert row.locator("input[type=checkbox]").is_checked()  # moving a slider chooses its vector
    page.fill("#max-tokens", "32")
    page.click("#generate")
    columns = wait_for_columns(page)

    assert [c["state"] for c in columns] == ["done"] * 5, columns
    assert columns[0]["body"].get("steering") is None
    strengths = [c["body"]["steering"][0]["strength"] for c in columns[1:]]
    assert strengths == pytest.approx([moved * s for s in (0.5, 1, 1.5, 2)], rel=1e-3)
    for column in columns:
        assert column["text"] == api_text(server, column["path"], column["body"])
    assert len({c["text"] for c in columns}) > 1  # the steering changed something: the comparison has teeth

    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    if os.environ.get(SCREENSHOT_ENV):
        page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)


def test_a_vector_built_from_typed_pairs_is_served_and_downloads(page, server, tmp_path):
    rows = page.locator("#pairs tbody tr")
    for i, (source, target) in enumerate(PAIRS[:2]):
        rows.nth(i).locator(".source").fill(source)
        rows.nth(i).locator(".target").fill(target)
    page.fill("#new-name", "typed")
    page.click("#extract")
    page.wait_for_selector("#build-message.ok", timeout=60_000)
    assert vector_row(page, "typed").count() == 1

    with page.expect_download() as download:
        page.click("#download-safetensors")
    saved = tmp_path / "typed.safetensors"
    download.value.save_as(saved)
    assert download.value.suggested_filename == "typed.safetensors"
    vector = icv.InContextVector.load(saved)
    assert vector.name == "typed" and vector.metadata["num_demos"] == 2
    model, tok = server.engine.model, server.engine.tokenizer
    wait_idle(server)
    assert vector.equal(icv.extract(model, tok, PAIRS[:2], name="typed", progress=False))

    with page.expect_download() as download:
        page.click("#download-gguf")
    download.value.save_as(tmp_path / "typed.gguf")
    imported = import_gguf(tmp_path / "typed.gguf")
    assert imported.num_layers == vector.num_layers


def test_bad_input_gets_a_visible_message(page, server):
    # A hostile vector file: the server's loader refuses it and the page says why.
    page.set_input_files(
        "#vector-file",
        files=[
            {
                "name": "evil.safetensors",
                "mimeType": "application/octet-stream",
                "buffer": (10**9).to_bytes(8, "little") + b"{}",
            }
        ],
    )
    page.wait_for_selector("#vector-message.error")
    assert "evil.safetensors" in page.locator("#vector-message").inner_text()
    assert "evil" not in {v["name"] for v in httpx.get(f"{server.url}/v1/vectors").json()["data"]}
    # A file larger than the server takes is refused before it is sent.
    page.set_input_files(
        "#vector-file",
        files=[
            {
                "name": "huge.safetensors",
                "mimeType": "application/octet-stream",
                "buffer": b"\0" * (UPLOAD_LIMIT + 1),
            }
        ],
    )
    page.wait_for_function("() => document.querySelector('#vector-message').textContent.includes('huge')")
    assert "takes files up to" in page.locator("#vector-message").inner_text()
    # A pair file that does not parse: the library's reader names the line.
    page.set_input_files(
        "#pairs-file",
        files=[
            {
                "name": "pairs.jsonl",
                "mimeType": "application/octet-stream",
                "buffer": b'{"source": "a", "target": "b"}\n{"source": oops}\n',
            }
        ],
    )
    page.wait_for_selector("#build-message.error")
    assert "pairs.jsonl:2" in page.locator("#build-message").inner_text()
    # A strength out of range: every steered column fails with the server's message; the unsteered one runs.
    page.fill("#max-tokens", "4")
    page.fill("#scales", "1")
    vector_row(page, "negative").locator(".strength").fill("50")
    page.click("#generate")
    columns = wait_for_columns(page)
    assert [c["state"] for c in columns] == ["done", "failed"]
    assert "between -10 and 10" in columns[1]["note"]


def test_a_shared_address_naming_an_unknown_vector_says_so(page, server):
    view = {
        "format": "text",
        "prompt": "Hello",
        "vectors": [["nowhere", 0.05]],
        "scales": "1",
        "max_tokens": 4,
    }
    page.goto(f"{server.url}/#{json.dumps(view)}")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert vector_row(page, "nowhere").locator(".default").inner_text() == "not loaded on this server"
    page.click("#generate")
    columns = wait_for_columns(page)
    assert columns[1]["state"] == "failed" and "no vector named 'nowhere'" in columns[1]["note"]


def test_stop_ends_the_generation_on_the_server(page, server):
    before = server.engine.stats.snapshot()
    page.fill("#max-tokens", "400")
    page.fill("#scales", "1, 2")
    # A text the model goes on with for hundreds of tokens unsteered too ("Write a long story
    # about a dragon." as free text ends at once, so its column could finish before Stop).
    page.fill("#prompt", "Once upon a time, in a land far away, there lived a dragon who")
    page.check("input[name=format][value=text]")
    vector_row(page, "positive").locator("input[type=checkbox]").check()
    page.click("#generate")
    page.wait_for_function(
        "() => document.querySelector('.column').dataset.state !== 'waiting'", timeout=60_000
    )
    page.click("#stop")
    columns = wait_for_columns(page, timeout=10_000)
    assert [c["state"] for c in columns] == ["stopped"] * 3
    deadline = time.monotonic() + 10
    while not server.engine.idle:
        assert time.monotonic() < deadline, "the server kept generating after Stop"
        time.sleep(0.05)
    after = server.engine.stats.snapshot()
    assert after["cancelled"] - before["cancelled"] == 3
    assert after["generated_tokens"] - before["generated_tokens"] < 3 * 400 / 2


# -- a server with an API key ----------------------------------------------------------------------

KEY = "sk-playground-test"


@pytest.fixture
def keyed_server(real, folder, server):
    """The same model and vectors behind an API key.

    A second engine on the shared model: safe while the first is idle (``wait_idle``),
    as it is for this test's whole length.
    """
    wait_idle(server)
    model, tok = real
    with BackgroundServer(
        model,
        tok,
        library_from(folder, model),
        max_tokens=400,
        access=AccessPolicy(api_key=KEY),
    ) as running:
        yield running


def test_a_keyed_server_asks_once_and_every_call_carries_the_key(chromium, keyed_server, server, tmp_path):
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    guard = LocalOnly("127.0.0.1")
    context.route("**/*", guard)
    sent: list[tuple[str, str | None]] = []
    page = context.new_page()
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{keyed_server.url}/")
        page.wait_for_selector("#key-box:not([hidden])", timeout=30_000)
        page.fill("#api-key", "wrong")
        page.click("#use-key")
        page.wait_for_selector("#key-box:not([hidden])")  # refused: asked again
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert page.evaluate("sessionStorage.getItem('icv-api-key')") == KEY
        page.fill("#max-tokens", "4")
        page.fill("#scales", "1")
        vector_row(page, "positive").locator("input[type=checkbox]").check()
        page.click("#generate")
        columns = wait_for_columns(page)
        assert [c["state"] for c in columns] == ["done", "done"]
        with page.expect_download() as download:
            vector_row(page, "positive").locator("a.safetensors").click()
        download.value.save_as(tmp_path / "positive.safetensors")
        assert icv.InContextVector.load(tmp_path / "positive.safetensors").name == "positive"
        page.reload()  # the same tab: the key is remembered, not asked again
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert page.locator("#key-box").is_hidden()
    finally:
        context.close()
    wait_idle(keyed_server)
    api_calls = [(url, auth) for url, auth in sent if "/v1/" in url]
    assert api_calls and all(auth in (f"Bearer {KEY}", "Bearer wrong") for _, auth in api_calls[1:])
    assert api_calls[-1][1] == f"Bearer {KEY}"
    assert not errors and not guard.refused
