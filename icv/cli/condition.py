"""``icv condition``: extract a condition (which prompts a steering acts on) from two text files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..arguments import layer_list, positive_int, strength_list
from .common import Command, check_new_file, load_model_for, say

# A text file of prompts larger than this is not what a condition is read from.
MAX_TEXT_BYTES = 64 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--matching",
        required=True,
        type=Path,
        metavar="FILE",
        help="texts the condition should match, one per line",
    )
    parser.add_argument(
        "--other", required=True, type=Path, metavar="FILE", help="texts it should not match, one per line"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="the condition file to write")
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model folder, hub id or alias (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="read each text as a user turn in the model's chat template (as `icv generate --chat` prompts it)",
    )
    parser.add_argument("--name", help="the condition's name (default: the matching file's name)")
    parser.add_argument(
        "--held-out",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="share of each file the layer, threshold and comparison are chosen on (default: 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="how the texts are shuffled before the split")
    parser.add_argument(
        "--positions",
        choices=("prompt_mean", "prompt_last"),
        default="prompt_mean",
        help="how a prompt is read: the mean of its tokens (default, CAST's) or its last token",
    )
    parser.add_argument(
        "--estimator",
        choices=("mean", "probe"),
        default="mean",
        help="how each layer's direction is found: the sets' mean difference (default, CAST's) "
        "or an L2-regularised logistic-regression probe",
    )
    parser.add_argument(
        "--l2",
        type=strength_list,
        metavar="LIST",
        help="the probe's L2 regularisation, or several (comma-separated; the held-out part "
        "chooses, as it chooses the layer); with --estimator probe (default: 0.001,0.01,0.1)",
    )
    parser.add_argument("--layers", type=layer_list, metavar="LIST", help="layers the search may choose from")
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, metavar="N", help="texts per forward pass"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def read_texts(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    from ..errors import DemoError

    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise DemoError(f"'{path}' is larger than {MAX_TEXT_BYTES >> 20} MB: not a file of prompts")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DemoError(f"cannot read texts from '{path}': {error}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def run(args: argparse.Namespace) -> int:
    from ..condition_search import extract_condition
    from ..prompts import chat_prompt

    check_new_file(args.out, args.force)
    matching, other = read_texts(args.matching), read_texts(args.other)
    model, tokenizer = load_model_for(args, args.model)
    if args.chat:
        matching = [chat_prompt(tokenizer, t) for t in matching]
        other = [chat_prompt(tokenizer, t) for t in other]
    condition = extract_condition(
        model,
        tokenizer,
        matching,
        other,
        name=args.name or args.matching.stem,
        held_out=args.held_out,
        seed=args.seed,
        layers=args.layers,
        positions=args.positions,
        estimator=args.estimator,
        **({} if args.l2 is None else {"l2": args.l2}),
        batch_size=args.batch_size,
    )
    condition.save(args.out, overwrite=args.force)
    print(summary(condition))
    say(f"wrote {args.out}")
    return 0


def summary(condition: Any) -> str:
    """One line: the chosen layer, the rule, the held-out F1 and counts."""
    counts = condition.confusion or {}
    shown = " ".join(f"{k}={v}" for k, v in counts.items())
    f1 = "" if condition.f1 is None else f" held-out F1 {condition.f1:.3f} ({shown})"
    return f"{condition.name}: layer {condition.layer}, score {condition.comparison} {condition.threshold:.4f};{f1}"


COMMAND = Command(
    "condition",
    "extract a condition: which prompts a steering acts on",
    configure,
    run,
)
