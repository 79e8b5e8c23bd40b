"""``icv calibrate``: sweep a vector's strength on held-in inputs and record the best one in the vector.

The scorer and engine options are ``icv eval``'s (:mod:`icv.cli.scoring`): a built-in style, a
judge model or a text classifier rates the style; transformers, vLLM or a running ``icv serve``
generates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..arguments import finite_float, positive_int, probability, strength_list
from .common import Command, check_new_file, load_model_for, quiet, read_vector, say
from .scoring import (
    add_engine_arguments,
    add_style_arguments,
    build_engine,
    check_engine,
    judge_settings,
    judge_summary,
    style_scorer,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "vector", metavar="VEC", help="the vector to calibrate (a file, GGUF, folder or Hub id)"
    )
    parser.add_argument(
        "--inputs",
        required=True,
        metavar="FILE",
        help="held-in inputs, one per line (not the test set); a second tab-separated column is the reference",
    )
    add_style_arguments(parser)
    parser.add_argument(
        "--model", metavar="NAME_OR_PATH", help="model name, folder or .gguf (default: the vector's model)"
    )
    parser.add_argument(
        "--strengths",
        type=strength_list,
        metavar="LIST",
        help="comma-separated strengths to try (default 0.02,0.03,...,0.1,0.12)",
    )
    parser.add_argument(
        "--demos",
        metavar="FILE",
        help="calibrate for ICL + ICV: these demonstrations are written into the prompt before each input",
    )
    parser.add_argument(
        "--min-content",
        type=finite_float,
        default=0.65,
        metavar="X",
        help="content floor: mean MiniLM similarity to the source (default 0.65)",
    )
    parser.add_argument(
        "--max-repetition",
        type=probability,
        default=0.2,
        metavar="P",
        help="most repeated 3-grams an output may have, as a share (default 0.2)",
    )
    parser.add_argument(
        "--max-perplexity-ratio",
        type=finite_float,
        default=2.0,
        metavar="R",
        help="fluency floor: perplexity within R times the unsteered outputs' (default 2)",
    )
    parser.add_argument(
        "--perplexity-baseline",
        choices=("unsteered", "inputs"),
        default="unsteered",
        help="what R multiplies: the unsteered outputs' perplexity (default) or the inputs' own "
        "(for rewriting, where the unsteered answers can be more predictable than any good rewrite)",
    )
    parser.add_argument("--no-fluency", action="store_true", help="skip the perplexity scorer (Gemma 3 270M)")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N inputs")
    parser.add_argument("--mode", choices=("rotate", "add"), help="injection mode (default: the vector's)")
    parser.add_argument("--site", choices=("block", "mlp", "attn"), help="injection site")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N")
    parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the calibrated vector here (.safetensors)"
    )
    parser.add_argument(
        "--report", type=Path, metavar="FILE", help="write the sweep (and judge counts) as JSON"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out / --report if they exist")
    add_engine_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..calibrate import DEFAULT_STRENGTHS, calibrate
    from ..demos import read_demos
    from ..evaluate import read_inputs
    from ..models import model_name_of
    from ..scorers import PerplexityScorer, fluency_model_for

    check_engine(args)
    style = style_scorer(args)
    for path in (args.out, args.report):
        if path is not None:
            check_new_file(path, args.force)
    inputs, references = read_inputs(args.inputs, args.limit)
    demos = read_demos(args.demos) if args.demos else None
    vector = read_vector(args.vector)
    model, tokenizer = load_model_for(args, args.model or vector.metadata["model_name"] or None)
    engine = build_engine(args, model_name_of(model))
    fluency = None if args.no_fluency else PerplexityScorer(model_name=fluency_model_for(model))
    calibrated, report = calibrate(
        model,
        tokenizer,
        vector,
        inputs,
        style=style,
        fluency=fluency,
        references=references,
        strengths=args.strengths or DEFAULT_STRENGTHS,
        min_content=args.min_content,
        max_repetition=args.max_repetition,
        max_perplexity_ratio=None if args.no_fluency else args.max_perplexity_ratio,
        perplexity_baseline=args.perplexity_baseline,
        demos=demos,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        mode=args.mode,
        site=args.site,
        progress=False if quiet(args) else None,
        engine=engine,
    )
    judged = judge_settings(style, args)
    print(report.markdown())
    if judged is not None:
        print("\n" + judge_summary(judged))
    if args.report is not None:
        payload = {**report.to_dict(), "engine": args.engine, **({"judge": judged} if judged else {})}
        args.report.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    chosen = report.chosen.strength
    verdict = "" if report.feasible else " (no strength met the floors: the smallest of the sweep)"
    say(f"\nrecommended strength {chosen:g}{verdict}", sys.stdout)
    if args.out is not None:
        calibrated.save(args.out, overwrite=args.force)
        say(f"wrote {args.out}: {calibrated!r}", sys.stdout)
    return 0


COMMAND = Command(
    "calibrate",
    "sweep a vector's strength on held-in inputs and record the best one",
    configure,
    run,
)
