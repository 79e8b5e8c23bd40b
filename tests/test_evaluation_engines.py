"""``icv.evaluate`` / ``icv.calibrate`` / ``icv eval`` through a running ``icv serve`` (``engine="server"``).

The server is the real one (uvicorn on 127.0.0.1, the transformers engine) serving a tiny
random llama from a folder; every answer it gives must be the one the transformers engine
gives in this process.  The vLLM engine's tests are in tests/with_vllm/.
"""

from __future__ import annotations

import importlib
import importlib.util
import json

import pytest
from serving_server import BackgroundServer, free_port, httpx
from tiny import DEMOS, save_tiny_llama

import icv
from icv.cli import main
from icv.errors import EngineError, OptionError
from icv.evaluate import evaluate
from icv.scorers import FunctionScorer
from icv.serving import ModelShape, VectorLibrary
from icv.serving.access import AccessPolicy

engines = importlib.import_module("icv.engines")

INPUTS = ["the room was dark", "slow service", "cold soup again"]
STRENGTHS = [0.2, 0.6]
KEY = "sweep-key-123"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-engines")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return icv.load_model(model_dir)


@pytest.fixture(scope="module")
def vector(loaded):
    model, tok = loaded
    return icv.extract(model, tok, DEMOS, name="warm", progress=False)


@pytest.fixture(scope="module")
def served(model_dir, vector, tmp_path_factory):
    """A second copy of the model behind ``icv serve``'s app, with ``warm`` loaded from a file."""
    model, tok = icv.load_model(model_dir)
    folder = tmp_path_factory.mktemp("served")
    vector.save(folder / "warm.safetensors")
    library = VectorLibrary.load([folder], ModelShape.of(model))
    with BackgroundServer(model, tok, library, max_tokens=64) as server:
        yield server


@pytest.fixture(scope="module")
def keyed(model_dir):
    """A server that asks for an API key (and serves no vectors of its own)."""
    model, tok = icv.load_model(model_dir)
    with BackgroundServer(
        model, tok, VectorLibrary(ModelShape.of(model)), max_tokens=64, access=AccessPolicy(api_key=KEY)
    ) as server:
        yield server


def letters() -> FunctionScorer:
    return FunctionScorer("letters", lambda outputs, s, r: [float(len(set(o)) % 2) for o in outputs])


def kept() -> FunctionScorer:
    return FunctionScorer(
        "kept",
        lambda outputs, sources, r: [
            len(set(o) & set(s)) / 26 for o, s in zip(outputs, sources, strict=True)
        ],
        needs_sources=True,
    )


def sweep(loaded, vector, **options):
    model, tok = loaded
    return evaluate(
        model,
        tok,
        DEMOS[:1],  # one demonstration: the ICL prompt fits the tiny model's 256 tokens
        INPUTS,
        style=letters(),
        content=kept(),
        scorers=[],
        vector=vector,
        strengths=STRENGTHS,
        methods=["zero-shot", "icl", "icv", "icl+icv"],
        hybrid_strengths=[0.0, 0.4],
        max_new_tokens=10,
        batch_size=4,
        progress=False,
        **options,
    )


def outputs(evaluation):
    return {(r.method, r.strength): r.outputs for r in evaluation.results}


def served_names(server):
    return [v["name"] for v in httpx.get(f"{server.url}/v1/vectors").json()["data"]]


def test_a_sweep_through_a_server_gives_the_transformers_engines_answers(loaded, vector, served):
    local = sweep(loaded, vector)
    remote = sweep(loaded, vector, engine="server", url=served.url)
    assert outputs(remote) == outputs(local)
    assert len(outputs(local)) == 2 + len(STRENGTHS) + 2
    steered = [r.outputs for r in local.results if r.method == "icv"]
    assert any(o != local.result("zero-shot").outputs for o in steered), "the sweep should steer"
    assert remote.settings["engine"] == "server" and local.settings["engine"] == "transformers"
    assert all(r.seconds > 0 for r in remote.results)
    # The vector was the server's own file (same bytes): used by its name, nothing uploaded.
    assert served_names(served) == ["warm"]


def test_another_vector_is_uploaded_for_the_sweep_and_deleted_after(loaded, vector, served):
    model, tok = loaded
    options = dict(
        style=letters(), content=kept(), scorers=[], vector=vector, strengths=[0.3], methods=["icv"]
    )
    options.update(max_new_tokens=8, progress=False, positions="generated", mode="add")
    local = evaluate(model, tok, None, INPUTS, **options)
    remote = evaluate(model, tok, None, INPUTS, engine="server", url=served.url, **options)
    assert outputs(remote) == outputs(local)
    assert served_names(served) == ["warm"]  # the uploaded copy (added at the block) is gone


def test_a_trained_vector_is_uploaded_and_answered_like_icv_steer(loaded, vector, served):
    """icv.train's file is an ordinary vector: the trained arm through `icv serve` (transformers
    engine) gives the tokens of the transformers engine, which are icv.steer's (test_evaluate_trained)."""
    model, tok = loaded
    trained = icv.train(model, tok, DEMOS, init=vector, steps=2, learning_rate=0.2, progress=False)
    options = dict(style=letters(), content=kept(), scorers=[], trained=trained, trained_strengths=[0.3, 0.6])
    options.update(methods=["zero-shot", "trained"], max_new_tokens=8, progress=False)
    local = evaluate(model, tok, None, INPUTS, **options)
    remote = evaluate(model, tok, None, INPUTS, engine="server", url=served.url, **options)
    assert outputs(remote) == outputs(local)
    assert local.result("trained", 0.6).outputs != local.result("zero-shot").outputs
    assert remote.settings["training"] == trained.metadata["training"]
    assert served_names(served) == ["warm"]  # uploaded for the sweep, deleted after


def test_calibration_through_a_server_picks_what_the_transformers_engine_picks(loaded, vector, served):
    model, tok = loaded
    options = dict(style=letters(), content=kept(), strengths=[0.2, 0.5], min_content=0.0, max_new_tokens=8)
    options.update(layer_ranges=[range(0, 2), range(1, 2)], progress=False)
    local = icv.calibrate(model, tok, vector, INPUTS, **options)
    remote = icv.calibrate(model, tok, vector, INPUTS, engine="server", url=served.url, **options)
    assert [p.examples for p in remote.report.points] == [p.examples for p in local.report.points]
    assert remote.report.baseline.examples == local.report.baseline.examples
    assert remote.vector.recommended_strength == local.vector.recommended_strength
    assert served_names(served) == ["warm"]


def test_the_api_key_is_sent_and_a_4xx_becomes_a_clear_error(loaded, vector, keyed):
    model, tok = loaded
    options = dict(
        style=letters(), content=kept(), scorers=[], vector=vector, strengths=[0.2], methods=["icv"]
    )
    options.update(max_new_tokens=6, progress=False)
    with pytest.raises(EngineError, match="answered GET /v1/vectors with 401") as refused:
        evaluate(model, tok, None, INPUTS, engine="server", url=keyed.url, **options)
    assert refused.value.status == 401
    local = evaluate(model, tok, None, INPUTS, **options)
    remote = evaluate(model, tok, None, INPUTS, engine="server", url=keyed.url, api_key=KEY, **options)
    assert outputs(remote) == outputs(local)
    assert served_names_with_key(keyed) == []  # uploaded, then deleted
    # The server's own words come back: a strength beyond its bound is the client's mistake.
    with pytest.raises(EngineError, match=r"400: 'steering\[0\]\.strength' is 50"):
        evaluate(
            model,
            tok,
            None,
            INPUTS,
            engine="server",
            url=keyed.url,
            api_key=KEY,
            **{**options, "strengths": [50]},
        )
    assert served_names_with_key(keyed) == []


def served_names_with_key(server):
    answer = httpx.get(f"{server.url}/v1/vectors", headers={"Authorization": f"Bearer {KEY}"})
    return [v["name"] for v in answer.json()["data"]]


def test_a_server_that_is_not_there_or_a_bad_address_is_a_clear_error(loaded, vector):
    model, tok = loaded
    options = dict(
        style=letters(), content=kept(), scorers=[], vector=vector, strengths=[0.2], methods=["icv"]
    )
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EngineError, match="cannot reach the server at .* is `icv serve` running there"):
        evaluate(model, tok, None, INPUTS, engine="server", url=url, **options)
    with pytest.raises(OptionError, match="needs the server's address"):
        evaluate(model, tok, None, INPUTS, engine="server", **options)
    with pytest.raises(OptionError, match="must be http://HOST:PORT"):
        evaluate(model, tok, None, INPUTS, engine="server", url="localhost:8000", **options)
    with pytest.raises(OptionError, match="unknown engine 'vlm'"):
        evaluate(model, tok, None, INPUTS, engine="vlm", **options)
    with pytest.raises(OptionError, match="url and api_key are for engine='server'"):
        evaluate(model, tok, None, INPUTS, url=url, **options)
    with pytest.raises(OptionError, match="per-layer weights"):
        evaluate(model, tok, None, INPUTS, engine="server", url=url, layers={0: 1.0}, **options)
    with pytest.raises(OptionError, match="printable ASCII"):
        engines.ServerEngine(url, api_key="two words")


def test_eval_command_runs_its_sweep_on_a_server(model_dir, vector, keyed, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(INPUTS) + "\n")
    vector_file = tmp_path / "warm.safetensors"
    vector.save(vector_file)
    base = ["eval", "--model", model_dir, "--vector", vector_file, "--inputs", inputs, "--style", "positive"]
    base += ["--methods", "zero-shot,icv", "--strengths", "0.2,0.6", "--no-fluency", "--max-new-tokens", "6"]
    reports = {}
    monkeypatch.setenv("ICV_API_KEY", KEY)  # the key from the environment, off the process list
    for engine in ([], ["--engine", "server", "--url", keyed.url]):
        out = tmp_path / (engine[1] if engine else "local")
        code = main([str(a) for a in [*base, *engine, "--out", out, "--quiet"]])
        assert code == 0, capsys.readouterr().err
        reports[bool(engine)] = json.loads((out / "eval.json").read_text())
    assert [r["outputs"] for r in reports[True]["results"]] == [
        r["outputs"] for r in reports[False]["results"]
    ]
    assert reports[True]["settings"]["engine"] == "server"
    monkeypatch.delenv("ICV_API_KEY")
    code = main([str(a) for a in [*base, "--engine", "server", "--url", keyed.url, "--out", tmp_path / "x"]])
    assert code == 1 and "401" in capsys.readouterr().err
    for wrong, message in [
        (["--engine", "server"], "--engine server needs --url"),
        (["--url", keyed.url], "--url and --api-key are for --engine server"),
        (["--engine", "server", "--url", keyed.url, "--enforce-eager"], "are for --engine vllm"),
    ]:
        assert main([str(a) for a in [*base, *wrong]]) == 2
        assert message in capsys.readouterr().err


def test_calibrate_command_runs_its_sweep_on_a_server(
    model_dir, vector, keyed, tmp_path, capsys, monkeypatch
):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(INPUTS) + "\n")
    vector_file = tmp_path / "warm.safetensors"
    vector.save(vector_file)
    base = ["calibrate", vector_file, "--model", model_dir, "--inputs", inputs, "--style", "positive"]
    base += ["--strengths", "0.2,0.6", "--no-fluency", "--max-new-tokens", "6", "--min-content", "0.1"]
    reports = {}
    monkeypatch.setenv("ICV_API_KEY", KEY)
    for engine in ([], ["--engine", "server", "--url", keyed.url]):
        out = tmp_path / ("server" if engine else "local")
        code = main(
            [str(a) for a in [*base, *engine, "--out", f"{out}.safetensors", "--report", f"{out}.json"]]
        )
        assert code == 0, capsys.readouterr().err
        reports[bool(engine)] = json.loads((tmp_path / f"{out.name}.json").read_text())
    assert reports[True].pop("engine") == "server" and reports[False].pop("engine") == "transformers"
    assert reports[True] == reports[False]  # the same answers, so the same scores and the same choice
    local = icv.InContextVector.load(tmp_path / "local.safetensors")
    remote = icv.InContextVector.load(tmp_path / "server.safetensors")
    assert remote.metadata["recommended_strength"] == local.metadata["recommended_strength"]
    monkeypatch.delenv("ICV_API_KEY")
    code = main([str(a) for a in [*base, "--engine", "server", "--url", keyed.url, "--quiet"]])
    assert code == 1 and "401" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_vllm_engine_without_vllm_says_how_to_install_it(loaded, vector, model_dir, tmp_path, capsys):
    model, tok = loaded
    options = dict(
        style=letters(), content=kept(), scorers=[], vector=vector, strengths=[0.2], methods=["icv"]
    )
    with pytest.raises(OptionError, match=r"pip install 'in-context-vectors\[vllm\]'"):
        evaluate(model, tok, None, INPUTS, engine="vllm", **options)
    built = engines.engine_for("vllm", model, tok)
    assert isinstance(built, engines.VllmEngine) and built.model == str(model_dir)
    inputs = tmp_path / "in.txt"
    inputs.write_text("slow service\n")
    vector_file = tmp_path / "warm.safetensors"
    vector.save(vector_file)
    argv = ["eval", "--model", model_dir, "--vector", vector_file, "--inputs", inputs, "--style", "positive"]
    argv += ["--methods", "icv", "--no-fluency", "--engine", "vllm", "--tensor-parallel-size", "2", "--quiet"]
    assert main([str(a) for a in argv]) == 1
    assert "needs vLLM in this environment" in capsys.readouterr().err
