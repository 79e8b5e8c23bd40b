"""``icv generate``: complete a prompt with the model steered by one or more vectors (or interactively)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..arguments import (
    layer_list,
    non_negative_float,
    non_negative_int,
    positive_int,
    probability,
    strength_list,
    weighted_path,
)
from .common import Command, add_condition_options, load_model_for, quiet, read_vector, say, weighted_sum


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt", nargs="?", metavar="PROMPT", help="the prompt; read from standard input when absent or '-'"
    )
    parser.add_argument(
        "--vector",
        action="append",
        required=True,
        type=weighted_path,
        metavar="VEC[:WEIGHT]",
        help="a vector (safetensors, GGUF, a save_pretrained folder or a Hub id owner/name), optionally weighted; repeat to add several",
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="the model (default: the first vector's model, else the embedded one)",
    )
    parser.add_argument(
        "--strength",
        type=strength_list,
        metavar="S[,S...]",
        help="steering strength; several (0.02,0.04,0.08) are generated side by side in one batch "
        "(default: the vector's recommended one, else a default for the model's depth)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="also print the unsteered completion (a row of the same batch)"
    )
    parser.add_argument("--mode", choices=("rotate", "add"), help="override the vector's injection mode")
    parser.add_argument(
        "--layers",
        type=layer_list,
        metavar="LIST",
        help="steer only these decoder layers (e.g. 10-20, -8--1)",
    )
    parser.add_argument(
        "--positions",
        choices=("all", "prompt", "generated"),
        default="all",
        help="which tokens to steer (default: all)",
    )
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template (a user turn)"
    )
    parser.add_argument(
        "--demos",
        metavar="FILE",
        help="demonstrations (.jsonl, .json, .csv, .tsv) for --with-demos: best the vector's own",
    )
    parser.add_argument(
        "--with-demos",
        type=non_negative_int,
        metavar="K",
        help="rewrite PROMPT in the paraphrase task with the first K of --demos before it (ICL + ICV; "
        "0: the paraphrase prompt alone); the answer is cut at its closing quote",
    )
    add_condition_options(parser)
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse a vector made on a model of another name (by default a warning when "
        "the type, hidden size and layer count match)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=40,
        metavar="N",
        help="tokens to generate (default: 40)",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.0,
        metavar="T",
        help="0 (default): greedy; above 0: sample at this temperature",
    )
    parser.add_argument("--top-p", type=probability, metavar="P", help="with --temperature: nucleus sampling")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="with --temperature: the random seed, for repeatable samples"
    )
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print the completion as it is generated (default: when the output is a terminal and "
        "there is one completion)",
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="load the model once, then read prompts (and /commands that change the vector, strength ...) "
        "line by line; /help lists the commands",
    )


def _read_prompt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.prompt is not None and args.prompt != "-":
        prompt = args.prompt
    elif sys.stdin is None or sys.stdin.isatty():
        parser.error("give a PROMPT argument or pipe one on standard input")
    else:
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        parser.error("the prompt is empty")
    return prompt


def _generate_settings(args: argparse.Namespace) -> Any:
    from ..session import Settings

    if (args.top_p is not None or args.seed is not None) and args.temperature == 0:
        args.parser.error("--top-p and --seed need --temperature above 0 (greedy decoding does not sample)")
    if args.stream and (args.compare or len(args.strength or [None]) > 1):
        args.parser.error("--stream shows one completion as it comes: drop --compare, or give one strength")
    demos = _prompt_demos(args)
    return Settings(
        vectors=list(args.vector),
        strengths=args.strength,
        compare=args.compare,
        chat=args.chat,
        mode=args.mode,
        layers=args.layers,
        positions=args.positions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stream=args.stream,
        strict=args.strict,
        demos=demos,
        with_demos=args.with_demos,
        when=list(args.when),
        unless=list(args.unless),
    )


def _prompt_demos(args: argparse.Namespace) -> list[Any] | None:
    """The demonstrations ``--with-demos`` writes into the prompt, checked before the model loads."""
    from ..demos import read_demos

    if args.demos is None:
        if args.with_demos is not None:
            args.parser.error("--with-demos needs --demos FILE (the demonstrations to write into the prompt)")
        return None
    if args.chat:
        args.parser.error("--with-demos writes the paraphrase prompt, not a chat turn: drop --chat")
    demos = read_demos(args.demos)
    if args.with_demos is not None and args.with_demos > len(demos):
        args.parser.error(f"--with-demos {args.with_demos}: '{args.demos}' holds only {len(demos)}")
    return demos


def run(args: argparse.Namespace) -> int:
    from ..session import Trial, describe_decision, interact

    if args.interactive and args.prompt is not None:
        args.parser.error("--interactive reads its prompts from standard input: drop PROMPT")
    settings = _generate_settings(args)
    prompt = None if args.interactive else _read_prompt(args, args.parser)
    first = read_vector(args.vector[0].path)
    model, tokenizer = load_model_for(args, args.model or first.metadata["model_name"] or None)
    trial = Trial(model, tokenizer, settings, weighted_sum)
    if prompt is not None:
        trial.run(prompt, sys.stdout)
        if trial.decision is not None and not quiet(args):
            say(describe_decision(trial.decision))
        return 0
    parsers: dict[str, Callable[[str], Any]] = {
        "vector": weighted_path,
        "strengths": strength_list,
        "layers": layer_list,
        "temperature": non_negative_float,
        "top_p": probability,
        "seed": int,
        "tokens": positive_int,
        "demo_count": non_negative_int,
    }
    return interact(trial, parsers, sys.stdin, sys.stdout, sys.stderr)


COMMAND = Command(
    "generate", "complete a prompt with the model steered by one or more vectors", configure, run
)
