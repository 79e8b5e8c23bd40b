"""What every recipe shares: read its demonstrations, extract and save a vector, show its effect.

A recipe's ``run.py`` is a few lines on top of this module, which itself uses
only the public ``icv`` API (plus the prompt and generation helpers that ship
with it).  Run a recipe as ``python recipes/NAME/run.py [--strength S] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import icv
from icv.display import side_by_side
from icv.generation import complete
from icv.prompts import chat_prompt, cut_answer, paraphrase_prompt

RECIPES = Path(__file__).resolve().parent
DEMOS_FILE = "demos.jsonl"

# One column of a comparison: the vector and the strength it is applied with.
Steered = tuple[icv.InContextVector, float]


def recipe_dir(recipe: str | os.PathLike[str]) -> Path:
    """A recipe's folder, from its name (``"sentiment"``) or any path."""
    path = Path(recipe)
    return path if path.is_absolute() or path.exists() else RECIPES / path


def load_demos(recipe: str | os.PathLike[str]) -> list[icv.Demo]:
    """The recipe's ``demos.jsonl`` as validated demonstrations."""
    return icv.read_demos(recipe_dir(recipe) / DEMOS_FILE)


def parse_args(
    description: str, *, strength: float, out: Path, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """The options every recipe takes: ``--strength`` and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--strength",
        type=float,
        default=strength,
        help=f"steering strength, also saved as the vector's recommended strength (default {strength:g})",
    )
    parser.add_argument("--out", type=Path, default=out, help=f"where to save the vector (default {out})")
    return parser.parse_args(argv)


def default_out(recipe: str | os.PathLike[str], name: str) -> Path:
    return recipe_dir(recipe) / "out" / f"{name}.safetensors"


def extract_and_save(
    model: Any,
    tokenizer: Any,
    demos: Sequence[icv.Demo],
    *,
    name: str,
    strength: float,
    out: str | os.PathLike[str] | None,
    **extract_options: Any,
) -> icv.InContextVector:
    """Extract the vector of ``demos``, record ``strength`` as its default, save it to ``out``."""
    vector = icv.extract(model, tokenizer, demos, name=name, progress=False, **extract_options)
    vector = vector.with_metadata(recommended_strength=strength)
    if out is not None:
        save(vector, out)
    return vector


def save(vector: icv.InContextVector, out: str | os.PathLike[str]) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    vector.save(path, overwrite=True)
    return path


def rewrite_prompts(texts: Sequence[str]) -> list[str]:
    """The paper's paraphrase prompt around each text (the rewriting recipes)."""
    return [paraphrase_prompt(text) for text in texts]


def one_line(completion: str) -> str:
    """A chat answer with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(completion.split())


def compare(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    steered: Mapping[str, Steered],
    *,
    max_new_tokens: int = 30,
    cut: Callable[[str], str] = cut_answer,
) -> dict[str, list[str]]:
    """Greedy completions of ``prompts``: an ``"unsteered"`` column, then one per vector."""
    columns = {"unsteered": complete(model, tokenizer, prompts, max_new_tokens=max_new_tokens)}
    for label, (vector, strength) in steered.items():
        columns[label] = complete(
            model, tokenizer, prompts, vector=vector, strength=strength, max_new_tokens=max_new_tokens
        )
    return {label: [cut(text) for text in texts] for label, texts in columns.items()}


def print_comparison(
    inputs: Sequence[str], columns: Mapping[str, Sequence[str]], *, file: TextIO | None = None
) -> None:
    """Each input followed by one line per column, labels aligned."""
    print(side_by_side(inputs, columns), file=file if file is not None else sys.stdout)


def run_one_vector_recipe(
    recipe: str | os.PathLike[str],
    description: str,
    *,
    name: str,
    label: str,
    strength: float,
    inputs: Sequence[str],
    chat: bool = False,
    argv: Sequence[str] | None = None,
) -> None:
    """The whole of a one-vector recipe: options, extract, save, print unsteered vs steered.

    ``chat=False``: rewriting recipes (the paper's paraphrase prompt around each input).
    ``chat=True``: answering recipes (each input a user question in the chat template, the
    demonstrations read as the assistant's replies).
    """
    args = parse_args(description, strength=strength, out=default_out(recipe, name), argv=argv)
    model, tokenizer = icv.load_model()
    options = {"template": icv.chat_reply_template(tokenizer)} if chat else {}
    vector = extract_and_save(
        model, tokenizer, load_demos(recipe), name=name, strength=args.strength, out=args.out, **options
    )
    print(f"saved {args.out}  ({vector})\n")
    if chat:
        columns = compare(
            model,
            tokenizer,
            [chat_prompt(tokenizer, q) for q in inputs],
            {label: (vector, args.strength)},
            max_new_tokens=40,
            cut=one_line,
        )
    else:
        columns = compare(model, tokenizer, rewrite_prompts(inputs), {label: (vector, args.strength)})
    print_comparison(inputs, columns)
