"""The playground page's files and settings, over HTTP (the page itself runs in test_playground_browser.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources

import pytest
from serving_server import BackgroundServer, httpx
from tiny import char_tokenizer, tiny_model

from icv.prompts import cut_answer, paraphrase_prompt
from icv.serving import ModelShape, VectorLibrary
from icv.serving.app import ServerLimits
from icv.serving.page import PATHS, STATIC_FILES


@pytest.fixture(scope="module")
def server():
    model = tiny_model("llama")
    limits = ServerLimits(max_upload_bytes=12345, max_pairs=7)
    with BackgroundServer(
        model, char_tokenizer(), VectorLibrary(ModelShape.of(model)), max_tokens=99, limits=limits
    ) as running:
        yield running


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def test_the_package_ships_the_page_as_three_plain_files():
    shipped = {
        p.name for p in (resources.files("icv.serving") / "static").iterdir() if not p.name.startswith(".")
    }
    assert shipped == set(STATIC_FILES) == set(PATHS.values())


def test_the_page_loads_its_script_and_stylesheet_from_this_server_only(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert re.findall(r'(?:src|href)="([^"#]+)"', page.text) == ["playground.css", "playground.js"]
    for path, name in PATHS.items():
        served = http.get(path)
        assert served.status_code == 200 and served.headers["content-type"] == STATIC_FILES[name]
        assert served.headers["x-content-type-options"] == "nosniff"
        assert not re.search(r"https?://|//cdn|@import", served.text), f"{name} reaches outside its server"
    assert (
        "<script>" not in page.text and " on" + "click=" not in page.text
    )  # the policy forbids inline script


def test_the_settings_give_the_librarys_prompt_format_and_the_servers_limits(http):
    settings = http.get("/v1/playground").json()
    paraphrase = settings["prompt_formats"]["paraphrase"]
    sentence = "the soup was cold ."
    assert paraphrase["before"] + sentence + paraphrase["after"] == paraphrase_prompt(sentence)
    answer = 'The soup was warm." And then\nmore'
    cut = min(answer.index(end) for end in paraphrase["stop"])
    assert answer[:cut] == cut_answer(answer)  # the page stops where the library cuts
    assert settings["model"] == "tiny-llama" and settings["chat"] is True
    assert settings["limits"] == {
        "max_tokens": 99,
        "max_strength": 10.0,
        "max_vectors": 8,
        "max_upload_bytes": 12345,
        "max_pairs": 7,
    }


def test_unknown_paths_get_the_error_shape(http):
    response = http.get("/playground.py")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def _script_function(name: str) -> str:
    script = (resources.files("icv.serving") / "static" / "playground.js").read_text()
    found = re.search(rf"^function {name}\(.*?^}}\n", script, flags=re.S | re.M)
    assert found, f"playground.js has no function {name}"
    return found.group(0)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_a_column_shows_whether_the_condition_fired_from_the_response():
    """The page's own decisionNote on what the server's steering_decision holds, run by node."""
    program = _script_function("decisionNote") + (
        "console.log(JSON.stringify(["
        "decisionNote({steered: true, scores: {toxic: 0.12345}}),"
        "decisionNote({steered: false, scores: {toxic: -0.5, question: 0.25}}),"
        "decisionNote(null)]));"
    )
    shown = json.loads(
        subprocess.run(["node", "-e", program], capture_output=True, text=True, check=True).stdout
    )
    assert shown == [
        "condition fired: steered (score toxic 0.123)",
        "condition did not fire: unsteered (score toxic -0.500, question 0.250)",
        "",
    ]
    script = (resources.files("icv.serving") / "static" / "playground.js").read_text()
    # The rule goes with the steered columns' requests; the decision is read from each choice.
    assert "body.steering_when = when" in script and "choice.steering_decision" in script
    page = (resources.files("icv.serving") / "static" / "index.html").read_text()
    assert 'id="when"' in page and 'list="conditions"' in page and '<p class="decision" hidden>' in page
