"""``icv condition`` and ``icv generate --when/--unless`` on a tiny model saved with a real tokenizer."""

from __future__ import annotations

import json

import pytest
from tiny import DEMOS, save_tiny_llama

import icv
from icv.cli import main
from icv.generation import complete

MATCHING = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa", "aa aaaa", "aaa", "ab aa", "aaaab"]
OTHER = ["zzz yy", "zz zzz", "z z z", "zzzzzz y", "yy zz", "zzz", "zy zz", "zzzzy"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditions-cli")
    model = folder / "model"
    save_tiny_llama(model)
    (folder / "a.txt").write_text("\n".join(MATCHING) + "\n\n")
    (folder / "z.txt").write_text("\n".join(OTHER))
    demos = folder / "warm.jsonl"
    demos.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in DEMOS))
    assert (
        main(
            [
                "extract",
                "--demos",
                str(demos),
                "--out",
                str(folder / "v.safetensors"),
                "--model",
                str(model),
                "--quiet",
            ]
        )
        == 0
    )
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cond_file(files):
    out = files / "a.condition.safetensors"
    code = main(
        [
            "condition",
            "--matching",
            str(files / "a.txt"),
            "--other",
            str(files / "z.txt"),
            "--out",
            str(out),
            "--model",
            str(files / "model"),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_condition_prints_its_choice_and_writes_the_file(files, cond_file, capsys):
    cond = icv.Condition.load(cond_file)
    assert cond.name == "a" and cond.f1 == 1.0
    code, out, err = run(
        capsys,
        "condition",
        "--matching",
        files / "a.txt",
        "--other",
        files / "z.txt",
        "--out",
        cond_file,
        "--model",
        files / "model",
        "--quiet",
        "--force",
        "--name",
        "letters",
    )
    assert code == 0
    assert (
        out.startswith(f"letters: layer {cond.layer}, score {cond.comparison} ")
        and "held-out F1 1.000" in out
    )
    assert "tp=4 fp=0 tn=4 fn=0" in out


def test_condition_errors_are_one_line(files, cond_file, capsys):
    code, _, err = run(
        capsys,
        "condition",
        "--matching",
        files / "a.txt",
        "--other",
        files / "z.txt",
        "--out",
        cond_file,
        "--quiet",
    )
    assert code == 1 and "exists" in err
    code, _, err = run(
        capsys,
        "condition",
        "--matching",
        files / "missing.txt",
        "--other",
        files / "z.txt",
        "--out",
        files / "x",
        "--quiet",
    )
    assert code == 1 and "cannot read texts" in err and "Traceback" not in err
    code, _, err = run(
        capsys,
        "condition",
        "--matching",
        files / "a.txt",
        "--other",
        files / "z.txt",
        "--out",
        files / "y",
        "--model",
        files / "model",
        "--quiet",
        "--held-out",
        "1.5",
    )
    assert code == 1 and "held_out" in err


@pytest.mark.parametrize("prompt,steered", [("aaaa a", True), ("zz zzzzzz", False)])
def test_generate_when_steers_only_matching_prompts(files, cond_file, capsys, prompt, steered):
    model, tokenizer = icv.load_model(files / "model")
    vector = icv.InContextVector.load(files / "v.safetensors")
    want = complete(
        model,
        tokenizer,
        [prompt],
        vector=vector if steered else None,
        strength=1.0,
        max_new_tokens=6,
        mode="add",
    )[0]
    unwanted = complete(
        model,
        tokenizer,
        [prompt],
        vector=None if steered else vector,
        strength=1.0,
        max_new_tokens=6,
        mode="add",
    )[0]
    assert want != unwanted  # the test has teeth
    args = [
        "generate",
        "--vector",
        files / "v.safetensors",
        "--strength",
        "1",
        "--mode",
        "add",
        "--max-new-tokens",
        "6",
    ]
    code, out, err = run(capsys, *args, "--when", cond_file, prompt)
    assert code == 0 and out == want + "\n"
    assert ("condition: steered" if steered else "condition: not steered") in err
    code, out, _ = run(capsys, *args, "--unless", cond_file, prompt)
    assert code == 0 and out == unwanted + "\n"


def test_generate_when_refuses_a_vector_file(files, capsys):
    code, _, err = run(
        capsys, "generate", "--vector", files / "v.safetensors", "--when", files / "v.safetensors", "hi"
    )
    assert code == 1 and "steering vector, not a condition" in err
