"""``icv extract``: read an in-context vector from a file of demonstrations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..arguments import finite_float, layer_list, positive_int
from .common import Command, check_new_file, load_model_for, quiet, say


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demos",
        required=True,
        metavar="FILE",
        help='demonstrations: JSONL ({"source": ..., "target": ...}), a .json array of pairs, CSV or TSV (two columns)',
    )
    parser.add_argument(
        "--out", required=True, metavar="VEC", type=Path, help="the vector file to write (.safetensors)"
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model folder, hub id, .gguf file or alias (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--method", choices=("pca", "mean"), help="aggregation over pairs (default: pca + mean)"
    )
    parser.add_argument(
        "--preset",
        choices=("paper",),
        help="paper: read the demonstrations exactly as the authors' reference code "
        "(punctuation deleted, svd_flip sign); excludes --method",
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--template",
        metavar="TEXT",
        help="how each text is presented, with {text} where it goes (default: the raw text, as the paper)",
    )
    form.add_argument(
        "--chat",
        action="store_true",
        help="read each text as the assistant's reply in the model's chat template (for vectors that "
        "steer chat answers; needs a chat model)",
    )
    parser.add_argument(
        "--layers",
        type=layer_list,
        metavar="LIST",
        help="keep only these decoder layers (e.g. 10-20 or 0,4,-1); the others get a zero direction",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        metavar="N",
        help="texts per forward pass (default: 16)",
    )
    parser.add_argument("--name", help="the vector's name (default: the demonstrations file's name)")
    parser.add_argument(
        "--mode",
        choices=("rotate", "add"),
        default="rotate",
        help="how steering applies the vector by default (default: rotate, the paper)",
    )
    parser.add_argument(
        "--strength", type=finite_float, metavar="S", help="record a recommended strength in the vector"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    from ..demos import check_template, read_demos
    from ..extract import extract
    from ..prompts import chat_reply_template

    check_new_file(args.out, args.force)
    template = check_template(args.template) if args.template is not None else None
    demos = read_demos(args.demos)
    model, tokenizer = load_model_for(args, args.model)
    if args.chat:
        template = chat_reply_template(tokenizer)
    vector = extract(
        model,
        tokenizer,
        demos,
        method=args.method,
        preset=args.preset,
        template=template,
        batch_size=args.batch_size,
        name=args.name or Path(args.demos).stem,
        injection_mode=args.mode,
        recommended_strength=args.strength,
        progress=not quiet(args),
    )
    if args.layers is not None:
        vector = vector.only_layers(args.layers)
    vector.save(args.out, overwrite=args.force)
    say(f"wrote {args.out}: {vector!r}", sys.stdout)
    return 0


COMMAND = Command("extract", "read an in-context vector from a file of demonstrations", configure, run)
