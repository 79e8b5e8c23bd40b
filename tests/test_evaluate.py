"""The evaluation harness end to end on a tiny model with fake scorers."""

from __future__ import annotations

import json

import pytest
from evaluation_fakes import DEMOS, INPUTS, DecodingTokenizer, overlap, vowels

import icv
from icv.errors import OptionError
from icv.evaluate import evaluate, read_inputs
from icv.scorers import RepetitionScorer
from icv.sweep import steered_answers


@pytest.fixture
def tok():
    return DecodingTokenizer()


def test_harness_reports_every_method_and_writes_json_markdown_png(llama, tok, tmp_path):
    evaluation = evaluate(
        llama,
        tok,
        DEMOS,
        INPUTS,
        style=vowels(),
        content=overlap(),
        scorers=[RepetitionScorer(3)],
        strengths=[0.05, 0.2],
        max_new_tokens=6,
        batch_size=2,
    )
    labels = [r.label for r in evaluation.results]
    assert labels == ["zero-shot", "icl", "icv @ 0.05", "icv @ 0.2"]
    zero, icl = evaluation.result("zero-shot"), evaluation.result("icl")
    assert icl.prompt_tokens > zero.prompt_tokens  # the demonstrations are in the prompt
    assert evaluation.result("icv", 0.05).prompt_tokens == zero.prompt_tokens
    for r in evaluation.results:
        assert len(r.outputs) == len(INPUTS)
        assert 0.0 <= r.style_success <= 1.0
        assert set(r.scores) == {"vowels", "overlap", "repetition_3gram"}
        assert r.seconds >= 0.0
    assert evaluation.settings["extract_seconds"] >= 0.0

    paths = evaluation.save(tmp_path, stem="run")
    data = json.loads(paths["json"].read_text())
    assert [row["method"] for row in data["results"]] == ["zero-shot", "icl", "icv", "icv"]
    assert data["results"][2]["outputs"] == evaluation.results[2].outputs
    table = paths["markdown"].read_text()
    assert table.count("\n") == 2 + len(labels)
    assert "| icl |" in table and "| icv | 0.2 |" in table
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_icv_at_strength_zero_matches_zero_shot(llama, tok):
    evaluation = evaluate(
        llama,
        tok,
        DEMOS,
        INPUTS,
        style=vowels(),
        content=overlap(),
        scorers=[],
        strengths=[0.0, 0.5],
        methods=["zero-shot", "icv"],
        max_new_tokens=6,
        batch_size=4,
    )
    assert evaluation.result("icv", 0.0).outputs == evaluation.result("zero-shot").outputs
    assert evaluation.result("icv", 0.5).outputs != evaluation.result("zero-shot").outputs


def test_per_row_strengths_in_one_batch_match_separate_runs(llama, tok):
    vector = icv.extract(llama, tok, DEMOS)
    together = steered_answers(llama, tok, vector, INPUTS, [0.1, 0.4], max_new_tokens=6, batch_size=6)
    for strength in (0.1, 0.4):
        alone = steered_answers(llama, tok, vector, INPUTS, [strength], max_new_tokens=6, batch_size=3)
        assert together[strength].raw == alone[strength].raw


def test_recommended_strength_joins_the_default_sweep_and_is_marked(llama, tok):
    vector = icv.extract(llama, tok, DEMOS).with_metadata(recommended_strength=0.06)
    evaluation = evaluate(
        llama,
        tok,
        DEMOS,
        INPUTS[:1],
        style=vowels(),
        content=overlap(),
        scorers=[],
        vector=vector,
        methods=["icv"],
        max_new_tokens=3,
    )
    assert [r.strength for r in evaluation.results] == [0.03, 0.05, 0.06, 0.07, 0.09]
    table = evaluation.markdown()
    assert "0.06 (recommended)" in table and "calibrated" not in table  # set by hand here, not calibrated


def test_bad_arguments_are_option_errors(llama, tok):
    with pytest.raises(OptionError, match="unknown methods"):
        evaluate(llama, tok, DEMOS, INPUTS, style=vowels(), methods=["lora"])
    with pytest.raises(OptionError, match="references"):
        evaluate(llama, tok, DEMOS, INPUTS, style=vowels(), references=["x"])
    with pytest.raises(OptionError, match="inputs"):
        evaluate(llama, tok, DEMOS, [], style=vowels())
    with pytest.raises(OptionError, match="repeat"):
        evaluate(
            llama,
            tok,
            DEMOS,
            INPUTS,
            style=vowels(),
            content=overlap(),
            scorers=[],
            methods=["icv"],
            strengths=[0.1, 0.1],
        )


def test_read_inputs_with_and_without_references(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("first\n\nsecond\nthird\n")
    assert read_inputs(plain, limit=2) == (["first", "second"], None)
    paired = tmp_path / "paired.tsv"
    paired.write_text("bad food\tgood food\nrude staff\tkind staff\n")
    assert read_inputs(paired) == (["bad food", "rude staff"], ["good food", "kind staff"])
    with pytest.raises(OptionError, match="cannot read"):
        read_inputs(tmp_path / "missing.txt")


def test_eval_arguments_and_cli_errors(tmp_path, capsys):
    from icv.cli import build_parser, main

    args = build_parser().parse_args(
        [
            "eval",
            "--demos",
            "d.tsv",
            "--inputs",
            "i.txt",
            "--style",
            "inoffensive",
            "--strengths",
            "0.05,0.07",
        ]
    )
    assert args.style == "inoffensive" and args.strengths == [0.05, 0.07] and args.batch_size == 16
    assert main(["eval", "--demos", str(tmp_path / "none.tsv"), "--inputs", "x", "--style", "positive"]) == 1
    assert "cannot read demonstrations" in capsys.readouterr().err


def test_demos_are_needed_only_by_the_methods_that_use_them(llama, tok):
    vector = icv.extract(llama, tok, DEMOS)
    report = evaluate(
        llama,
        tok,
        None,
        INPUTS,
        style=vowels(),
        content=overlap(),
        scorers=[],
        vector=vector,
        methods=["zero-shot", "icv"],
        strengths=[0.1],
        max_new_tokens=3,
    )
    assert [r.label for r in report.results] == ["zero-shot", "icv @ 0.1"]
    assert report.settings["num_demos"] is None
    for methods, given in ((["icl"], vector), (["icv"], None)):
        with pytest.raises(OptionError, match="demos are needed"):
            evaluate(llama, tok, None, INPUTS, style=vowels(), vector=given, methods=methods)
