"""``icv train`` and what ``icv inspect`` shows of a trained vector."""

from __future__ import annotations

import json

import pytest
from tiny import save_tiny_llama

import icv
from icv.cli import main

PAIRS = [(f"{word} was bad", "ok") for word in ("food", "room", "staff", "soup", "bed", "car", "view", "tea")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-train")
    save_tiny_llama(folder)
    return folder


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in PAIRS))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_a_trained_vector_and_inspect_shows_it(model_dir, pairs_file, tmp_path, capsys):
    start = tmp_path / "start.safetensors"
    assert (
        run(capsys, "extract", "--demos", pairs_file, "--out", start, "--model", model_dir, "--quiet")[0] == 0
    )
    out = tmp_path / "trained.safetensors"
    code, text, err = run(
        capsys,
        "train",
        "--demos",
        pairs_file,
        "--out",
        out,
        "--model",
        model_dir,
        "--init",
        start,
        "--level",
        "directions",
        "--steps",
        "4",
        "--strength",
        "0.3",
        "--quiet",
    )
    assert code == 0, err
    assert "held-out loss" in text and "4 steps" in text
    vec = icv.InContextVector.load(out)
    record = vec.metadata["training"]
    assert (record["level"], record["steps"], record["pairs"], record["strength"]) == (
        "directions",
        4,
        8,
        0.3,
    )
    assert vec.recommended_strength == 0.3 and vec.name == "ok"
    code, shown, _ = run(capsys, "inspect", out)
    assert code == 0
    assert "trained               directions by teacher, 4 steps" in shown
    assert f"on 8 pairs (sha256 {record['pairs_sha256'][:12]})" in shown
    assert "held-out loss" in shown and "from 'ok'" in shown
    code, plain, _ = run(capsys, "inspect", start)
    assert code == 0 and "\ntrained " not in plain
    # An existing --out is refused before any work, as extract does.
    code, _, err = run(capsys, "train", "--demos", pairs_file, "--out", out, "--model", model_dir, "--quiet")
    assert code == 1 and "--force" in err


def test_train_errors_are_one_line(model_dir, pairs_file, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    code, _, err = run(
        capsys,
        "train",
        "--demos",
        pairs_file,
        "--out",
        out,
        "--model",
        model_dir,
        "--held-out",
        "1",
        "--quiet",
    )
    assert code == 1 and "held_out must be a share below 1" in err and "Traceback" not in err
    assert run(capsys, "train", "--demos", pairs_file, "--out", out, "--level", "weights")[0] == 2
    assert not out.exists()


def test_train_objective_distillation_is_recorded_and_shown(model_dir, pairs_file, tmp_path, capsys):
    out = tmp_path / "distilled.safetensors"
    argv = ["train", "--demos", pairs_file, "--out", out, "--model", model_dir, "--steps", "2", "--quiet"]
    code, text, err = run(capsys, *argv, "--objective", "distillation")
    assert code == 0, err
    assert icv.InContextVector.load(out).metadata["training"]["objective"] == "distillation"
    code, shown, _ = run(capsys, "inspect", out)
    assert code == 0 and "coefficients by distillation, 2 steps" in shown
    other = tmp_path / "other.safetensors"
    assert run(capsys, *argv[:4], other, "--objective", "rl")[0] == 2
    assert not other.exists()


def test_train_objective_preference_takes_beta(model_dir, pairs_file, tmp_path, capsys):
    out = tmp_path / "preferred.safetensors"
    argv = ["train", "--demos", pairs_file, "--out", out, "--model", model_dir, "--steps", "2", "--quiet"]
    code, _, err = run(capsys, *argv, "--objective", "preference", "--beta", "0.3")
    assert code == 0, err
    record = icv.InContextVector.load(out).metadata["training"]
    assert (record["objective"], record["beta"]) == ("preference", 0.3)
    code, shown, _ = run(capsys, "inspect", out)
    assert code == 0 and "coefficients by preference, 2 steps" in shown
    other = tmp_path / "other.safetensors"
    code, _, err = run(capsys, *argv[:4], other, "--objective", "preference", "--beta", "0")
    assert code == 1 and "beta must be above 0" in err and "Traceback" not in err
    assert not other.exists()
