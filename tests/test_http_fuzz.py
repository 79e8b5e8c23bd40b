"""The HTTP API fuzzed as a client would: no body, query or header a client sends gets a 5xx.

Hypothesis generates request bodies for every route: arbitrary JSON (deep, wide, huge
numbers, NaN, lone surrogates), objects built from each route's own field names with
arbitrary and near-valid values, and raw bytes with any content type.  Each response
must be below 500 and, when it is an error, in OpenAI's shape; the server must answer
``/health`` afterwards.

The suite runs a bounded amount (``ICV_FUZZ_EXAMPLES`` examples per route, default 25:
a few seconds each).  Before a release, run it longer:
``ICV_FUZZ_EXAMPLES=2000 pytest tests/test_http_fuzz.py`` (docs/reliability.md).
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
from serving_server import BackgroundServer, httpx
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.serving import ModelShape, VectorLibrary
from icv.serving.http import ServerLimits
from icv.serving.protocol import CHAT, COMPLETIONS, FIELDS as REQUEST_FIELDS
from icv.storage import to_bytes

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,  # noqa: E402
)

EXAMPLES = int(os.environ.get("ICV_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=EXAMPLES <= 25,  # the suite's runs are reproducible; long runs explore
)

# Text with everything a client can put in a JSON string: surrogates, controls, any plane.
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24) | st.sampled_from(
    ["", "ab", "the room was", "\ud800", "\x00", "positive", "../x", "a" * 300]
)
NUMBERS = st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)

# Every field the request table (icv.serving.protocol.FIELDS) gives each route, those the server
# accepts only at their neutral value included: the table is the one place fields are named.
FIELDS = {
    "/v1/completions": [f.name for f in REQUEST_FIELDS if COMPLETIONS in f.routes],
    "/v1/chat/completions": [f.name for f in REQUEST_FIELDS if CHAT in f.routes],
    "/v1/vectors/extract": ["name", "pairs"],
}
# Values that are valid or one step from it, so the fuzzer reaches past the first check.
NEAR = {
    "prompt": st.sampled_from(["ab", ["ab", "cd"], [1, 2, 3], [[1], [2, 3]], [], [-1], [10**9]]) | TEXT,
    "messages": st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "system", "assistant", "tool", "robot"]),
                "content": TEXT | JSON,
            }
        ),
        max_size=3,
    ),
    "max_tokens": st.integers(-2, 6) | st.sampled_from([2**63, 10**30]),
    "max_completion_tokens": st.integers(-2, 6),
    "temperature": st.floats(-1, 3) | st.sampled_from([0, 1e-300, 2]),
    "top_p": st.floats(-0.5, 1.5),
    "seed": st.integers(-(2**65), 2**65),
    "stream": st.booleans(),
    "stream_options": st.sampled_from([{"include_usage": True}, {"include_usage": 1}, {}, {"x": 1}]),
    "steering": st.sampled_from(
        [
            [{"vector": "positive", "strength": 0.5}],
            {"vector": "positive"},
            [{"vector": "positive", "strength": 10}],
            [{"vector": "missing"}],
            [{"vector": "positive", "strength": 1e308}],
        ]
    ),
    "steering_positions": st.sampled_from(["all", "prompt", "generated", "last"]),
    "stop": st.sampled_from(["a", ["a", "b"], [""], ["a"] * 5]) | TEXT,
    "name": st.sampled_from(["fz", "fz-1", "positive", "", "../up", "a" * 80]) | TEXT,
    "pairs": st.lists(st.tuples(TEXT, TEXT).map(list), max_size=3) | JSON,
}


def route_body(route: str):
    """A JSON object of the route's own field names, each with a near-valid or an arbitrary value."""
    fields = FIELDS[route]
    value = {name: (NEAR[name] | JSON) if name in NEAR else JSON for name in fields}
    return st.fixed_dictionaries({}, optional=value)


@pytest.fixture(scope="module")
def server():
    model = tiny_model("llama")
    tok = char_tokenizer()
    library = VectorLibrary(ModelShape.of(model))
    library.add("positive", icv.extract(model, tok, DEMOS, name="positive", progress=False))
    limits = ServerLimits(max_body_bytes=64 * 1024, max_upload_bytes=64 * 1024, max_pairs=4)
    with BackgroundServer(model, tok, library, max_tokens=6, limits=limits) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
        assert client.get("/health").status_code == 200, "the server did not survive the fuzzing"


def check(response) -> None:
    """Below 500, and an error (if it is one) in OpenAI's shape."""
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400 and response.status_code != 499:
        error = json.loads(response.text)["error"]
        assert {"message", "type", "param", "code"} <= set(error), error


def post(http, route: str, body: bytes, content_type: str = "application/json", **params):
    # Percent-encoded as a client must (surrogates as their WTF-8 bytes), so the server decodes them.
    query = "&".join(
        f"{key}={quote(value, safe='', errors='surrogatepass')}" for key, value in params.items()
    )
    url = f"{route}?{query}" if query else route
    return http.post(url, content=body, headers={"content-type": content_type})


def as_json(value) -> bytes:
    # Python's json writes NaN and Infinity, which its reader (the server's) accepts: send them.
    return json.dumps(value).encode()


@pytest.mark.parametrize("route", sorted(FIELDS))
def test_route_bodies_built_from_its_fields(http, route):
    @FUZZ
    @given(body=route_body(route))
    def run(body):
        check(post(http, route, as_json(body)))

    run()


@pytest.mark.parametrize("route", sorted(FIELDS))
def test_arbitrary_json_and_bytes(http, route):
    @FUZZ
    @given(
        body=JSON.map(as_json) | st.binary(max_size=64),
        content_type=st.sampled_from(
            ["application/json", "text/plain", "", "application/json; charset=latin-1"]
        ),
    )
    def run(body, content_type):
        check(post(http, route, body, content_type))

    run()


def test_uploads_and_pair_files(http, server):
    vector = to_bytes(icv.extract(server.engine.model, server.engine.tokenizer, DEMOS, progress=False))

    @FUZZ
    @given(
        data=st.binary(max_size=256)
        | st.sampled_from([vector, vector[:100], b"GGUF" + vector[4:], b"GGUF\x03"]),
        name=st.sampled_from(["up", "up-2", "positive"]) | TEXT,
        filename=st.sampled_from(["v.safetensors", "v.gguf", "p.jsonl", "p.csv", "p.tsv", "p.json", "x"])
        | TEXT,
    )
    def run(data, name, filename):
        check(
            post(http, "/v1/vectors/upload", data, "application/octet-stream", name=name, filename=filename)
        )
        check(post(http, "/v1/demos/parse", data, "application/octet-stream", filename=filename))

    run()


def test_pair_files_with_any_text(http):
    @FUZZ
    @given(
        rows=st.lists(st.tuples(TEXT, TEXT), max_size=4),
        kind=st.sampled_from(["jsonl", "json", "csv", "tsv"]),
    )
    def run(rows, kind):
        if kind == "jsonl":
            data = "\n".join(json.dumps({"source": s, "target": t}) for s, t in rows)
        elif kind == "json":
            data = json.dumps([[s, t] for s, t in rows])
        else:
            sep = "," if kind == "csv" else "\t"
            data = "\n".join(f"{s}{sep}{t}" for s, t in rows)
        body = data.encode("utf-8", errors="surrogatepass")
        check(post(http, "/v1/demos/parse", body, "application/octet-stream", filename=f"p.{kind}"))

    run()


def test_reading_routes_with_any_name_and_query(http):
    @FUZZ
    @given(name=TEXT, fmt=st.sampled_from(["safetensors", "gguf", "", "pdf"]) | TEXT)
    def run(name, fmt):
        quoted, query = (quote(text, safe="", errors="surrogatepass") for text in (name, fmt))
        check(http.get(f"/v1/vectors/{quoted or 'x'}/download?format={query}"))
        for path in ("/v1/models", "/v1/vectors", "/health"):
            check(http.get(f"{path}?q={quoted}"))

    run()
