"""Recipes with their demonstrations in the prompt as well (``--with-demos K``): ICL and ICL + ICV columns."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from recipe_helpers import DecodingTokenizer, load_common
from tiny import DEMOS, tiny_model

import icv
from icv.demos import as_demos
from icv.generation import complete
from icv.prompts import cut_answer


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_common(monkeypatch, "recipes_common_hybrid")


def test_with_demos_options(common: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "v.safetensors"
    args = common.parse_args("d", strength=0.06, out=out, argv=[], demos_in_prompt=True)
    assert (args.with_demos, args.hybrid_strength) == (0, None)
    args = common.parse_args(
        "d",
        strength=0.06,
        out=out,
        argv=["--with-demos", "4", "--hybrid-strength", "0.02"],
        demos_in_prompt=True,
    )
    assert (args.with_demos, args.hybrid_strength) == (4, 0.02)
    for bad in (["--with-demos", "-1"], ["--with-demos", "two"]):
        with pytest.raises(SystemExit):
            common.parse_args("d", strength=0.06, out=out, argv=bad, demos_in_prompt=True)
    with pytest.raises(SystemExit):  # a recipe whose prompt cannot hold its demos has no such option
        common.parse_args("d", strength=0.06, out=out, argv=["--with-demos", "1"])


def test_icl_prompts_hold_the_first_k_demonstrations(common: ModuleType) -> None:
    demos = as_demos(DEMOS)
    prompt = common.icl_prompts(demos, 1, ["meh"])[0]
    first = demos[0]
    assert prompt == (
        "Please paraphrase the following sentence.\n"
        f' Original: "{first.source}"; Paraphrased: "{first.target}"\n'
        ' Original: "meh"; Paraphrased: "'
    )
    assert common.icl_prompts(demos, 0, ["meh"]) == common.rewrite_prompts(["meh"])
    with pytest.raises(icv.OptionError, match="only"):
        common.icl_prompts(demos, len(demos) + 1, ["meh"])


def test_compare_with_demos_adds_icl_and_the_steered_icl_prompt(common: ModuleType) -> None:
    model, tokenizer = tiny_model("llama"), DecodingTokenizer()
    demos = as_demos(DEMOS)
    vector = icv.extract(
        model, tokenizer, demos, injection_mode="add", injection_site="block", progress=False
    )
    inputs = ["the food was cold", "slow service"]
    alone = common.compare_with_demos(model, tokenizer, inputs, demos, 0, "pos", (vector, 1.5))
    assert list(alone) == ["unsteered", "pos"]
    columns = common.compare_with_demos(model, tokenizer, inputs, demos, 1, "pos", (vector, 1.5))
    assert list(columns) == ["unsteered", "pos", "ICL (1 demo)", "ICL + pos"]
    assert columns["pos"] == alone["pos"]
    prompts = common.icl_prompts(demos, 1, inputs)
    plain = complete(model, tokenizer, prompts, max_new_tokens=30)
    assert columns["ICL (1 demo)"] == [cut_answer(t) for t in plain]
    hybrid = complete(
        model, tokenizer, prompts, vector=vector, strength=1.5 * common.HYBRID_SHARE, max_new_tokens=30
    )
    assert columns["ICL + pos"] == [cut_answer(t) for t in hybrid]
    assert columns["ICL + pos"] != columns["ICL (1 demo)"]  # the vector is applied on top
    given = common.compare_with_demos(model, tokenizer, inputs, demos, 2, "pos", (vector, 1.5), 0.0)
    assert given["ICL + pos"] == given["ICL (2 demos)"]  # an explicit hybrid strength is used (0: none)


def test_a_recipe_runs_with_demos_in_the_prompt(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(icv, "load_model", lambda *a, **k: (tiny_model("llama"), DecodingTokenizer()))
    out = tmp_path / "polite.safetensors"
    common.run_one_vector_recipe(
        "detox",
        "d",
        name="polite",
        label="polite",
        strength=0.04,
        inputs=["shut up"],
        argv=["--with-demos", "2", "--out", str(out)],
    )
    shown = capsys.readouterr().out
    for label in ("    unsteered ", "    polite ", "    ICL (2 demos) |", "    ICL + polite  |"):
        assert label in shown
    assert out.exists()


def test_too_many_demos_fail_before_the_model_loads(
    common: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(icv, "load_model", no_model)
    with pytest.raises(icv.OptionError, match="only 20 demonstrations"):
        common.run_one_vector_recipe(
            "detox",
            "d",
            name="polite",
            label="polite",
            strength=0.04,
            inputs=["x"],
            argv=["--with-demos", "21"],
        )
    with pytest.raises(SystemExit):  # chat recipes read their demos as replies: no in-prompt form
        common.run_one_vector_recipe(
            "roleplay",
            "d",
            name="p",
            label="p",
            strength=0.04,
            inputs=["x"],
            chat=True,
            argv=["--with-demos", "1"],
        )
