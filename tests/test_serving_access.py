"""Who may drive the server: the API key, the Host check, CORS, media types, writing routes, no paths shown.

Real uvicorn servers on 127.0.0.1 serve a tiny random llama; requests are sent as
an attacker or a client would send them (raw headers with httpx, the official
``openai`` client with ``api_key=``).
"""

from __future__ import annotations

import pytest
from serving_server import BackgroundServer, httpx, library_from, save_vectors
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.serving import access as access_module
from icv.serving.access import AccessPolicy, host_name
from icv.serving.app import ServerLimits
from icv.storage import to_bytes

openai = pytest.importorskip("openai", reason="the client tests need the official openai package")

KEY = "sk-test-0123456789"
OCTETS = {"content-type": "application/octet-stream"}
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("access-vectors")
    save_vectors(tiny_model("llama"), tok, DEMOS, folder)
    icv.extract(tiny_model("qwen2"), tok, DEMOS, progress=False).save(folder / "qwen.safetensors")
    return folder


def serving(folder, access: AccessPolicy | None = None, **limits) -> BackgroundServer:
    model = tiny_model("llama")
    return BackgroundServer(
        model,
        char_tokenizer(),
        library_from(folder, model),
        max_tokens=50,
        limits=ServerLimits(**limits),
        access=access,
    )


@pytest.fixture(scope="module")
def keyed(folder):
    with serving(folder, AccessPolicy(api_key=KEY), max_added_vectors=1) as running:
        yield running


@pytest.fixture(scope="module")
def open_server(folder):
    with serving(folder) as running:
        yield running


def authorized(key: str = KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def completion(**extra):
    return {"prompt": "the room", "max_tokens": 3, "temperature": 0, **extra}


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}, error
    return error["message"]


def vector_file(tok) -> bytes:
    return to_bytes(icv.extract(tiny_model("llama"), tok, DEMOS[:2], progress=False))


# -- the API key ---------------------------------------------------------------------------


def every_v1_route(server):
    """(method, path) of every /v1 route the application serves, placeholders filled in."""
    for route in server.app.routes:
        if route.path.startswith("/v1/"):
            for method in sorted(route.methods - {"HEAD"}):
                yield method, route.path.replace("{name}", "positive")


def test_every_v1_route_needs_the_key_and_health_and_the_page_do_not(keyed):
    routes = list(every_v1_route(keyed))
    assert {("POST", "/v1/completions"), ("DELETE", "/v1/vectors/positive")} <= set(routes)
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        for method, path in routes:
            for headers in (
                {},
                authorized("wrong"),
                {"authorization": KEY},
                {"authorization": "Basic " + KEY},
            ):
                response = http.request(method, path, headers=headers)
                error_of(response, 401, "invalid_api_key")
                assert response.headers["www-authenticate"] == "Bearer"
        assert http.get("/health").status_code == 200
        assert http.get("/").status_code == 200 and http.get("/playground.js").status_code == 200
        assert http.get("/v1/models", headers=authorized()).status_code == 200
        answered = http.post("/v1/completions", json=completion(), headers=authorized())
        assert answered.status_code == 200, answered.text


def test_the_openai_client_api_key_just_works(keyed):
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    answer = client.completions.create(model="tiny-llama", prompt="the room", max_tokens=3, temperature=0)
    assert answer.choices[0].text is not None and answer.usage.completion_tokens >= 1
    wrong = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_keys_are_compared_in_constant_time(monkeypatch):
    seen = []

    def spy(a, b):
        seen.append((a, b))
        return a == b

    monkeypatch.setattr(access_module.hmac, "compare_digest", spy)
    policy = AccessPolicy(api_key=KEY)
    assert policy.key_matches(f"Bearer {KEY}") and not policy.key_matches("Bearer x")
    assert seen == [(KEY.encode(), KEY.encode()), (b"x", KEY.encode())]


def test_with_a_key_writing_routes_work_on_any_address_and_room_is_freed_by_delete(folder, tok):
    data = vector_file(tok)
    policy = AccessPolicy(api_key=KEY, bound_host="0.0.0.0")
    with serving(folder, policy, max_added_vectors=1) as server, httpx.Client(base_url=server.url) as http:
        up = http.post(
            "/v1/vectors/upload", params={"name": "one"}, content=data, headers={**OCTETS, **authorized()}
        )
        assert up.status_code == 201, up.text
        second = http.post(
            "/v1/vectors/upload", params={"name": "two"}, content=data, headers={**OCTETS, **authorized()}
        )
        assert "--max-vectors" in error_of(second, 409, "too_many_vectors")
        gone = http.delete("/v1/vectors/one", headers=authorized())
        assert gone.json() == {"id": "one", "object": "vector", "deleted": True}
        again = http.post(
            "/v1/vectors/upload", params={"name": "two"}, content=data, headers={**OCTETS, **authorized()}
        )
        assert again.status_code == 201, again.text


# -- writing routes on a non-loopback address ---------------------------------------------


@pytest.mark.parametrize(
    "policy, writes",
    [
        (AccessPolicy(bound_host="0.0.0.0"), False),
        (AccessPolicy(bound_host="192.0.2.7"), False),
        (AccessPolicy(bound_host="0.0.0.0", allow_writes=True), True),
        (AccessPolicy(bound_host="localhost"), True),
        (AccessPolicy(bound_host="::1"), True),
    ],
)
def test_without_a_key_off_loopback_writing_routes_are_off_unless_allowed(folder, tok, policy, writes):
    """The policy says where the server is bound; the test server itself stays on 127.0.0.1."""
    assert policy.writes_on is writes
    assert any("OFF" in line for line in policy.describe()) is not writes
    with serving(folder, policy) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/v1/completions", json=completion()).status_code == 200  # reading is on
        made = http.post("/v1/vectors/extract", json={"name": "made", "pairs": DEMOS})
        up = http.post("/v1/vectors/upload", params={"name": "up"}, content=vector_file(tok), headers=OCTETS)
        if writes:
            assert made.status_code == 201 and up.status_code == 201
            assert http.delete("/v1/vectors/made").status_code == 200
        else:
            for response in (made, up, http.delete("/v1/vectors/positive")):
                assert "--allow-writes" in error_of(response, 403, "writes_disabled")
            assert {v["name"] for v in http.get("/v1/vectors").json()["data"]} == {
                "negative",
                "positive",
                "positive_add",
            }


def test_the_startup_message_says_plainly_that_writes_are_off(folder, capsys, monkeypatch):
    from icv.serving import command

    served = {}
    monkeypatch.setattr("icv.serving.server.serve", lambda *a, **kw: served.update(kw))
    monkeypatch.setattr("icv.models.load_model", lambda name: (tiny_model("llama"), char_tokenizer()))
    parser = __import__("argparse").ArgumentParser()
    command.add_serve_arguments(parser)
    args = parser.parse_args(
        ["--host", "0.0.0.0", "--vectors", str(folder), "--max-vectors", "7", "--prefill-chunk", "64"]
        + ["--max-text-tokens", "99", "--max-extractions", "3"]
    )
    assert command.run_serve(args) == 0
    said = capsys.readouterr().err
    assert "no API key" in said and "upload, extract, delete) are OFF" in said
    assert served["access"].writes_on is False and served["policy"].prefill_chunk == 64
    limits = served["limits"]
    assert (limits.max_added_vectors, limits.max_text_tokens, limits.max_extractions) == (7, 99, 3)
    monkeypatch.setenv("ICV_API_KEY", KEY)
    command.add_serve_arguments(parser := __import__("argparse").ArgumentParser())
    args = parser.parse_args(["--host", "0.0.0.0"])
    assert command.run_serve(args) == 0
    assert "OFF" not in capsys.readouterr().err and served["access"].api_key == KEY


# -- deleting ------------------------------------------------------------------------------------


def test_only_vectors_added_at_run_time_can_be_deleted(open_server, tok):
    with httpx.Client(base_url=open_server.url, timeout=60) as http:
        assert "loaded from a file" in error_of(
            http.delete("/v1/vectors/positive"), 403, "vector_not_deletable"
        )
        error_of(http.delete("/v1/vectors/qwen"), 403, "vector_not_deletable")
        error_of(http.delete("/v1/vectors/nowhere"), 404, "vector_not_found")
        up = http.post(
            "/v1/vectors/upload", params={"name": "temp"}, content=vector_file(tok), headers=OCTETS
        )
        assert up.json()["origin"] == "added"
        assert http.delete("/v1/vectors/temp").status_code == 200
        steered = http.post("/v1/completions", json=completion(steering={"vector": "temp"}))
        error_of(steered, 400, "vector_not_found")
        error_of(http.delete("/v1/vectors/temp"), 404, "vector_not_found")


# -- media types ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/vectors/extract"])
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_post_bodies_that_are_not_json_are_415(open_server, path, content_type):
    """What a page on another site can send without a preflight is refused before it is read."""
    headers = {} if content_type is None else {"content-type": content_type}
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        response = http.post(path, content=b'{"prompt": "hi", "max_tokens": 2}', headers=headers)
        assert "application/json" in error_of(response, 415, "invalid_content_type")
        ok = http.post(
            "/v1/completions",
            content=b'{"prompt": "hi", "max_tokens": 2}',
            headers={"content-type": "Application/JSON; charset=utf-8"},
        )
        assert ok.status_code == 200, ok.text


# -- the Host header -------------------------------------------------------------------------------


def test_host_names_other_than_the_servers_are_refused(open_server):
    port = open_server.port
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil", ""):
            for path in ("/health", "/v1/models", "/"):
                error_of(http.get(path, headers={"host": host}), 400, "invalid_host")
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "localhost."):
            assert http.get("/v1/models", headers={"host": host}).status_code == 200, host


def test_allowed_hosts_add_names_and_a_star_turns_the_check_off(folder):
    policy = AccessPolicy(allowed_hosts=("icv.lan",))
    assert policy.host_allowed("icv.lan:8000", None) and not policy.host_allowed("other.lan", None)
    assert policy.host_allowed("10.0.0.5:8000", "10.0.0.5")  # the address the client reached
    assert AccessPolicy(allowed_hosts=("*",)).host_allowed("anything", None)
    assert not AccessPolicy(bound_host="0.0.0.0").host_allowed("0.0.0.0", None)
    assert [host_name(h) for h in ("[::1]:80", "a.b:1", "fe80::1", "X.Y.")] == [
        "::1",
        "a.b",
        "fe80::1",
        "x.y",
    ]
    with serving(folder, policy) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/models", headers={"host": "icv.lan"}).status_code == 200
        error_of(http.get("/v1/models", headers={"host": "other.lan"}), 400, "invalid_host")


# -- cross-origin requests -------------------------------------------------------------------------


def preflight(http, origin: str, headers: str = "authorization, content-type"):
    return http.options(
        "/v1/completions",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": headers,
        },
    )


def test_no_cors_headers_unless_origins_are_allowed(open_server):
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        answer = http.get("/v1/models", headers={"origin": ORIGIN})
        assert answer.status_code == 200 and not any(h.startswith("access-control-") for h in answer.headers)
        refused = preflight(http, ORIGIN)
        assert refused.status_code == 405 and "access-control-allow-origin" not in refused.headers


def test_allowed_origins_get_proper_preflights_even_with_a_key(folder):
    policy = AccessPolicy(api_key=KEY, allowed_origins=(ORIGIN,))
    with serving(folder, policy) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        granted = preflight(http, ORIGIN)
        assert granted.status_code == 200, granted.text
        assert granted.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in granted.headers["access-control-allow-headers"].lower()
        assert "POST" in granted.headers["access-control-allow-methods"]
        other = preflight(http, "https://evil.example")
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        answer = http.post("/v1/completions", json=completion(), headers={"origin": ORIGIN, **authorized()})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
        elsewhere = http.get("/v1/models", headers={"origin": "https://evil.example", **authorized()})
        assert "access-control-allow-origin" not in elsewhere.headers
        error_of(http.get("/v1/models", headers={"origin": ORIGIN}), 401, "invalid_api_key")


# -- no server paths ------------------------------------------------------------------------------------


def test_the_vector_list_shows_no_server_path(open_server, folder):
    with httpx.Client(base_url=open_server.url, timeout=30) as http:
        listed = http.get("/v1/vectors")
        steered = http.post("/v1/completions", json=completion(steering={"vector": "qwen"}))
    assert str(folder) not in listed.text and str(folder) not in steered.text
    assert folder.name not in listed.text
    described = listed.json()["data"]
    assert all("file" not in v and v["origin"] == "file" for v in described)
    assert [u["name"] for u in listed.json()["unfit"]] == ["qwen"]
    error_of(steered, 400, "vector_mismatch")


def test_the_vllm_engine_gets_the_key_in_its_environment_not_its_command_line(monkeypatch):
    import argparse

    from icv.serving import command
    from icv.serving.vllm import launch

    monkeypatch.setattr(launch, "command", lambda *a, **kw: (["vllm", "serve"], {"PATH": "/bin"}))
    monkeypatch.delenv("ICV_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    command.add_serve_arguments(parser)
    argv, env = command.vllm_command(parser.parse_args(["--engine", "vllm", "--api-key", KEY]))
    assert env["VLLM_API_KEY"] == KEY and KEY not in " ".join(argv)
    with pytest.raises(SystemExit):
        parser.parse_args(["--api-key", "has space"])
    _, env = command.vllm_command(parser.parse_args(["--engine", "vllm"]))
    assert "VLLM_API_KEY" not in env
