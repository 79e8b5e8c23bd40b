"""Making and moving vectors over HTTP on a tiny model: extract, upload, download, read a pair file.

A real uvicorn server on 127.0.0.1 serves a tiny random llama.  Vectors the server
extracts are compared with :func:`icv.extract` on a second copy of the same model;
files it writes with what the library writes; bad input of every kind gets OpenAI's
error shape with a 4xx status, and leaves the served vectors as they were.
"""

from __future__ import annotations

import threading

import pytest
import torch
from serving_server import BackgroundServer, expected, httpx, library_from, save_vectors, wait_idle
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.demos import read_demos
from icv.gguf import export_gguf, import_gguf
from icv.serving import ModelShape, VectorLibrary
from icv.serving.app import ServerLimits
from icv.steer import default_strength_for
from icv.storage import to_bytes

UPLOAD_LIMIT = 64 * 1024
OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def reference():
    """A second copy of the served model: references never touch the model the server uses."""
    return tiny_model("llama")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok):
    """The served vector files' folder, and the vectors in them."""
    folder = tmp_path_factory.mktemp("route-vectors")
    return folder, save_vectors(tiny_model("llama"), tok, DEMOS, folder)


@pytest.fixture(scope="module")
def server(saved, tok):
    folder, _ = saved
    model = tiny_model("llama")
    limits = ServerLimits(max_upload_bytes=UPLOAD_LIMIT, max_pairs=8, max_added_vectors=1000)
    with BackgroundServer(model, tok, library_from(folder, model), max_tokens=400, limits=limits) as running:
        yield running
    assert not icv.is_steered(model)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


_count = iter(range(10**6))


def fresh(stem: str) -> str:
    """A name no other test uses (the server is shared and tests run in any order)."""
    return f"{stem}-{next(_count)}"


def names(http) -> set[str]:
    return {v["name"] for v in http.get("/v1/vectors").json()["data"]}


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    return error["message"]


def upload(http, name: str, data: bytes, filename: str = "v.safetensors"):
    return http.post(
        "/v1/vectors/upload", params={"name": name, "filename": filename}, content=data, headers=OCTETS
    )


# -- extract -----------------------------------------------------------------------------


def test_extract_serves_what_icv_extract_gives_and_it_steers(http, reference, tok, tmp_path):
    name = fresh("made")
    pairs = [{"source": s, "target": t} for s, t in DEMOS[:3]]
    response = http.post("/v1/vectors/extract", json={"name": name, "pairs": pairs})
    assert response.status_code == 201, response.text
    made = response.json()
    want = icv.extract(reference, tok, DEMOS[:3], name=name, progress=False)
    assert made["name"] == name and made["metadata"]["num_demos"] == 3 and made["object"] == "vector"
    assert made["default_strength"] == default_strength_for(want)
    assert name in names(http)
    got = http.post(
        "/v1/completions",
        json={
            "prompt": "the room",
            "max_tokens": 8,
            "temperature": 0,
            "steering": [{"vector": name, "strength": 1.5}],
        },
    )
    assert got.json()["choices"][0]["text"] == expected(reference, tok, "the room", [(want, 1.5)])
    downloaded = tmp_path / "made.safetensors"
    downloaded.write_bytes(http.get(f"/v1/vectors/{name}/download").content)
    assert icv.InContextVector.load(downloaded).equal(want)


def test_pairs_may_be_given_as_two_item_lists(http, reference, tok, tmp_path):
    name = fresh("lists")
    response = http.post("/v1/vectors/extract", json={"name": name, "pairs": [list(p) for p in DEMOS]})
    assert response.status_code == 201, response.text
    downloaded = tmp_path / "v.safetensors"
    downloaded.write_bytes(http.get(f"/v1/vectors/{name}/download").content)
    assert icv.InContextVector.load(downloaded).equal(
        icv.extract(reference, tok, DEMOS, name=name, progress=False)
    )


def test_extracting_while_rows_decode_changes_neither(server, saved, http, reference, tok, tmp_path):
    """The extraction runs on the engine's thread between steps: the stream and the vector are both exact."""
    steering = [{"vector": "positive", "strength": 1.5}]
    want_text = expected(reference, tok, "the food", [(saved[1]["positive"], 1.5)], new=150)
    texts: list[str] = []
    started = threading.Event()

    def stream():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            body = {
                "prompt": "the food",
                "max_tokens": 150,
                "temperature": 0,
                "stream": True,
                "steering": steering,
                "ignore_eos": True,
            }
            with client.stream("POST", "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    started.set()
                    if line.startswith("data: {"):
                        texts.extend(
                            c["text"] for c in httpx.Response(200, content=line[6:]).json()["choices"]
                        )

    tasks = server.engine.stats.tasks
    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(30)
    name = fresh("meanwhile")
    response = http.post("/v1/vectors/extract", json={"name": name, "pairs": [list(p) for p in DEMOS]})
    thread.join(60)
    assert response.status_code == 201
    assert server.engine.stats.tasks == tasks + 1
    assert "".join(texts) == want_text
    (tmp_path / "v.safetensors").write_bytes(http.get(f"/v1/vectors/{name}/download").content)
    assert icv.InContextVector.load(tmp_path / "v.safetensors").equal(
        icv.extract(reference, tok, DEMOS, name=name, progress=False)
    )
    wait_idle(server)


@pytest.mark.parametrize(
    "body, code, words",
    [
        ({"name": "x", "pairs": []}, "invalid_pairs", "non-empty list"),
        ({"name": "x", "pairs": "a,b"}, "invalid_pairs", "non-empty list"),
        ({"name": "x", "pairs": [["a", ""]]}, "invalid_pairs", "target is empty"),
        ({"name": "x", "pairs": [["a", "b", "c"]]}, "invalid_pairs", "pair"),
        ({"name": "x", "pairs": [["a", "b"]] * 9}, "too_many_pairs", "at most 8"),
        ({"name": "", "pairs": [["a", "b"]]}, "invalid_name", "letters, digits"),
        ({"name": "../etc/passwd", "pairs": [["a", "b"]]}, "invalid_name", "letters, digits"),
        ({"name": 7, "pairs": [["a", "b"]]}, "invalid_name", "letters, digits"),
        ({"name": "x", "pairs": [["a", "b"]], "method": "pca"}, "unknown_parameter", "method"),
    ],
)
def test_bad_extraction_requests_are_refused_and_add_nothing(http, body, code, words):
    before = names(http)
    message = error_of(http.post("/v1/vectors/extract", json=body), 400, code)
    assert words in message
    assert names(http) == before


def test_a_taken_name_is_refused_with_409(http):
    message = error_of(
        http.post("/v1/vectors/extract", json={"name": "positive", "pairs": DEMOS}), 409, "name_taken"
    )
    assert "already loaded" in message


def test_writing_routes_take_only_their_media_type(http):
    """A browser on another site cannot send these types without a preflight this server never grants."""
    form = http.post(
        "/v1/vectors/extract",
        content=b'{"name": "x", "pairs": [["a", "b"]]}',
        headers={"content-type": "text/plain"},
    )
    assert "application/json" in error_of(form, 415, "invalid_content_type")
    posted = http.post(
        "/v1/vectors/upload", params={"name": "x"}, content=b"x", headers={"content-type": "text/plain"}
    )
    error_of(posted, 415, "invalid_content_type")
    parsed = http.post("/v1/demos/parse", params={"filename": "p.csv"}, files={"f": b"a,b"})
    error_of(parsed, 415, "invalid_content_type")


# -- upload --------------------------------------------------------------------------------


def test_uploaded_safetensors_and_gguf_files_are_served(http, reference, tok, tmp_path):
    vector = icv.extract(reference, tok, DEMOS[:2], name="whatever", progress=False)
    name = fresh("up")
    response = upload(http, name, to_bytes(vector))
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name and name in names(http)
    with pytest.warns(UserWarning, match="block 0"):
        export_gguf(vector, tmp_path / "v.gguf")
    gguf_name = fresh("up-gguf")
    response = upload(http, gguf_name, (tmp_path / "v.gguf").read_bytes(), "v.gguf")
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["method"] == "gguf"
    steered = http.post(
        "/v1/completions", json={"prompt": "ab", "max_tokens": 4, "steering": [{"vector": gguf_name}]}
    )
    assert steered.status_code == 200


def hostile_files(tok):
    good = to_bytes(icv.extract(tiny_model("llama"), tok, DEMOS[:2], progress=False))
    nan = bytearray(good)
    nan[-4:] = b"\x00\x00\xc0\x7f"  # the last float of the file: NaN
    return {
        "garbage": (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......", "not an icv vector"),
        "absurd header length": ((10**12).to_bytes(8, "little") + b"{}", "header"),
        "truncated": (good[: len(good) // 2], ""),
        "NaN": (bytes(nan), "NaN"),
        "a demonstration file": (b'{"source": "a", "target": "b"}\n', ""),
        "empty": (b"", ""),
    }


@pytest.mark.parametrize(
    "case", ["garbage", "absurd header length", "truncated", "NaN", "a demonstration file", "empty"]
)
def test_hostile_uploads_are_refused_naming_the_file(http, tok, case):
    data, words = hostile_files(tok)[case]
    before = names(http)
    message = error_of(upload(http, fresh("evil"), data, "evil.safetensors"), 400, "invalid_vector_file")
    assert (
        "evil" in message and "icv-upload-" not in message
    )  # the upload's name, not the server's temporary path
    assert words in message
    assert names(http) == before


def test_another_models_vector_is_refused(http, tok):
    other = icv.extract(tiny_model("qwen2"), tok, DEMOS[:2], progress=False)
    message = error_of(upload(http, fresh("qwen"), to_bytes(other)), 400, "vector_mismatch")
    assert "different models" in message


def test_a_file_over_the_limit_is_refused_with_413(http):
    error_of(upload(http, fresh("big"), b"\0" * (UPLOAD_LIMIT + 1)), 413, "body_too_large")


@pytest.mark.parametrize(
    "params, code",
    [({}, "invalid_name"), ({"name": "a b"}, "invalid_name"), ({"name": "positive"}, "name_taken")],
)
def test_upload_names_are_checked(http, params, code):
    response = http.post("/v1/vectors/upload", params=params, content=b"x", headers=OCTETS)
    assert response.json()["error"]["code"] == code


def test_the_number_of_vectors_taken_in_is_bounded(tok):
    model = tiny_model("llama")
    library = VectorLibrary(ModelShape.of(model))
    limits = ServerLimits(max_added_vectors=1)
    with (
        BackgroundServer(model, tok, library, limits=limits) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        assert client.post("/v1/vectors/extract", json={"name": "one", "pairs": DEMOS}).status_code == 201
        second = client.post("/v1/vectors/extract", json={"name": "two", "pairs": DEMOS})
        assert "limit" in error_of(second, 409, "too_many_vectors")


# -- download --------------------------------------------------------------------------------


def test_downloads_are_the_files_the_library_writes(http, saved, tmp_path):
    vector = icv.InContextVector.load(saved[0] / "negative.safetensors")  # as the server loaded it
    response = http.get("/v1/vectors/negative/download", params={"format": "safetensors"})
    assert response.headers["content-disposition"] == 'attachment; filename="negative.safetensors"'
    (tmp_path / "served.safetensors").write_bytes(response.content)
    assert icv.InContextVector.load(tmp_path / "served.safetensors").equal(vector)
    with pytest.warns(UserWarning, match="block 0"):
        export_gguf(vector, tmp_path / "local.gguf")
    response = http.get("/v1/vectors/negative/download", params={"format": "gguf"})
    assert response.headers["content-disposition"] == 'attachment; filename="negative.gguf"'
    assert response.content == (tmp_path / "local.gguf").read_bytes()
    (tmp_path / "served.gguf").write_bytes(response.content)
    served, local = import_gguf(tmp_path / "served.gguf"), import_gguf(tmp_path / "local.gguf")
    assert torch.equal(served.directions, local.directions)


def test_bad_downloads(http):
    assert "no vector named 'nowhere'" in error_of(
        http.get("/v1/vectors/nowhere/download"), 404, "vector_not_found"
    )
    error_of(http.get("/v1/vectors/positive/download", params={"format": "pickle"}), 400, "invalid_value")


# -- pair files --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename, data",
    [
        ("p.jsonl", b'{"source": "a b", "target": "c d"}\n\n{"source": "e", "target": "f"}\n'),
        ("p.csv", b'source,target\n"a b",c d\ne,f\n'),
        ("p.tsv", b"a b\tc d\ne\tf\n"),
    ],
)
def test_pair_files_are_read_as_the_library_reads_them(http, filename, data):
    response = http.post("/v1/demos/parse", params={"filename": filename}, content=data, headers=OCTETS)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"source": "a b", "target": "c d"}, {"source": "e", "target": "f"}]


@pytest.mark.parametrize(
    "filename, data, status, code, words",
    [
        (
            "p.jsonl",
            b'{"source": "a", "target": "b"}\n{oops}\n',
            400,
            "invalid_pairs",
            "p.jsonl:2: invalid JSON",
        ),
        ("p.csv", b"a,b,c\n", 400, "invalid_pairs", "p.csv:1: expected two columns"),
        ("p.csv", b"\xff\xfe", 400, "invalid_pairs", "not valid UTF-8"),
        ("p.docx", b"a,b", 400, "invalid_pairs", "unknown demonstration format"),
        ("p.csv", b"", 400, "invalid_pairs", "no demonstrations"),
        ("p.csv", b"a,b\n" * 9, 400, "too_many_pairs", "at most 8"),
        ("p.csv", b"a,b\n" * (UPLOAD_LIMIT // 4 + 1), 413, "body_too_large", "larger than"),
        ("", b"a,b", 400, "invalid_value", "filename"),
        ("../p.csv", b"a,b", 400, "invalid_value", "filename"),
    ],
)
def test_pair_files_that_do_not_parse_say_where(http, filename, data, status, code, words):
    response = http.post("/v1/demos/parse", params={"filename": filename}, content=data, headers=OCTETS)
    assert words in error_of(response, status, code)


def test_the_parsed_pairs_extract_the_vector_the_file_gives(http, reference, tok, tmp_path):
    rows = b"the food was cold\tthe food was warm\ni hated it\ti loved it\n"
    pairs = http.post("/v1/demos/parse", params={"filename": "p.tsv"}, content=rows, headers=OCTETS).json()[
        "data"
    ]
    name = fresh("from-file")
    assert http.post("/v1/vectors/extract", json={"name": name, "pairs": pairs}).status_code == 201
    (tmp_path / "p.tsv").write_bytes(rows)
    want = icv.extract(reference, tok, read_demos(tmp_path / "p.tsv"), name=name, progress=False)
    (tmp_path / "v.safetensors").write_bytes(http.get(f"/v1/vectors/{name}/download").content)
    assert icv.InContextVector.load(tmp_path / "v.safetensors").equal(want)
