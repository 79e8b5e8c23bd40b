"""``icv train``: fit a vector to a file of pairs (its per-layer coefficients, or its directions)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..arguments import finite_float, non_negative_float, non_negative_int, positive_int
from .common import Command, check_new_file, load_model_for, quiet, read_vector, say


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demos",
        required=True,
        metavar="FILE",
        help='the pairs to fit: JSONL ({"source": ..., "target": ...}), a .json array, CSV or TSV',
    )
    parser.add_argument(
        "--out", required=True, metavar="VEC", type=Path, help="the vector file to write (.safetensors)"
    )
    parser.add_argument(
        "--init",
        metavar="VEC",
        help="the vector to start from (default: the one extracted from the training part of the pairs)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model folder, hub id, .gguf file or alias (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--level",
        choices=("coefficients", "directions"),
        default="coefficients",
        help="coefficients: one factor per layer (few parameters, fine with 8 pairs; default); "
        "directions: every layer's direction (for 32 pairs or more)",
    )
    parser.add_argument(
        "--objective",
        choices=("teacher", "distillation", "preference"),
        default="teacher",
        help="teacher: the pairs' targets given the zero-shot prompt (default); distillation: the "
        "model's own in-context distribution on those targets (its ICL output, the other pairs as demos); "
        "preference: each target preferred over its source copied unchanged (for minimal-edit rewrites)",
    )
    parser.add_argument(
        "--beta",
        type=finite_float,
        default=0.1,
        metavar="X",
        help="the preference objective's DPO temperature, above 0 (default: 0.1)",
    )
    parser.add_argument(
        "--strength",
        type=finite_float,
        metavar="S",
        help="the strength to train at, recorded as the result's recommendation (default: the start's "
        "recommended strength, else the default for the model's depth)",
    )
    parser.add_argument("--steps", type=positive_int, metavar="N", help="the most optimizer steps")
    parser.add_argument("--lr", type=non_negative_float, metavar="X", help="Adam's learning rate")
    parser.add_argument(
        "--regularization", type=non_negative_float, metavar="X", help="weight of the L2 term (0: none)"
    )
    parser.add_argument(
        "--held-out",
        type=non_negative_float,
        default=0.25,
        metavar="SHARE",
        help="share of the pairs kept out to stop early on, below 1 (default: 0.25; 0: no early stopping)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="pairs per step (default: 8)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="N", help="split and order (default: 0)"
    )
    parser.add_argument(
        "--mode",
        choices=("rotate", "add"),
        default="rotate",
        help="without --init: how the extracted start is applied (default: rotate)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each layer's activations in the backward pass (less memory for a large model)",
    )
    parser.add_argument("--name", help="the vector's name (default: the start's)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    from ..demos import read_demos
    from ..train import train

    check_new_file(args.out, args.force)
    demos = read_demos(args.demos)
    init = read_vector(args.init) if args.init is not None else None
    model, tokenizer = load_model_for(args, args.model)
    vector = train(
        model,
        tokenizer,
        demos,
        init=init,
        level=args.level,
        objective=args.objective,
        strength=args.strength,
        steps=args.steps,
        learning_rate=args.lr,
        regularization=args.regularization,
        beta=args.beta,
        held_out=args.held_out,
        batch_size=args.batch_size,
        seed=args.seed,
        injection_mode=args.mode,
        name=args.name or (None if init is not None else Path(args.demos).stem),
        progress=not quiet(args),
        gradient_checkpointing=args.gradient_checkpointing,
    )
    vector.save(args.out, overwrite=args.force)
    record = vector.metadata["training"]
    before, after = record["held_out_loss_before"], record["held_out_loss_after"]
    loss = "no held-out pairs" if after is None else f"held-out loss {before:.4g} -> {after:.4g}"
    say(f"wrote {args.out}: {vector!r}; {record['steps']} steps, {loss}", sys.stdout)
    return 0


COMMAND = Command(
    "train", "fit a vector's per-layer coefficients or directions to a file of pairs", configure, run
)
