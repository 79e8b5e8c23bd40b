"""``icv calibrate``: the strength sweep from the command line, with ``icv eval``'s scorer and engine options.

The scorer and engine are built by one function for both commands (``icv.cli.scoring``), so the
same mistakes are refused with the same words by both.  Tiny random model; the content scorer is
the default MiniLM similarity, as a user gets it.
"""

from __future__ import annotations

import importlib
import json

import pytest
from tiny import DEMOS, save_tiny_llama

import icv
from icv.cli import main
from icv.scorers import SentimentScorer

INPUTS = ["the room was dark", "slow service", "cold soup again"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-calibrate")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def vector_file(model_dir, tmp_path_factory):
    model, tok = icv.load_model(model_dir)
    path = tmp_path_factory.mktemp("vec") / "warm.safetensors"
    icv.extract(model, tok, DEMOS, name="warm", progress=False).save(path)
    return path


@pytest.fixture
def inputs(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(INPUTS) + "\n")
    return path


OPTIONS = [
    "--strengths",
    "0.2,0.6",
    "--no-fluency",
    "--max-new-tokens",
    "6",
    "--min-content",
    "0.1",
    "--quiet",
]


def test_the_command_writes_the_vector_with_the_strength_icv_calibrate_picks(
    model_dir, vector_file, inputs, tmp_path, capsys
):
    out, report = tmp_path / "cal.safetensors", tmp_path / "cal.json"
    argv = ["calibrate", vector_file, "--model", model_dir, "--inputs", inputs, "--style", "positive"]
    code = main([str(a) for a in [*argv, *OPTIONS, "--out", out, "--report", report]])
    shown = capsys.readouterr().out
    assert code == 0
    model, tok = icv.load_model(model_dir)
    want_vector, want = icv.calibrate(
        model,
        tok,
        icv.InContextVector.load(vector_file),
        INPUTS,
        style=SentimentScorer("positive"),
        strengths=[0.2, 0.6],
        min_content=0.1,
        max_perplexity_ratio=None,
        max_new_tokens=6,
        progress=False,
    )
    got = json.loads(report.read_text())
    assert got["engine"] == "transformers" and "judge" not in got
    assert {k: v for k, v in got.items() if k != "engine"} == json.loads(json.dumps(want.to_dict()))
    written = icv.InContextVector.load(out)
    assert written.metadata["recommended_strength"] == want.chosen.strength
    assert written.metadata["recommended_strength"] == want_vector.metadata["recommended_strength"]
    assert want.markdown() in shown
    assert f"recommended strength {want.chosen.strength:g}" in shown


def test_an_existing_out_is_refused_before_any_model_is_loaded(vector_file, inputs, tmp_path, capsys):
    out = tmp_path / "cal.safetensors"
    out.write_bytes(b"mine")
    argv = ["calibrate", vector_file, "--inputs", inputs, "--style", "positive", "--out", out]
    assert main([str(a) for a in argv]) == 1
    assert "pass --force" in capsys.readouterr().err and out.read_bytes() == b"mine"


@pytest.mark.parametrize("command", ["eval", "calibrate"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--style", "formal English"], "the built-in styles are"),
        (["--style-model", "x"], "--style-model and --style-label go together"),
        (["--style-model", "x", "--style-label", "y", "--judge-url", "http://h/v1"], "not both"),
        (["--style", "formal", "--judge-url", "http://h/v1"], "--judge-url and --judge-model go together"),
        (["--style", "positive", "--style-threshold", "0.5"], "--style-threshold is for --style-model"),
        ([], "--style is needed"),
        (["--style", "positive", "--engine", "server"], "--engine server needs --url"),
        (["--style", "positive", "--url", "http://h:8000"], "--url and --api-key are for --engine server"),
        (["--style", "positive", "--enforce-eager"], "are for --engine vllm"),
    ],
)
def test_both_commands_refuse_the_same_mistakes_with_the_same_words(command, extra, message, inputs, capsys):
    head = ["eval", "--methods", "zero-shot"] if command == "eval" else ["calibrate", "v.safetensors"]
    assert main([*head, "--inputs", str(inputs), *extra]) == 2
    assert message in capsys.readouterr().err


def test_perplexity_baseline_reaches_calibrate(model_dir, vector_file, inputs, capsys, monkeypatch):
    module = importlib.import_module("icv.calibrate")
    real, seen = module.calibrate, []

    def spy(*args, **options):
        seen.append(options["perplexity_baseline"])
        return real(*args, **options)

    monkeypatch.setattr(module, "calibrate", spy)
    argv = ["calibrate", vector_file, "--model", model_dir, "--inputs", inputs, "--style", "positive"]
    assert main([str(a) for a in [*argv, *OPTIONS, "--perplexity-baseline", "inputs"]]) == 0
    assert main([str(a) for a in [*argv, *OPTIONS]]) == 0
    assert seen == ["inputs", "unsteered"]
    assert main([str(a) for a in [*argv, *OPTIONS, "--perplexity-baseline", "sources"]]) == 2
    assert "invalid choice" in capsys.readouterr().err
