"""``icv.evaluate(..., when=)`` and ``icv eval --when/--unless``: the steered arms gated per input.

On a tiny random model: rows the rule rejects are the zero-shot arm's outputs (the unsteered
model on the same prompt), rows it accepts are the ungated arm's, and the report says per arm
how many rows were steered; rules written on the command line are parsed (``a & ~a`` steers
nothing, ``a | ~a`` everything).  The other engines' gated sweeps: tests/test_conditions_engines.py
(a server) and tests/with_vllm/test_vllm_sweep.py (vLLM).
"""

from __future__ import annotations

import json

import pytest
import torch
from evaluation_fakes import DEMOS, DecodingTokenizer, overlap, vowels
from tiny import save_tiny_llama

import icv
from icv.cli import main
from icv.errors import OptionError
from icv.evaluate import evaluate
from icv.gate import read_prompt_states, readings_of, scores_of
from icv.generation import left_padded
from icv.prompts import paraphrase_prompt

INPUTS = ["the food was cold", "slow service", "meh", "we waited an hour", "great"]
MATCHING = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa", "aa aaaa", "aaa", "ab aa", "aaaab"]
OTHER = ["zzz yy", "zz zzz", "z z z", "zzzzzz y", "yy zz", "zzz", "zy zz", "zzzzy"]
STRENGTHS = [0.3, 0.6]


@pytest.fixture
def tok():
    return DecodingTokenizer()


@pytest.fixture
def cond(llama, tok):
    return icv.extract_condition(llama, tok, MATCHING, OTHER, name="a")


def run_eval(llama, tok, **kwargs):
    return evaluate(
        llama,
        tok,
        DEMOS,
        INPUTS,
        style=vowels(),
        content=overlap(),
        scorers=[],
        strengths=STRENGTHS,
        methods=["zero-shot", "icv"],
        max_new_tokens=6,
        batch_size=4,
        **kwargs,
    )


def split_condition(llama, tok, cond):
    """``cond`` with its threshold moved between the eval prompts' scores: some rows fire, some do not."""
    batch = left_padded(tok, [paraphrase_prompt(x) for x in INPUTS], torch.device("cpu"))
    states = read_prompt_states(llama, batch["input_ids"], batch["attention_mask"], readings_of([cond]))
    scores = sorted(scores_of([cond], states)[cond].tolist())
    return cond.with_threshold((scores[1] + scores[2]) / 2, ">")


def test_gated_arms_mix_steered_and_unsteered_rows_per_input(llama, tok, cond):
    plain = run_eval(llama, tok)
    gated = run_eval(llama, tok, when=split_condition(llama, tok, cond))
    zero = plain.result("zero-shot").outputs
    assert gated.settings["when"] == "a"
    for strength in STRENGTHS:
        ungated, result = plain.result("icv", strength), gated.result("icv", strength)
        assert ungated.fired is None and ungated.steered_rows is None
        assert result.fired is not None and result.steered_rows == 3  # 2 of the 5 scores below
        assert ungated.outputs != zero  # the steering changes outputs: the test has teeth
        for i, fired in enumerate(result.fired):
            assert result.outputs[i] == (ungated.outputs[i] if fired else zero[i])
    assert gated.result("zero-shot").fired is None
    table = gated.markdown()
    assert "steered rows" in table and "| 3/5 |" in table and "steered rows" not in plain.markdown()
    row = gated.to_dict()["results"][1]
    assert row["fired"] == gated.result("icv", STRENGTHS[0]).fired


def test_rules_that_accept_everything_or_nothing(llama, tok, cond):
    plain = run_eval(llama, tok)
    everything = run_eval(llama, tok, when=cond | ~cond)
    nothing = run_eval(llama, tok, when=cond & ~cond)
    for strength in STRENGTHS:
        assert everything.result("icv", strength).outputs == plain.result("icv", strength).outputs
        assert everything.result("icv", strength).steered_rows == len(INPUTS)
        assert nothing.result("icv", strength).outputs == plain.result("zero-shot").outputs
        assert nothing.result("icv", strength).steered_rows == 0


def test_when_is_checked(llama, tok, cond):
    vector = icv.extract(llama, tok, DEMOS)
    with pytest.raises(OptionError, match="when= takes an icv.Condition"):
        run_eval(llama, tok, when=vector)
    with pytest.raises(OptionError, match="when= takes an icv.Condition"):  # checked on every engine
        run_eval(llama, tok, when=vector, engine="server", url="http://127.0.0.1:9")


# -- the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conditions-eval")
    save_tiny_llama(folder / "model")
    (folder / "a.txt").write_text("\n".join(MATCHING))
    (folder / "z.txt").write_text("\n".join(OTHER))
    (folder / "in.txt").write_text("\n".join(INPUTS[:3]) + "\n")
    demos = folder / "demos.jsonl"
    demos.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in DEMOS))
    common = ["--model", str(folder / "model"), "--quiet"]
    assert main(["extract", "--demos", str(demos), "--out", str(folder / "v.safetensors"), *common]) == 0
    cond = ["condition", "--matching", str(folder / "a.txt"), "--other", str(folder / "z.txt")]
    assert main([*cond, "--out", str(folder / "a.safetensors"), *common]) == 0
    return folder


def eval_report(files, capsys, out, *options):
    argv = [
        "eval",
        "--model",
        files / "model",
        "--vector",
        files / "v.safetensors",
        "--inputs",
        files / "in.txt",
        "--style",
        "positive",
        "--methods",
        "zero-shot,icv",
        "--strengths",
        "1",
        "--mode",
        "add",
        "--max-new-tokens",
        "4",
        "--no-fluency",
        "--quiet",
        "--out",
        files / out,
        *options,
    ]
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads((files / out / "eval.json").read_text()), captured.out


def test_eval_when_takes_files_and_rules(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    plain, _ = eval_report(files, capsys, "plain")
    zero, steered = plain["results"][0]["outputs"], plain["results"][1]["outputs"]
    assert zero != steered
    nothing, shown = eval_report(files, capsys, "nothing", "--when", "a.safetensors & ~a.safetensors")
    assert nothing["settings"]["when"] == "(a & ~a)"
    assert nothing["results"][1]["outputs"] == zero and nothing["results"][1]["fired"] == [False] * 3
    assert "| 0/3 |" in shown
    everything, shown = eval_report(
        files,
        capsys,
        "everything",
        "--when",
        files / "a.safetensors",
        "--unless",
        "a.safetensors & ~a.safetensors",
    )
    decided = everything["results"][1]["fired"]
    for i, fired in enumerate(decided):
        assert everything["results"][1]["outputs"][i] == (steered[i] if fired else zero[i])
    assert f"| {sum(decided)}/3 |" in shown


def test_eval_when_errors(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    base = [
        "eval",
        "--vector",
        "v.safetensors",
        "--inputs",
        "in.txt",
        "--style",
        "positive",
        "--methods",
        "icv",
    ]
    assert main([*base, "--methods", "zero-shot", "--when", "a.safetensors"]) == 2
    assert "add icv or icl+icv" in capsys.readouterr().err
    assert main([*base, "--when", "a.safetensors & ~missing.safetensors"]) == 1
    err = capsys.readouterr().err
    assert "no condition file 'missing.safetensors'" in err and "Traceback" not in err
    assert main([*base, "--when", "v.safetensors"]) == 1
    assert "steering vector, not a condition" in capsys.readouterr().err
    assert main([*base, "--when", "a.safetensors &"]) == 1
    assert "the rule ends" in capsys.readouterr().err
