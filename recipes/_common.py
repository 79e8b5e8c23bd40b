"""What every recipe shares: read its demonstrations, extract and save a vector, show its effect.

A recipe's ``run.py`` is a few lines on top of this module, which itself uses
only the public ``icv`` API (plus the prompt and generation helpers that ship
with it).  Run a recipe as ``python recipes/NAME/run.py [--strength S] [--out FILE]``.
The rewriting recipes also take ``--with-demos K``: K of their demonstrations are
written into the prompt as well, and two more columns show in-context learning
alone and ICL + ICV (the vector on top of the demonstrations in the prompt).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import icv
from icv.arguments import non_negative_int
from icv.display import side_by_side
from icv.generation import complete
from icv.prompts import chat_prompt, cut_answer, icl_prompt, paraphrase_prompt

RECIPES = Path(__file__).resolve().parent
DEMOS_FILE = "demos.jsonl"

# One column of a comparison: the vector and the strength it is applied with.
Steered = tuple[icv.InContextVector, float]

# With the demonstrations in the prompt as well, the same vector moves the model 2-3x further per
# unit of strength: on Yelp the hybrid matched ICV's similarity at 0.35-0.5 of ICV's strength
# (SmolLM2 0.015 ~ 0.03, 0.03 ~ 0.04; Gemma 3 270M 0.03 ~ 0.08, 0.04 ~ 0.095; docs/results.md,
# "Hybrid"). The hybrid column's default strength is this share of the recipe's own.
HYBRID_SHARE = 0.4


def recipe_dir(recipe: str | os.PathLike[str]) -> Path:
    """A recipe's folder, from its name (``"sentiment"``) or any path."""
    path = Path(recipe)
    return path if path.is_absolute() or path.exists() else RECIPES / path


def load_demos(recipe: str | os.PathLike[str]) -> list[icv.Demo]:
    """The recipe's ``demos.jsonl`` as validated demonstrations."""
    return icv.read_demos(recipe_dir(recipe) / DEMOS_FILE)


def parse_args(
    description: str,
    *,
    strength: float,
    out: Path,
    argv: Sequence[str] | None = None,
    demos_in_prompt: bool = False,
) -> argparse.Namespace:
    """The options every recipe takes: ``--strength`` and ``--out``.

    ``demos_in_prompt``: the recipe's prompt can hold its demonstrations, so it also
    takes ``--with-demos K`` and ``--hybrid-strength S``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--strength",
        type=float,
        default=strength,
        help=f"steering strength, also saved as the vector's recommended strength (default {strength:g})",
    )
    parser.add_argument("--out", type=Path, default=out, help=f"where to save the vector (default {out})")
    if demos_in_prompt:
        parser.add_argument(
            "--with-demos",
            type=non_negative_int,
            default=0,
            metavar="K",
            help="also write the first K demonstrations into the prompt: adds an ICL column and an "
            "ICL + ICV column (the vector on top of them)",
        )
        parser.add_argument(
            "--hybrid-strength",
            type=float,
            default=None,
            metavar="S",
            help=f"strength of the ICL + ICV column (default {HYBRID_SHARE:.2g} x --strength)",
        )
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


def icl_prompts(demos: Sequence[icv.Demo], k: int, texts: Sequence[str]) -> list[str]:
    """The paraphrase prompt around each text with the first ``k`` demonstrations before it."""
    if k > len(demos):
        raise icv.OptionError(f"--with-demos {k}: the recipe has only {len(demos)} demonstrations")
    return [icl_prompt(demos[:k], text) for text in texts]


def compare_with_demos(
    model: Any,
    tokenizer: Any,
    inputs: Sequence[str],
    demos: Sequence[icv.Demo],
    k: int,
    label: str,
    steered: Steered,
    hybrid_strength: float | None = None,
) -> dict[str, list[str]]:
    """The rewriting comparison, and with ``k`` > 0 the same vector over ``k`` demos in the prompt.

    Columns: ``unsteered``, ``label`` (ICV), then ``ICL (k demos)`` and ``ICL + label``
    (at ``hybrid_strength``, by default :data:`HYBRID_SHARE` of the ICV strength).
    """
    columns = compare(model, tokenizer, rewrite_prompts(inputs), {label: steered})
    if k == 0:
        return columns
    vector, strength = steered
    hybrid = hybrid_strength if hybrid_strength is not None else strength * HYBRID_SHARE
    shown = compare(model, tokenizer, icl_prompts(demos, k, inputs), {label: (vector, hybrid)})
    plural = "demo" if k == 1 else "demos"
    return {**columns, f"ICL ({k} {plural})": shown["unsteered"], f"ICL + {label}": shown[label]}


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
    args = parse_args(
        description, strength=strength, out=default_out(recipe, name), argv=argv, demos_in_prompt=not chat
    )
    demos = load_demos(recipe)
    with_demos = getattr(args, "with_demos", 0)
    icl_prompts(demos, with_demos, [])  # a K past the recipe's demos fails before the model loads
    model, tokenizer = icv.load_model()
    options = {"template": icv.chat_reply_template(tokenizer)} if chat else {}
    vector = extract_and_save(
        model, tokenizer, demos, name=name, strength=args.strength, out=args.out, **options
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
        columns = compare_with_demos(
            model,
            tokenizer,
            inputs,
            demos,
            with_demos,
            label,
            (vector, args.strength),
            args.hybrid_strength,
        )
    print_comparison(inputs, columns)
