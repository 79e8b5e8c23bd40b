"""The ``icv`` command, on a tiny random model saved with a real (character-level) tokenizer."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tiny import DEMOS, save_tiny_llama

import icv
from icv import cli
from icv.arguments import layer_list, weighted_path
from icv.cli import COMMANDS, main
from icv.display import side_by_side
from icv.errors import DemoError, OptionError
from icv.generation import complete
from icv.gguf import additive_deltas, import_gguf
from icv.prompts import chat_prompt
from icv.strength import default_strength


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-model")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return icv.load_model(model_dir)


@pytest.fixture
def demos_file(tmp_path):
    path = tmp_path / "warm.jsonl"
    path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in DEMOS))
    return path


@pytest.fixture
def vec(model_dir, demos_file, tmp_path):
    out = tmp_path / "warm.safetensors"
    assert (
        main(["extract", "--demos", str(demos_file), "--out", str(out), "--model", str(model_dir), "--quiet"])
        == 0
    )
    return out


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- the parser -----------------------------------------------------------------------


def test_help_and_usage_errors(capsys):
    assert run(capsys, "--help")[0] == 0
    for command in COMMANDS:
        code, out, _ = run(capsys, command.name, "--help")
        assert code == 0 and command.summary in out
    assert run(capsys, "--version")[1].strip() == f"icv {icv.__version__}"
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "extract", "--out", "x.safetensors")[0] == 2  # --demos is required
    assert run(capsys, "extract", "--demos", "d.jsonl", "--out", "o", "--method", "svd")[0] == 2
    assert run(capsys, "extract", "--demos", "d.jsonl", "--out", "o", "--batch-size", "0")[0] == 2
    assert run(capsys, "generate", "--vector", "v", "--layers", "a-b", "hi")[0] == 2
    assert run(capsys, "generate", "--vector", "v", "--strength", "nan", "hi")[0] == 2
    assert run(capsys, "generate", "hi")[0] == 2  # --vector is required
    assert run(capsys, "combine", "--out", "o")[0] == 2
    code, _, err = run(capsys, "serve", "--max-batch", "0")
    assert code == 2 and "--max-batch: '0' must be at least 1" in err
    code, _, err = run(capsys, "serve", "--gather-ms", "-1")
    assert code == 2 and "--gather-ms: '-1' must not be negative" in err
    assert run(capsys, "export", "v", "--format", "onnx", "--out", "o")[0] == 2
    assert run(capsys, "import", "f.gguf")[0] == 2


def test_layer_lists_and_weights():
    assert layer_list("3,5-7,-1") == [3, 5, 6, 7, -1]
    assert layer_list(" 0 , 2 ") == [0, 2]
    for bad in ("", "a", "7-5", "1-", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            layer_list(bad)
    assert weighted_path("v.safetensors:0.5") == weighted_path("v.safetensors:5e-1")
    assert weighted_path("v.safetensors:-2").weight == -2.0
    assert weighted_path("v.safetensors").weight == 1.0
    assert weighted_path("C:/vectors/v.safetensors").path == "C:/vectors/v.safetensors"
    assert weighted_path("dir:with:colons/v.safetensors:3").path == "dir:with:colons/v.safetensors"


# -- extract --------------------------------------------------------------------------


def test_extract_writes_a_vector_of_the_model(vec, loaded):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    direct = icv.extract(model, tokenizer, DEMOS, name="warm")
    assert torch.allclose(vector.directions, direct.directions, atol=1e-5)
    assert vector.name == "warm" and vector.metadata["num_demos"] == len(DEMOS)
    assert vector.metadata["model_name"] == str(Path(model.config._name_or_path))


def test_extract_options(model_dir, demos_file, tmp_path, capsys):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in DEMOS))
    out = tmp_path / "mean.safetensors"
    code, stdout, _ = run(
        capsys,
        "extract",
        "--demos",
        tsv,
        "--out",
        out,
        "--model",
        model_dir,
        "--method",
        "mean",
        "--layers",
        "1-2",
        "--mode",
        "add",
        "--strength",
        "0.3",
        "--name",
        "m",
        "--batch-size",
        "3",
    )
    assert code == 0 and "wrote" in stdout
    vector = icv.InContextVector.load(out)
    m = vector.metadata
    assert (m["method"], m["injection_mode"], m["injection_site"], m["recommended_strength"], m["name"]) == (
        "mean",
        "add",
        "block",
        0.3,
        "m",
    )
    assert torch.equal(vector.directions[0], torch.zeros(vector.hidden_size))
    assert bool((vector.layer_norms()[1:] > 0.99).all())


def test_extract_preset_paper(model_dir, tmp_path, capsys, loaded):
    demos = tmp_path / "punctuated.jsonl"
    pairs = [
        ("I didn't like it - at all.", "I liked it, a lot!"),
        ("Don't go; it's bad.", "Do go: it's good."),
        ("What a waste?!", "What a treat."),
    ]
    demos.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in pairs))
    out = tmp_path / "paper.safetensors"
    code, _, _ = run(
        capsys,
        "extract",
        "--demos",
        demos,
        "--out",
        out,
        "--model",
        model_dir,
        "--preset",
        "paper",
        "--quiet",
    )
    assert code == 0
    vector = icv.InContextVector.load(out)
    assert (vector.metadata["preset"], vector.metadata["text_cleaning"]) == ("paper", "reference")
    model, tokenizer = loaded
    assert torch.allclose(
        vector.directions, icv.extract(model, tokenizer, pairs, preset="paper").directions, atol=1e-5
    )
    code, _, err = run(
        capsys,
        "extract",
        "--demos",
        demos,
        "--out",
        tmp_path / "x.safetensors",
        "--model",
        model_dir,
        "--preset",
        "paper",
        "--method",
        "mean",
    )
    assert code == 1 and "preset='paper'" in err


def test_extract_templates_plain_and_chat(model_dir, demos_file, loaded, tmp_path, capsys):
    model, tokenizer = loaded
    reply = icv.chat_reply_template(tokenizer)
    assert reply.format(text="TEXT") == "<user>Say something.\n<assistant>TEXT"
    for option, template in ((["--chat"], reply), (["--template", "Review: {text}"], "Review: {text}")):
        out = tmp_path / f"{len(template)}.safetensors"
        code, _, _ = run(
            capsys, "extract", "--demos", demos_file, "--out", out, "--model", model_dir, "--quiet", *option
        )
        assert code == 0
        vector = icv.InContextVector.load(out)
        assert vector.metadata["prompt_template"] == template
        assert vector.equal(icv.extract(model, tokenizer, DEMOS, template=template, name="warm"))
    code, _, err = run(
        capsys,
        "extract",
        "--demos",
        demos_file,
        "--out",
        tmp_path / "x",
        "--template",
        "{oops}",
        "--model",
        tmp_path / "no-such-model",
    )
    assert code == 1 and "{text}" in err  # refused before any model loads
    assert (
        run(
            capsys,
            "extract",
            "--demos",
            demos_file,
            "--out",
            tmp_path / "x",
            "--chat",
            "--template",
            "{text}",
        )[0]
        == 2
    )


def test_extract_refuses_to_overwrite_without_force(vec, model_dir, demos_file, capsys):
    before = vec.read_bytes()
    code, _, err = run(capsys, "extract", "--demos", demos_file, "--out", vec, "--model", model_dir)
    assert code == 1 and "--force" in err and "Traceback" not in err
    assert vec.read_bytes() == before
    code, _, _ = run(
        capsys,
        "extract",
        "--demos",
        demos_file,
        "--out",
        vec,
        "--model",
        model_dir,
        "--quiet",
        "--force",
        "--method",
        "mean",
    )
    assert code == 0 and icv.InContextVector.load(vec).metadata["method"] == "mean"


def test_extract_errors_are_one_line_without_traceback(tmp_path, model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"source": "only"}\n')
    code, _, err = run(
        capsys, "extract", "--demos", bad, "--out", tmp_path / "o.safetensors", "--model", model_dir
    )
    assert code == 1 and err.strip().splitlines()[-1].startswith("icv: error:") and "bad.jsonl:2" in err
    assert "Traceback" not in err
    code, _, err = run(
        capsys, "extract", "--demos", tmp_path / "absent.csv", "--out", tmp_path / "o.safetensors"
    )
    assert code == 1 and "absent.csv" in err
    with pytest.raises(DemoError):
        main(
            [
                "--debug",
                "extract",
                "--demos",
                str(bad),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(model_dir),
            ]
        )
    with pytest.raises(DemoError):
        main(
            [
                "extract",
                "--demos",
                str(bad),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(model_dir),
                "--debug",
            ]
        )
    code, _, err = run(
        capsys,
        "extract",
        "--demos",
        bad.with_name("x.jsonl"),
        "--out",
        tmp_path / "o",
        "--model",
        tmp_path / "no-such-model",
    )
    assert code == 1


def test_extract_layer_out_of_range_is_an_error(model_dir, demos_file, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "extract",
        "--demos",
        demos_file,
        "--out",
        tmp_path / "o.safetensors",
        "--model",
        model_dir,
        "--layers",
        "7",
        "--quiet",
    )
    assert code == 1 and "out of range" in err
    assert not (tmp_path / "o.safetensors").exists()
    (tmp_path / "a-file").write_text("")
    code, _, err = run(
        capsys, "extract", "--demos", demos_file, "--out", tmp_path / "a-file" / "o.safetensors"
    )
    assert code == 1 and "cannot make folder" in err  # refused before loading any model


def test_out_makes_missing_folders(demos_file, model_dir, tmp_path, capsys):
    # The README's first serving command on a fresh clone: --out vectors/positive.safetensors.
    out = tmp_path / "vectors" / "deeper" / "positive.safetensors"
    code, _, err = run(
        capsys, "extract", "--demos", demos_file, "--out", out, "--model", model_dir, "--quiet"
    )
    assert code == 0, err
    assert icv.InContextVector.load(out).num_layers > 0
    assert [p.name for p in out.parent.iterdir()] == ["positive.safetensors"]  # no temporary file left


# -- inspect --------------------------------------------------------------------------


def test_inspect_shows_metadata_and_what_varies_per_layer(vec, tmp_path, capsys):
    code, out, _ = run(capsys, "inspect", vec)
    assert code == 0
    assert "warm" in out and "3 x 32" in out and "rotate@mlp" in out and "steering guesses 0.5" in out
    note, *table = out.split("\n\n", 1)[1].splitlines()
    assert "every direction has norm 1" in note  # a fresh vector's directions are unit: no column of 1.0000
    assert table[0].split()[:4] == ["layer", "scale", "shift", "layer"]
    vector = icv.InContextVector.load(vec)
    cells = [float(x) for x in table[1].split()]
    assert cells[1::3] == pytest.approx(vector.layer_scales.tolist(), rel=1e-3)
    assert cells[2::3] == pytest.approx(vector.shift_norms().tolist(), rel=1e-3)
    assert len(set(cells[2::3])) == 3  # what varies from layer to layer
    assert run(capsys, "inspect", vec, "--columns", "1")[1].split("\n\n", 1)[1].count("\n") == 5
    scaled = tmp_path / "scaled.safetensors"
    InContextVector = icv.InContextVector
    InContextVector(
        vector.directions * torch.tensor([[1.0], [2.0], [0.5]]), vector.metadata, vector.layer_scales
    ).save(scaled)
    note, *table = run(capsys, "inspect", scaled)[1].split("\n\n", 1)[1].splitlines()
    assert table[0].split()[:3] == ["layer", "scale", "norm"] and "shift" not in note  # no shift recorded
    assert [float(x) for x in table[1].split()[2::3]] == pytest.approx([1.0, 2.0, 0.5], abs=1e-4)
    code, out, _ = run(capsys, "inspect", vec, "--json")
    report = json.loads(out)
    assert report["metadata"]["name"] == "warm" and len(report["layer_norms"]) == 3
    assert report["layer_norms"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert report["layer_scales"] == pytest.approx(vector.layer_scales.tolist())
    assert report["shift_norms"] == pytest.approx(vector.shift_norms().tolist())


def test_inspect_reads_gguf_and_refuses_garbage(vec, tmp_path, capsys):
    gguf_path = tmp_path / "v.gguf"
    assert run(capsys, "export", vec, "--out", gguf_path)[0] == 0
    code, out, _ = run(capsys, "inspect", gguf_path)
    assert code == 0 and "add@block" in out and "gguf" in out and "1 (for add@block)" in out
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    code, _, err = run(capsys, "inspect", junk)
    assert code == 1 and "icv: error:" in err and "Traceback" not in err
    assert run(capsys, "inspect", tmp_path / "absent.safetensors")[0] == 1


def test_a_closed_pipe_ends_quietly(vec, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["inspect", str(vec)]) == 1


# -- generate -------------------------------------------------------------------------


def test_generate_prints_the_steered_completion(vec, loaded, capsys):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    expected = complete(model, tokenizer, ["the room was"], vector=vector, strength=0.5, max_new_tokens=6)[0]
    code, out, _ = run(
        capsys, "generate", "--vector", vec, "--strength", "0.5", "--max-new-tokens", "6", "the room was"
    )
    assert code == 0 and out == expected + "\n"  # the model comes from the vector's metadata


def test_generate_compare_reads_stdin_and_weights(vec, loaded, model_dir, tmp_path, monkeypatch, capsys):
    model, tokenizer = loaded
    other = tmp_path / "cold.jsonl"
    other.write_text("".join(json.dumps({"source": t, "target": s}) + "\n" for s, t in DEMOS))
    cold = tmp_path / "cold.safetensors"
    assert run(capsys, "extract", "--demos", other, "--out", cold, "--model", model_dir, "--quiet")[0] == 0
    mix = icv.InContextVector.load(vec) * 0.5 + icv.InContextVector.load(cold) * -2.0
    # One batch: the unsteered row is strength 0 (bitwise unsteered), the steered row strength 1.
    plain, steered = complete(
        model,
        tokenizer,
        ["a meal"] * 2,
        vector=mix,
        strength=[0.0, 1.0],
        mode="add",
        layers=[1, 2],
        max_new_tokens=5,
    )
    assert plain == complete(model, tokenizer, ["a meal"], max_new_tokens=5)[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("a meal\n"))
    code, out, _ = run(
        capsys,
        "generate",
        "--vector",
        f"{vec}:0.5",
        "--vector",
        f"{cold}:-2",
        "--model",
        model_dir,
        "--strength",
        "1",
        "--mode",
        "add",
        "--layers",
        "1-2",
        "--max-new-tokens",
        "5",
        "--compare",
    )
    assert code == 0
    assert out == side_by_side(None, {"unsteered": [plain], "1": [steered]}) + "\n"


def test_generate_shows_several_strengths_side_by_side_in_one_batch(vec, loaded, capsys, monkeypatch):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    rows = complete(
        model, tokenizer, ["the room"] * 4, vector=vector, strength=[0.0, 0.2, 0.4, 0.8], max_new_tokens=6
    )
    calls = []
    generate = type(model).generate  # the command loads its own copy of the model: count on the class
    monkeypatch.setattr(
        type(model), "generate", lambda self, *a, **k: calls.append(k) or generate(self, *a, **k)
    )
    code, out, _ = run(
        capsys,
        "generate",
        "--vector",
        vec,
        "--strength",
        "0.2,0.4,0.8",
        "--compare",
        "--max-new-tokens",
        "6",
        "the room",
    )
    assert code == 0 and len(calls) == 1  # one batched generation for all four rows
    assert out.splitlines() == [
        f"unsteered | {rows[0]}",
        f"0.2       | {rows[1]}",
        f"0.4       | {rows[2]}",
        f"0.8       | {rows[3]}",
    ]
    assert run(capsys, "generate", "--vector", vec, "--strength", "0.2,0.2", "x")[0] == 2


def test_generate_labels_say_where_the_strength_came_from(vec, tmp_path, capsys):
    guess = default_strength("rotate", 3)
    code, out, err = run(capsys, "generate", "--vector", vec, "--compare", "--max-new-tokens", "2", "hi")
    assert code == 0 and out.splitlines()[1].startswith(f"{guess:g} (default) | ")
    assert "recommended" not in out and f"using {guess:g}" in err  # the guess is said, not hidden
    recommended = tmp_path / "recommended.safetensors"
    icv.InContextVector.load(vec).with_metadata(recommended_strength=0.3).save(recommended)
    code, out, err = run(
        capsys, "generate", "--vector", recommended, "--compare", "--max-new-tokens", "2", "hi"
    )
    assert code == 0 and out.splitlines()[1].startswith("0.3 (recommended) | ") and "warning" not in err
    code, out, _ = run(
        capsys,
        "generate",
        "--vector",
        recommended,
        "--mode",
        "add",
        "--compare",
        "--max-new-tokens",
        "2",
        "hi",
    )
    assert out.splitlines()[1].startswith(
        f"{default_strength('add', 3):g} (default) | "
    )  # an angle is no additive strength


def test_generate_samples_repeatably_with_a_seed(vec, loaded, capsys):
    sample = [
        "generate",
        "--vector",
        vec,
        "--strength",
        "0.5",
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.5",
        "--top-p",
        "0.95",
        "the room",
    ]
    first, second = run(capsys, *sample, "--seed", "3"), run(capsys, *sample, "--seed", "3")
    assert first[0] == 0 and first[1] == second[1]
    others = {run(capsys, *sample, "--seed", str(seed))[1] for seed in range(4, 8)}
    greedy = run(
        capsys, "generate", "--vector", vec, "--strength", "0.5", "--max-new-tokens", "12", "the room"
    )[1]
    assert len(others | {first[1]}) > 1 and others != {greedy}
    assert (
        run(capsys, "generate", "--vector", vec, "--top-p", "0.9", "x")[0] == 2
    )  # sampling options need --temperature
    assert run(capsys, "generate", "--vector", vec, "--temperature", "-1", "x")[0] == 2


def test_generate_streams_the_same_text(vec, capsys):
    argv = ["generate", "--vector", vec, "--strength", "0.5", "--max-new-tokens", "8", "the room was"]
    streamed, printed = run(capsys, *argv, "--stream"), run(capsys, *argv, "--no-stream")
    assert streamed[0] == 0 and streamed[1] == printed[1]
    assert run(capsys, *argv, "--stream", "--compare")[0] == 2


def test_generate_interactive_keeps_the_model_and_changes_settings(
    vec, loaded, tmp_path, monkeypatch, capsys
):
    model, tokenizer = loaded
    vector = icv.InContextVector.load(vec)
    doubled = tmp_path / "doubled.safetensors"
    (vector * 2).save(doubled)
    lines = [
        "the room",
        "/strength 0.2,0.4",
        "the room",
        f"/vector {doubled}:0.5",
        "/compare on",
        "/strength 0.4",
        "the room",
        "/frobnicate",
        "/strength zero",
        "/tokens 3",
        "/settings",
        "/quit",
        "never read",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    loads = []
    monkeypatch.setattr(
        "icv.models.load_model", lambda *a, load=icv.models.load_model, **k: loads.append(a) or load(*a, **k)
    )
    code, out, err = run(
        capsys, "generate", "--vector", vec, "--strength", "0.5", "--max-new-tokens", "5", "-i"
    )
    assert code == 0 and len(loads) == 1  # the model is loaded once

    def batch(v, strengths):
        return complete(
            model, tokenizer, ["the room"] * len(strengths), vector=v, strength=strengths, max_new_tokens=5
        )

    one = batch(vector, [0.5])
    two = batch(vector, [0.2, 0.4])
    mixed = batch(vector * 2 * 0.5, [0.0, 0.4])
    expected = "\n".join(
        [
            one[0],
            side_by_side(None, {"0.2": [two[0]], "0.4": [two[1]]}),
            side_by_side(None, {"unsteered": [mixed[0]], "0.4": [mixed[1]]}),
        ]
    )
    assert out.startswith(expected + "\n")
    assert "3 new tokens" in out.splitlines()[-1] and "doubled.safetensors:0.5" in out.splitlines()[-1]
    assert "unknown command /frobnicate" in err and "'zero' is not a number" in err


def test_generate_interactive_refuses_a_prompt_argument_and_survives_bad_vectors(
    vec, tmp_path, monkeypatch, capsys
):
    assert run(capsys, "generate", "--vector", vec, "-i", "hello")[0] == 2
    wide = tmp_path / "wide.safetensors"
    icv.InContextVector(torch.ones(3, 48), icv.InContextVector.load(vec).metadata).save(wide)
    monkeypatch.setattr(
        sys, "stdin", io.StringIO(f"/vector {wide}\n/vector {tmp_path / 'absent.safetensors'}\n/help\n")
    )
    code, out, err = run(capsys, "generate", "--vector", vec, "-i")
    assert code == 0 and "/strength" in out  # /help, after two refused vectors
    assert err.count("icv: error:") == 2 and "48" in err


def test_generate_chat_uses_the_template(vec, loaded, capsys):
    model, tokenizer = loaded
    text = chat_prompt(tokenizer, "hello")
    assert text == "<user>hello\n<assistant>"
    expected = complete(model, tokenizer, [text], vector=icv.InContextVector.load(vec), max_new_tokens=4)[0]
    code, out, _ = run(capsys, "generate", "--vector", vec, "--chat", "--max-new-tokens", "4", "hello")
    assert code == 0 and out == expected + "\n"


def test_chat_without_a_template_is_an_error(tokenizer):
    for make in (chat_prompt, icv.chat_reply_template):
        with pytest.raises(OptionError, match="no chat template .a base model, such as Gemma 3 270M"):
            make(tokenizer, "hello")


def test_generate_bad_input(vec, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("   \n"))
    assert run(capsys, "generate", "--vector", vec)[0] == 2  # empty prompt on stdin
    code, _, err = run(capsys, "generate", "--vector", tmp_path / "absent.safetensors", "hi")
    assert code == 1 and "absent.safetensors" in err
    code, _, err = run(capsys, "generate", "--vector", vec, "--layers", "9", "--max-new-tokens", "2", "hi")
    assert code == 1 and "out of range" in err


def test_generate_refuses_a_vector_of_another_model(vec, tmp_path, capsys):
    wide = icv.InContextVector(
        torch.ones(3, 48), {**icv.InContextVector.load(vec).metadata, "model_name": ""}
    )
    wide.save(tmp_path / "wide.safetensors")
    code, _, err = run(
        capsys, "generate", "--vector", tmp_path / "wide.safetensors", "--model", vec.parent.parent, "hi"
    )
    assert code == 1


def test_generate_takes_a_model_of_another_name_unless_strict(vec, model_dir, tmp_path, capsys):
    renamed = icv.InContextVector.load(vec).with_metadata(model_name="someone/fine-tune")
    renamed.save(tmp_path / "renamed.safetensors")
    code, out, err = run(
        capsys,
        "generate",
        "--vector",
        tmp_path / "renamed.safetensors",
        "--model",
        model_dir,
        "--max-new-tokens",
        "2",
        "hi",
    )
    assert code == 0 and out and "model names differ" in err
    code, _, err = run(
        capsys,
        "generate",
        "--vector",
        tmp_path / "renamed.safetensors",
        "--model",
        model_dir,
        "--strict",
        "--max-new-tokens",
        "2",
        "hi",
    )
    assert code == 1 and "strict" in err


# -- combine --------------------------------------------------------------------------


def test_combine_weighted_sum(vec, tmp_path, capsys):
    out = tmp_path / "mix.safetensors"
    code, stdout, _ = run(capsys, "combine", f"{vec}:2", f"{vec}:-0.5", "--out", out, "--name", "mix")
    assert code == 0 and "wrote" in stdout
    mix = icv.InContextVector.load(out)
    original = icv.InContextVector.load(vec)
    torch.testing.assert_close(mix.directions, 1.5 * original.directions)
    assert mix.name == "mix" and mix.metadata["method"] == "combination"
    assert run(capsys, "combine", vec, "--out", out)[0] == 1  # exists, no --force
    assert run(capsys, "combine", vec, "--out", out, "--force")[0] == 0


def test_combine_refuses_vectors_of_different_models(vec, tmp_path, capsys):
    meta = icv.InContextVector.load(vec).metadata
    other = icv.InContextVector(torch.ones(4, 32), {**meta, "model_name": "someone/else"})
    other.save(tmp_path / "other.safetensors")
    code, _, err = run(
        capsys, "combine", vec, tmp_path / "other.safetensors", "--out", tmp_path / "o.safetensors"
    )
    assert code == 1 and "different models" in err and not (tmp_path / "o.safetensors").exists()


# -- export / import ------------------------------------------------------------------


def test_export_then_import_round_trips(vec, tmp_path, capsys):
    gguf_path, back = tmp_path / "v.gguf", tmp_path / "back.safetensors"
    code, out, err = run(capsys, "export", vec, "--format", "gguf", "--out", gguf_path, "--strength", "0.4")
    assert code == 0 and "--control-vector" in out and "block 0" in err and "note:" in err
    code, out, _ = run(capsys, "import", gguf_path, "--out", back)
    assert code == 0
    original, imported = icv.InContextVector.load(vec), icv.InContextVector.load(back)
    assert torch.equal(imported.directions[1:], additive_deltas(original, 0.4)[1:])
    assert torch.equal(imported.directions[0], torch.zeros(original.hidden_size))
    assert imported.metadata["injection_mode"] == "add" and imported.name == "warm"
    assert import_gguf(gguf_path).equal(imported)


def test_import_options_and_bad_files(vec, tmp_path, capsys):
    gguf_path = tmp_path / "v.gguf"
    assert run(capsys, "export", vec, "--out", gguf_path)[0] == 0
    out = tmp_path / "wide.safetensors"
    code, _, _ = run(
        capsys,
        "import",
        gguf_path,
        "--out",
        out,
        "--num-layers",
        "5",
        "--model-type",
        "mistral",
        "--name",
        "n",
    )
    assert code == 0
    vector = icv.InContextVector.load(out)
    assert (vector.num_layers, vector.metadata["model_type"], vector.name) == (5, "mistral", "n")
    assert run(capsys, "import", gguf_path, "--out", out)[0] == 1  # exists
    code, _, err = run(capsys, "import", vec, "--out", tmp_path / "x.safetensors")
    assert code == 1 and "not a valid GGUF" in err and "Traceback" not in err
    code, _, err = run(capsys, "import", gguf_path, "--out", tmp_path / "x.safetensors", "--num-layers", "2")
    assert code == 1 and "direction.2" in err


def test_export_refuses_existing_output_and_bad_vectors(vec, tmp_path, capsys):
    target = tmp_path / "v.gguf"
    target.write_bytes(b"mine")
    code, _, err = run(capsys, "export", vec, "--out", target)
    assert code == 1 and "--force" in err and target.read_bytes() == b"mine"
    assert run(capsys, "export", vec, "--out", target, "--force")[0] == 0
    junk = tmp_path / "junk.safetensors"
    junk.write_text("{}")
    assert run(capsys, "export", junk, "--out", tmp_path / "j.gguf")[0] == 1


def test_python_dash_m_icv_runs():
    result = subprocess.run(
        [sys.executable, "-m", "icv", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == f"icv {icv.__version__}"
    result = subprocess.run(
        [sys.executable, "-m", "icv", "inspect"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "VEC" in result.stderr


# -- the embedded model ---------------------------------------------------------------


@pytest.mark.real_model
def test_cli_on_the_embedded_model(real, tmp_path, capsys):
    model, tokenizer = real
    demos = tmp_path / "positive.csv"
    demos.write_text("".join(f'"{s}","{t}"\n' for s, t in DEMOS))
    out = tmp_path / "positive.safetensors"
    assert run(capsys, "extract", "--demos", demos, "--out", out, "--quiet")[0] == 0
    vector = icv.InContextVector.load(out)
    assert vector.metadata["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and vector.num_layers == 30
    code, text, _ = run(
        capsys,
        "generate",
        "--vector",
        out,
        "--chat",
        "--compare",
        "--max-new-tokens",
        "4",
        "Describe the hotel room.",
    )
    prompt = chat_prompt(tokenizer, "Describe the hotel room.")
    plain = complete(model, tokenizer, [prompt], max_new_tokens=4)[0]
    guess = icv.strength.default_strength("rotate", 30)
    assert code == 0 and text.startswith(f"unsteered      | {plain.strip()}\n{guess:g} (default) | ")


def test_eval_subcommand_is_wired_and_checks_its_arguments(tmp_path, capsys):
    from icv.cli import main

    demos = tmp_path / "d.jsonl"
    demos.write_text('{"source": "bad", "target": "good"}\n')
    inputs = tmp_path / "in.txt"
    inputs.write_text("the food was bad .\n")
    code = main(
        [
            "eval",
            "--demos",
            str(demos),
            "--inputs",
            str(inputs),
            "--style",
            "positive",
            "--strengths",
            "0.05,x",
        ]
    )
    assert code == 2  # the same strength list as generate's --strength: a usage error
    assert "'x' is not a number" in capsys.readouterr().err
    assert main(["eval", "--demos", str(demos)]) == 2  # --inputs and --style are required


# -- the command line's own behaviour (startup, --quiet, argument forms) ---------------


def test_help_and_usage_errors_do_not_import_torch():
    probe = (
        "import sys\n"
        "from icv.cli import COMMANDS, main\n"
        "codes = [main(['--help']), main(['--version'])] + [main([c.name, '--help']) for c in COMMANDS]\n"
        "codes.append(main(['generate', '--vector', 'v', '--layers', 'a', 'hi']))\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'numpy'})\n"
        "print(codes, heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    codes, heavy = result.stderr.strip().splitlines()[-1].rsplit("] [", 1)
    assert codes.strip("[").split(", ")[-1] == "2" and set(codes.strip("[").split(", ")[:-1]) == {"0"}
    assert heavy == "]", f"icv --help imported {heavy}"


def test_quiet_silences_loading_messages_and_bars(model_dir, demos_file, tmp_path, capsys):
    code, _, err = run(
        capsys, "extract", "--demos", demos_file, "--out", tmp_path / "a.safetensors", "--model", model_dir
    )
    assert code == 0 and "loading model" in err and "Loading weights" in err
    for i, argv in enumerate((["--quiet", "extract"], ["extract", "--quiet"])):
        out = tmp_path / f"{i}.safetensors"
        code, _, err = run(capsys, *argv, "--demos", demos_file, "--out", out, "--model", model_dir)
        assert code == 0 and err == ""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # restored after the command


def test_combine_says_a_weight_is_not_a_number(vec, tmp_path, capsys):
    code, _, err = run(capsys, "combine", f"{vec}:abc", "--out", tmp_path / "o.safetensors")
    assert code == 2 and "weight of" in err and "not a number: 'abc'" in err
    odd = tmp_path / "odd:name.safetensors"
    odd.write_bytes(vec.read_bytes())
    assert weighted_path(str(odd)) == weighted_path(f"{odd}:1")
    assert weighted_path("x:y/v.gguf").path == "x:y/v.gguf"
    with pytest.raises(Exception, match="not a number"):
        weighted_path(f"{tmp_path}/absent:b")


def test_layer_ranges_may_count_from_the_end(vec, loaded, capsys):
    assert layer_list("-20--18,-1") == [-20, -19, -18, -1]
    with pytest.raises(Exception, match="mixes"):
        layer_list("-5-3")
    with pytest.raises(Exception, match="backwards"):
        layer_list("-1--3")
    model, tokenizer = loaded
    expected = complete(
        model,
        tokenizer,
        ["hi"],
        vector=icv.InContextVector.load(vec),
        strength=0.5,
        layers=[1, 2],
        max_new_tokens=4,
    )[0]
    code, out, _ = run(
        capsys,
        "generate",
        "--vector",
        vec,
        "--strength",
        "0.5",
        "--layers=-2--1",
        "--max-new-tokens",
        "4",
        "hi",
    )
    assert code == 0 and out == expected + "\n"


def test_eval_with_a_saved_vector_needs_no_demos_and_shows_outputs(vec, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("the food was bad\nslow service\n")
    common = [
        "eval",
        "--inputs",
        inputs,
        "--style",
        "positive",
        "--no-fluency",
        "--max-new-tokens",
        "3",
        "--out",
        tmp_path / "report",
    ]
    code, _, err = run(capsys, *common, "--methods", "icv")
    assert code == 2 and "--demos is needed" in err
    # The model comes from the vector, as for generate.
    code, out, err = run(
        capsys,
        "--quiet",
        *common,
        "--vector",
        vec,
        "--methods",
        "zero-shot,icv",
        "--strengths",
        "0.5",
        "--show",
    )
    assert code == 0 and err == ""
    shown = out.split("[1] the food was bad\n", 1)[1]
    assert shown.splitlines()[0].startswith("    zero-shot | ") and shown.splitlines()[1].startswith(
        "    icv @ 0.5 | "
    )
    assert "[2] slow service" in shown
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert [r["outputs"][0] or "(empty)" for r in report["results"]] == [
        line.split(" | ", 1)[1] for line in shown.splitlines()[:2]
    ]


class _MixedDeprecation(UserWarning, DeprecationWarning):
    """Like pyparsing's deprecations, which matplotlib triggers: both kinds at once."""


def test_the_cli_shows_warnings_for_the_user_not_deprecations(capsys, vec, monkeypatch):
    read = cli.inspect.read_vector

    def noisy(path):
        warnings.warn("old API", DeprecationWarning, stacklevel=2)
        warnings.warn("old name", _MixedDeprecation, stacklevel=2)
        warnings.warn("soon old", PendingDeprecationWarning, stacklevel=2)
        warnings.warn("for the user", UserWarning, stacklevel=2)
        return read(path)

    monkeypatch.setattr(cli.inspect, "read_vector", noisy)
    code, _, err = run(capsys, "inspect", vec)
    assert code == 0 and err == "icv: warning: for the user\n"
