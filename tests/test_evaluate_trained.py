"""The trained arm of ``icv.evaluate`` / ``icv eval``: a vector from ``icv.train``, given or trained in the run."""

from __future__ import annotations

import json

import pytest
from evaluation_fakes import DEMOS, INPUTS, DecodingTokenizer, overlap, vowels
from tiny import DEMOS as TINY_DEMOS, save_tiny_llama

import icv
from icv.cli import main
from icv.errors import OptionError
from icv.evaluate import evaluate
from icv.sweep import steered_answers

PAIRS = DEMOS * 2  # 4 pairs: 3 to fit, 1 held out
TRAIN = dict(steps=3, eval_every=1, learning_rate=0.2, progress=False)


@pytest.fixture
def tok():
    return DecodingTokenizer()


def _run(model, tok, demos, **options):
    return evaluate(
        model,
        tok,
        demos,
        INPUTS,
        style=vowels(),
        content=overlap(),
        scorers=[],
        max_new_tokens=5,
        batch_size=4,
        **options,
    )


def test_a_trained_vector_is_its_own_arm_at_its_recommended_strength(llama, tok, tmp_path):
    trained = icv.train(llama, tok, PAIRS, **TRAIN)
    s = trained.recommended_strength
    report = _run(llama, tok, None, trained=trained, methods=["zero-shot", "trained"])
    assert [r.label for r in report.results] == ["zero-shot", f"trained @ {s:g}"]
    # The arm's answers are icv.steer's with the file at its recommended strength.
    expected = steered_answers(llama, tok, trained, INPUTS, [s], max_new_tokens=5, batch_size=4)
    assert report.result("trained").outputs == expected[s].answers
    assert report.result("trained").outputs != report.result("zero-shot").outputs
    record = report.settings["training"]
    assert record == trained.metadata["training"] and record["level"] == "coefficients"
    assert report.settings["trained_strengths"] == [s]
    assert report.settings["trained_vector"]["method"] == "trained"
    table = report.markdown()
    assert f"| trained (coefficients by teacher, {record['steps']} steps) | {s:g} (recommended) |" in table
    paths = report.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert [row["method"] for row in data["results"]] == ["zero-shot", "trained"]
    assert data["settings"]["training"]["objective"] == "teacher"


def test_the_trained_arm_sweeps_the_strengths_given_beside_icv(llama, tok):
    vector = icv.extract(llama, tok, DEMOS, progress=False)
    trained = icv.train(llama, tok, PAIRS, init=vector, level="directions", **TRAIN)
    report = _run(
        llama,
        tok,
        None,
        vector=vector,
        strengths=[0.1, 0.3],
        trained=trained,
        trained_strengths=[0.3, 0.1],
        methods=["icv", "trained"],
    )
    assert [r.label for r in report.results] == ["icv @ 0.1", "icv @ 0.3", "trained @ 0.1", "trained @ 0.3"]
    for strength in (0.1, 0.3):
        expected = steered_answers(llama, tok, trained, INPUTS, [strength], max_new_tokens=5, batch_size=4)
        assert report.result("trained", strength).outputs == expected[strength].answers
    assert report.settings["training"]["level"] == "directions"
    assert "(recommended)" not in report.markdown().split("trained (", 1)[1]  # not in the sweep


def test_the_run_trains_from_the_icv_arms_vector(llama, tok):
    vector = icv.extract(llama, tok, PAIRS, name="start", progress=False)
    report = _run(
        llama,
        tok,
        PAIRS,
        vector=vector,
        strengths=[0.2],
        methods=["icv", "trained"],
        train_options={**TRAIN, "seed": 1},
    )
    record = report.settings["training"]
    assert record["start"] == "start" and record["steps"] == 3 and record["seed"] == 1
    assert report.settings["train_seconds"] > 0
    # The same call by hand gives the same vector, so the same answers.
    again = icv.train(llama, tok, PAIRS, init=vector, seed=1, **TRAIN)
    s = again.recommended_strength
    expected = steered_answers(llama, tok, again, INPUTS, [s], max_new_tokens=5, batch_size=4)
    assert report.result("trained").outputs == expected[s].answers


def test_trained_arm_options_are_checked_before_anything_runs(llama, tok):
    trained = icv.train(llama, tok, PAIRS, **TRAIN)
    for options, message in [
        (dict(trained=trained, methods=["zero-shot"]), "add it to methods"),
        (dict(trained_strengths=[0.1], methods=["icv"], vector=trained), "add it to methods"),
        (dict(methods=["trained"]), "needs a trained vector"),
        (dict(trained=trained, train_options={"steps": 2}, methods=["trained"]), "not both"),
        (dict(trained="file.safetensors", methods=["trained"]), "must be an icv.InContextVector"),
    ]:
        with pytest.raises(OptionError, match=message):
            _run(llama, tok, None, **options)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-trained-arm"))


def test_eval_command_offers_the_trained_arm(model_dir, tmp_path, capsys):
    model, tok = icv.load_model(model_dir)
    trained = icv.train(model, tok, TINY_DEMOS, **TRAIN)
    trained_file = tmp_path / "trained.safetensors"
    trained.save(trained_file)
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(INPUTS) + "\n")
    demos = tmp_path / "demos.tsv"
    demos.write_text("".join(f"{s}\t{t}\n" for s, t in TINY_DEMOS))
    base = ["eval", "--model", model_dir, "--inputs", inputs, "--style", "positive", "--no-fluency"]
    base += ["--max-new-tokens", "4", "--quiet"]

    out = tmp_path / "given"
    code = main([str(a) for a in [*base, "--methods", "zero-shot", "--trained", trained_file, "--out", out]])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "eval.json").read_text())
    assert [r["method"] for r in data["results"]] == ["zero-shot", "trained"]
    assert data["results"][1]["strength"] == trained.recommended_strength
    assert data["settings"]["training"] == trained.metadata["training"]
    assert "trained (coefficients by teacher" in capsys.readouterr().out

    out = tmp_path / "here"
    here = ["--demos", demos, "--methods", "icv,trained", "--strengths", "0.2", "--train"]
    here += ["--train-level", "directions", "--train-steps", "2", "--trained-strengths", "0.1,0.2"]
    here += ["--train-objective", "preference"]
    code = main([str(a) for a in [*base, *here, "--out", out]])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "eval.json").read_text())
    assert [(r["method"], r["strength"]) for r in data["results"]] == [
        ("icv", 0.2),
        ("trained", 0.1),
        ("trained", 0.2),
    ]
    assert data["settings"]["training"]["level"] == "directions"
    assert data["settings"]["training"]["objective"] == "preference"
    assert data["settings"]["training"]["steps"] <= 2

    for wrong, message in [
        (["--methods", "trained"], "needs --trained FILE"),
        (["--trained", trained_file, "--train", "--demos", demos], "choose one"),
        (["--methods", "zero-shot", "--train"], "--train trains on --demos"),
        (["--methods", "zero-shot", "--trained", trained_file, "--train-steps", "3"], "are for --train"),
        (["--methods", "zero-shot", "--trained-strengths", "0.1"], "--trained-strengths is for"),
        (["--methods", "zero-shot", "--train-objective", "preference"], "are for --train"),
    ]:
        assert main([str(a) for a in [*base, *wrong, "--out", tmp_path / "x"]]) == 2
        assert message in capsys.readouterr().err
