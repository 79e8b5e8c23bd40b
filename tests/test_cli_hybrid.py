"""``icv generate --demos FILE --with-demos K`` and ``icv eval --methods ...,icl+icv``: ICL + ICV from the shell."""

from __future__ import annotations

import io
import json
import sys

import pytest
from tiny import DEMOS, save_tiny_llama

import icv
from icv.cli import main
from icv.display import side_by_side
from icv.generation import complete
from icv.prompts import cut_answer

STOPS = ['"', "\n"]


def by_hand(text: str, shots: int) -> str:
    """The paraphrase prompt with the first ``shots`` of DEMOS, written out here, not by icv.prompts."""
    lines = "".join(f' Original: "{s}"; Paraphrased: "{t}"\n' for s, t in DEMOS[:shots])
    return f'Please paraphrase the following sentence.\n{lines} Original: "{text}"; Paraphrased: "'


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-hybrid")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return icv.load_model(model_dir)


def write_demos(path, pairs):
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    return path


@pytest.fixture
def demos_file(tmp_path):
    return write_demos(tmp_path / "warm.jsonl", DEMOS)


@pytest.fixture
def vec(model_dir, demos_file, tmp_path):
    out = tmp_path / "warm.safetensors"
    argv = ["extract", "--demos", str(demos_file), "--out", str(out), "--model", str(model_dir), "--quiet"]
    assert main(argv) == 0
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_with_demos_steers_the_icl_prompt_beside_icl_alone(vec, demos_file, loaded, capsys):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    prompts = [by_hand("the room was dark", 2)] * 2
    raw = complete(
        model, tokenizer, prompts, vector=vector, strength=[0.0, 0.5], max_new_tokens=8, stop_strings=STOPS
    )
    code, out, err = run(
        capsys,
        "generate",
        "--vector",
        vec,
        "--demos",
        demos_file,
        "--with-demos",
        "2",
        "--strength",
        "0.5",
        "--compare",
        "--max-new-tokens",
        "8",
        "the room was dark",
    )
    assert code == 0, err
    expected = side_by_side(None, {"unsteered": [cut_answer(raw[0])], "0.5": [cut_answer(raw[1])]})
    assert out == expected + "\n"
    assert "warning" not in err  # the vector's own demos, a strength given


def test_with_demos_zero_is_the_paraphrase_prompt_alone(vec, demos_file, loaded, capsys):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    raw = complete(
        model,
        tokenizer,
        [by_hand("meh", 0)],
        vector=vector,
        strength=0.5,
        max_new_tokens=8,
        stop_strings=STOPS,
    )
    argv = ["generate", "--vector", vec, "--demos", demos_file, "--with-demos", "0", "--strength", "0.5"]
    code, out, _ = run(capsys, *argv, "--max-new-tokens", "8", "meh")
    assert code == 0 and out == cut_answer(raw[0]) + "\n"


def test_generate_with_demos_refuses_bad_combinations_before_loading(vec, demos_file, monkeypatch, capsys):
    monkeypatch.setattr("icv.models.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    cases = {
        ("--with-demos", "1"): "--with-demos needs --demos",
        ("--demos", demos_file, "--with-demos", "5"): "holds only 4",
        ("--demos", demos_file, "--with-demos", "1", "--chat"): "drop --chat",
        ("--demos", demos_file, "--with-demos", "-1"): "must not be negative",
    }
    for options, message in cases.items():
        code, _, err = run(capsys, "generate", "--vector", vec, *options, "x")
        assert code == 2 and message in err, err


def test_generate_warns_where_the_prompt_does_not_fit_the_vector(vec, demos_file, tmp_path, capsys):
    zero_shot = tmp_path / "zero-shot-calibrated.safetensors"
    icv.InContextVector.load(vec).with_metadata(recommended_strength=0.5, calibrated_with_demos=0).save(
        zero_shot
    )
    base = ["generate", "--vector", zero_shot, "--max-new-tokens", "3"]
    _, _, err = run(capsys, *base, "--demos", demos_file, "--with-demos", "2", "x")
    assert "calibrated with no demonstrations in the prompt and is used with 2 demonstrations" in err
    _, _, err = run(capsys, *base, "--demos", demos_file, "--with-demos", "2", "--strength", "0.5", "x")
    assert "warning" not in err  # a strength given: the recommendation is not used
    _, _, err = run(capsys, *base, "x")
    assert "warning" not in err  # the form it was calibrated for
    others = write_demos(tmp_path / "others.jsonl", [("a", "b"), ("c", "d")])
    _, _, err = run(capsys, *base, "--demos", others, "--with-demos", "1", "--strength", "0.5", "x")
    assert "not the ones" in err


def test_interactive_demos_command(vec, demos_file, loaded, monkeypatch, capsys):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    lines = ["/demos 1", "the room", "/settings", "/demos", "the room", "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    argv = [
        "generate",
        "--vector",
        vec,
        "--demos",
        demos_file,
        "--strength",
        "0.5",
        "--max-new-tokens",
        "6",
        "-i",
    ]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    task = complete(
        model,
        tokenizer,
        [by_hand("the room", 1)],
        vector=vector,
        strength=0.5,
        max_new_tokens=6,
        stop_strings=STOPS,
    )
    plain = complete(model, tokenizer, ["the room"], vector=vector, strength=0.5, max_new_tokens=6)
    shown = out.splitlines()
    assert shown[0] == cut_answer(task[0])
    assert "1 demos in the prompt" in shown[1]
    assert out.endswith(plain[0] + "\n")


def test_eval_takes_the_hybrid_arm(capsys, tmp_path, demos_file):
    inputs = tmp_path / "in.txt"
    inputs.write_text("a\n")
    base = ["eval", "--inputs", inputs, "--style", "positive"]
    code, _, err = run(capsys, *base, "--methods", "icl+icv")
    assert code == 2 and "--demos is needed for the icl and icl+icv methods" in err
    code, _, err = run(capsys, *base, "--demos", demos_file, "--hybrid-strengths", "0.01")
    assert code == 2 and "add it to --methods" in err
    code, _, err = run(capsys, *base, "--demos", demos_file, "--methods", "icl+icv", "--prompt-demos", "9")
    assert code == 2 and "holds only 4" in err


def test_eval_runs_the_hybrid_arm(model_dir, demos_file, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("the room was dark\nslow service\n")
    out = tmp_path / "report"
    argv = ["eval", "--model", model_dir, "--demos", demos_file, "--inputs", inputs, "--style", "positive"]
    options = ["--methods", "icl,icl+icv", "--hybrid-strengths", "0,0.5", "--prompt-demos", "2"]
    code, shown, err = run(capsys, *argv, *options, "--no-fluency", "--max-new-tokens", "4", "--out", out)
    assert code == 0, err
    report = json.loads((out / "eval.json").read_text())
    assert [(r["method"], r["strength"]) for r in report["results"]] == [
        ("icl", None),
        ("icl+icv", 0.0),
        ("icl+icv", 0.5),
    ]
    assert report["settings"]["hybrid_prompt_demos"] == 2
    assert report["results"][1]["prompt_tokens"] < report["results"][0]["prompt_tokens"]  # 2 of 4 demos
    assert "| icl+icv | 0.5 |" in shown
