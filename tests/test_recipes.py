"""Recipes: every folder is complete, the shared helpers work, the sentiment demo really steers."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from recipe_helpers import RECIPES, DecodingTokenizer, load_common, load_module
from tiny import DEMOS, ByteTokenizer, tiny_model

import icv
from icv.generation import complete
from icv.prompts import paraphrase_prompt

NAMES = [
    "sentiment",
    "detox",
    "formality",
    "shakespeare",
    "roleplay",
    "formatting",
    "compose_add",
    "compose_subtract",
]


@pytest.fixture
def common(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_common(monkeypatch, "recipes_common")


# -- the folders ---------------------------------------------------------------------------


def test_every_recipe_folder_is_listed_here() -> None:
    folders = {p.name for p in RECIPES.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert folders == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_has_16_distinct_valid_pairs_a_readme_and_a_script(name: str) -> None:
    folder = RECIPES / name
    demos = icv.read_demos(folder / "demos.jsonl")
    assert len(demos) >= 16
    assert all(d.source.strip() != d.target.strip() for d in demos)
    assert len({(d.source, d.target) for d in demos}) == len(demos), "duplicate pairs"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f"python recipes/{name}/run.py" in readme
    assert (folder / "run.py").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_run_script_imports_and_ships_a_usable_strength(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = load_module(f"recipe_{name}", RECIPES / name / "run.py")
    assert callable(module.main)
    # Above about 0.1 the embedded model loses fluency: a shipped default must stay below.
    assert 0 < module.STRENGTH <= 0.1


def test_recipe_outputs_are_git_ignored() -> None:
    ignored = (RECIPES.parent / ".gitignore").read_text(encoding="utf-8").split()
    assert "recipes/*/out/" in ignored


# -- recipes/_common.py --------------------------------------------------------------------


def test_load_demos_by_name_and_by_path(common: ModuleType) -> None:
    by_name = common.load_demos("detox")
    assert by_name == common.load_demos(RECIPES / "detox")
    assert all(isinstance(d, icv.Demo) for d in by_name)
    with pytest.raises(icv.DemoError):
        common.load_demos(RECIPES / "no_such_recipe")


def test_parse_args_defaults_and_overrides(common: ModuleType, tmp_path: Path) -> None:
    default = tmp_path / "v.safetensors"
    args = common.parse_args("demo", strength=0.05, out=default, argv=[])
    assert (args.strength, args.out) == (0.05, default)
    args = common.parse_args("demo", strength=0.05, out=default, argv=["--strength", "0.08", "--out", "x.st"])
    assert (args.strength, args.out) == (0.08, Path("x.st"))
    assert (
        common.default_out("sentiment", "positive") == RECIPES / "sentiment" / "out" / "positive.safetensors"
    )


def test_extract_and_save_records_the_strength_and_overwrites(common: ModuleType, tmp_path: Path) -> None:
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    out = tmp_path / "new_folder" / "v.safetensors"
    vector = common.extract_and_save(model, tokenizer, DEMOS, name="tiny", strength=0.04, out=out)
    assert vector.recommended_strength == 0.04 and vector.name == "tiny"
    assert icv.InContextVector.load(out).equal(vector)
    again = common.extract_and_save(model, tokenizer, DEMOS, name="tiny", strength=0.09, out=out)
    assert icv.InContextVector.load(out).recommended_strength == 0.09 == again.recommended_strength
    unsaved = common.extract_and_save(model, tokenizer, DEMOS, name="x", strength=0.01, out=None)
    assert unsaved.recommended_strength == 0.01


def test_compare_gives_an_unsteered_column_then_one_per_vector(common: ModuleType) -> None:
    model, tokenizer = tiny_model("llama"), DecodingTokenizer()
    vector = icv.extract(model, tokenizer, DEMOS, progress=False)
    prompts = ["the food was", "service was"]
    columns = common.compare(
        model,
        tokenizer,
        prompts,
        {"strong": (vector, 2.0), "off": (vector, 0.0)},
        max_new_tokens=6,
        cut=lambda text: text.upper(),
    )
    assert list(columns) == ["unsteered", "strong", "off"]
    plain = complete(model, tokenizer, prompts, max_new_tokens=6)
    assert columns["unsteered"] == [text.upper() for text in plain]
    assert columns["off"] == columns["unsteered"]
    assert columns["strong"] != columns["unsteered"]
    assert not icv.is_steered(model)


def test_print_comparison_lines_up_inputs_and_columns(common: ModuleType) -> None:
    buffer = io.StringIO()
    long = "word " * 40
    common.print_comparison(
        ["first", "second"], {"unsteered": ["a\nb", ""], "steered": [long, "d"]}, file=buffer
    )
    text = buffer.getvalue()
    assert "[1] first" in text and "[2] second" in text
    assert "    unsteered | a / b" in text
    assert "    unsteered | (empty)" in text
    assert "    steered   | d" in text
    assert max(len(line) for line in text.splitlines()) <= 120  # long answers wrap


def test_prompt_helpers(common: ModuleType) -> None:
    assert common.rewrite_prompts(["Hi there."]) == [paraphrase_prompt("Hi there.")]
    assert common.one_line("  A\n\nB   c \n") == "A B c"


def test_recipes_use_only_the_public_api() -> None:
    private = re.compile(
        r"^\s*from icv\.\S+ import .*\b_\w+|icv\.\w+\._\w+|^\s*from _common import .*\b_\w+", re.M
    )
    for script in sorted(RECIPES.glob("**/*.py")):
        source = script.read_text()
        assert not private.findall(source), f"{script} uses a private helper"
        # Chat formats come from the library (icv.chat_reply_template, icv.prompts.chat_prompt).
        assert "apply_chat_template" not in source, f"{script} builds a chat format itself"


# -- the real model ------------------------------------------------------------------------


@pytest.mark.real_model
def test_sentiment_recipe_turns_negative_sentences_positive(real, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    monkeypatch.setattr(sys, "path", list(sys.path))
    recipe = load_module("recipe_sentiment_real", RECIPES / "sentiment" / "run.py")
    common = sys.modules["_common"]
    model, tokenizer = real
    negative = [
        "The soup was salty and the bread was stale.",
        "Our flight was delayed and the crew was unfriendly.",
        "The cashier was rude to my kids.",
        "The hotel pool was closed and dirty.",
        "I regret buying this laptop.",
        "This place is overpriced and the portions are tiny.",
    ]
    vector = common.extract_and_save(
        model, tokenizer, common.load_demos("sentiment"), name="positive", strength=recipe.STRENGTH, out=None
    )
    columns = common.compare(
        model,
        tokenizer,
        common.rewrite_prompts(negative),
        {"positive": (vector, recipe.STRENGTH)},
        max_new_tokens=30,
    )
    vader = SentimentIntensityAnalyzer()

    def positives(texts: list[str]) -> int:
        return sum(vader.polarity_scores(t)["compound"] > 0.05 for t in texts)

    assert positives(columns["unsteered"]) <= 2, columns["unsteered"]
    assert positives(columns["positive"]) >= 4, columns["positive"]
