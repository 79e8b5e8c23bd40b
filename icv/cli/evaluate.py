"""``icv eval``: compare zero-shot, in-context learning, the ICV (and ICL + ICV) on test inputs, and write a report."""

from __future__ import annotations

import argparse
from typing import Any

from ..arguments import non_negative_int, positive_int, strength_list
from .common import Command, add_condition_options, load_model_for, quiet, read_vector
from .scoring import (
    add_engine_arguments,
    add_style_arguments,
    build_engine,
    check_engine,
    judge_settings,
    judge_summary,
    style_scorer,
)

EVAL_METHODS = ("zero-shot", "icl", "icv", "icl+icv", "trained")
# icl+icv pays ICL's prompt at every strength of its sweep: asked for, not by default.
DEFAULT_METHODS = ("zero-shot", "icl", "icv")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demos",
        metavar="FILE",
        help="demonstrations: .jsonl (source/target), .json, .csv or .tsv; needed for icl, and for "
        "icv unless --vector is given",
    )
    parser.add_argument(
        "--inputs",
        required=True,
        metavar="FILE",
        help="test inputs, one per line; a second tab-separated column is the human reference",
    )
    add_style_arguments(parser)
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model name, folder or .gguf (default: the vector's model, else the embedded SmolLM2)",
    )
    parser.add_argument(
        "--vector",
        metavar="VEC",
        help="a saved vector (a file, GGUF control vector, folder or Hub id) instead of extracting one from --demos",
    )
    parser.add_argument(
        "--strengths",
        type=strength_list,
        metavar="LIST",
        help="comma-separated ICV strengths, e.g. 0.03,0.05,0.07",
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="LIST",
        help="comma-separated subset of zero-shot,icl,icv,icl+icv (default: the first three); "
        "icl+icv steers the ICL prompt with the same demos' vector",
    )
    parser.add_argument(
        "--hybrid-strengths",
        type=strength_list,
        metavar="LIST",
        help="comma-separated icl+icv strengths (default: the ICV sweep); with the demos in the prompt "
        "the vector moves the model further per unit of strength, so these are usually smaller",
    )
    parser.add_argument(
        "--prompt-demos",
        type=non_negative_int,
        metavar="K",
        help="icl+icv writes only the first K demos into its prompt (default: all); the vector keeps all",
    )
    trained = parser.add_argument_group("the trained arm: a vector fitted by icv train (docs/training.md)")
    trained.add_argument(
        "--trained",
        metavar="VEC",
        help="a vector file written by `icv train`: adds the 'trained' arm, at its recommended strength",
    )
    trained.add_argument(
        "--train",
        action="store_true",
        help="train the 'trained' arm's vector here on --demos (from the icv arm's vector) and add the arm",
    )
    trained.add_argument(
        "--train-level",
        choices=("coefficients", "directions"),
        help="with --train: what is fitted (default: coefficients)",
    )
    trained.add_argument("--train-steps", type=positive_int, metavar="N", help="with --train: the most steps")
    trained.add_argument(
        "--train-objective",
        choices=("teacher", "distillation", "preference"),
        help="with --train: what the vector is fitted to (default: teacher; see icv train --objective)",
    )
    trained.add_argument(
        "--trained-strengths",
        type=strength_list,
        metavar="LIST",
        help="comma-separated strengths for the trained arm (default: its recommended strength alone)",
    )
    parser.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N inputs")
    add_condition_options(parser)
    parser.add_argument("--extract-method", default="pca", choices=("pca", "mean"))
    parser.add_argument("--mode", choices=("rotate", "add"), help="injection mode (default: the vector's)")
    parser.add_argument("--site", choices=("block", "mlp", "attn"), help="injection site")
    parser.add_argument("--max-new-tokens", type=positive_int, default=40, metavar="N")
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N")
    parser.add_argument("--no-fluency", action="store_true", help="skip the perplexity scorer (Gemma 3 270M)")
    parser.add_argument(
        "--show", action="store_true", help="also print every output, each input with one line per method"
    )
    parser.add_argument(
        "--out", default="icv-eval", metavar="DIR", help="folder for eval.json, eval.md and eval.png"
    )
    add_engine_arguments(parser)


def _eval_methods(args: argparse.Namespace) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(EVAL_METHODS))
    if unknown or not methods:
        args.parser.error(
            f"--methods: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(EVAL_METHODS)}"
        )
    if args.demos is None and (
        "icl" in methods or "icl+icv" in methods or ("icv" in methods and args.vector is None)
    ):
        args.parser.error(
            "--demos is needed for the icl and icl+icv methods, and for icv unless --vector is given"
        )
    if "icl+icv" not in methods and (args.hybrid_strengths is not None or args.prompt_demos is not None):
        args.parser.error("--hybrid-strengths and --prompt-demos set the icl+icv method: add it to --methods")
    return _trained_arm(args, methods)


def _trained_arm(args: argparse.Namespace, methods: list[str]) -> list[str]:
    """``--trained`` / ``--train`` add the trained arm; its other options need one of them."""
    if args.trained is not None and args.train:
        args.parser.error("--trained FILE evaluates a trained vector, --train trains one here: choose one")
    if args.train and args.demos is None:
        args.parser.error("--train trains on --demos: give the demonstrations")
    if not args.train and any(
        option is not None for option in (args.train_level, args.train_steps, args.train_objective)
    ):
        args.parser.error("--train-level, --train-steps and --train-objective are for --train")
    if args.trained is not None or args.train:
        return methods if "trained" in methods else [*methods, "trained"]
    if "trained" in methods:
        args.parser.error("the trained method needs --trained FILE (a vector `icv train` wrote) or --train")
    if args.trained_strengths is not None:
        args.parser.error("--trained-strengths is for the trained arm: give --trained FILE or --train")
    return methods


def _condition_rule(args: argparse.Namespace, methods: list[str]) -> Any:
    """The rule --when and --unless make (read before the model loads), or None without them."""
    from ..session import condition_rule

    if not args.when and not args.unless:
        return None
    if not any(m in methods for m in ("icv", "icl+icv")):
        args.parser.error("--when and --unless gate the steered methods: add icv or icl+icv to --methods")
    return condition_rule(args.when, args.unless)


def run(args: argparse.Namespace) -> int:
    from ..demos import read_demos
    from ..evaluate import evaluate, read_inputs
    from ..models import model_name_of
    from ..scorers import BleuScorer, PerplexityScorer, RepetitionScorer, fluency_model_for

    methods = _eval_methods(args)
    check_engine(args)
    style = style_scorer(args)
    demos = read_demos(args.demos) if args.demos else None
    if args.prompt_demos is not None and demos is not None and args.prompt_demos > len(demos):
        args.parser.error(f"--prompt-demos {args.prompt_demos}: '{args.demos}' holds only {len(demos)}")
    inputs, references = read_inputs(args.inputs, args.limit)
    rule = _condition_rule(args, methods)
    vector = read_vector(args.vector) if args.vector else None
    trained = read_vector(args.trained) if args.trained else None
    train_options = (
        {
            k: v
            for k, v in (
                ("level", args.train_level),
                ("steps", args.train_steps),
                ("objective", args.train_objective),
            )
            if v is not None
        }
        if args.train
        else None
    )
    known = vector if vector is not None else trained
    model_name = args.model or (known.metadata["model_name"] if known is not None else None) or None
    model, tokenizer = load_model_for(args, model_name)
    engine = build_engine(args, model_name_of(model))
    fluency = [] if args.no_fluency else [PerplexityScorer(model_name=fluency_model_for(model))]
    scorers = [RepetitionScorer(3), *fluency, *([BleuScorer()] if references is not None else [])]
    steer_options = {k: v for k, v in (("mode", args.mode), ("site", args.site)) if v}
    evaluation = evaluate(
        model,
        tokenizer,
        demos,
        inputs,
        style=style,
        scorers=scorers,
        references=references,
        vector=vector,
        strengths=args.strengths,
        methods=methods,
        hybrid_strengths=args.hybrid_strengths,
        prompt_demos=args.prompt_demos,
        extract_options={"method": args.extract_method},
        trained=trained,
        trained_strengths=args.trained_strengths,
        train_options=train_options,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=False if quiet(args) else None,
        engine=engine,
        when=rule,
        **steer_options,
    )
    judged = judge_settings(style, args)
    if judged is not None:  # the judge's counts, unparsable answers among them, go in the report
        evaluation.settings["judge"] = judged
    paths = evaluation.save(args.out)
    print(evaluation.markdown())
    if args.show:
        from ..display import side_by_side

        print("\n" + side_by_side(inputs, {r.label: r.outputs for r in evaluation.results}))
    if judged is not None:
        print("\n" + judge_summary(judged))
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


COMMAND = Command(
    "eval",
    "compare zero-shot, ICL, ICV (and ICL + ICV, a trained vector) on test inputs",
    configure,
    run,
)
