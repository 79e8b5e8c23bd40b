"""``icv eval``: compare zero-shot, in-context learning, the ICV (and ICL + ICV) on test inputs, and write a report."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..arguments import non_negative_int, positive_int, probability, strength_list
from ..engines import DEFAULT_CONCURRENCY, ENGINES
from .common import Command, add_condition_options, load_model_for, quiet, read_vector

EVAL_STYLES = ("inoffensive", "negative", "positive")
EVAL_METHODS = ("zero-shot", "icl", "icv", "icl+icv")
API_KEY_ENV = "ICV_API_KEY"
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
    parser.add_argument(
        "--style",
        metavar="STYLE",
        help="style success: positive / negative (VADER), inoffensive (alt-profanity-check); with "
        "--judge-url any style in words, e.g. 'formal English'",
    )
    judge = parser.add_argument_group("a judge model rates the style (any OpenAI-compatible chat endpoint)")
    judge.add_argument(
        "--judge-url", metavar="URL", help="the endpoint's base, e.g. http://127.0.0.1:8000/v1"
    )
    judge.add_argument("--judge-model", metavar="NAME", help="the judge model, as the endpoint names it")
    judge.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="environment variable holding the judge's API key (default: OPENAI_API_KEY; unset: no key)",
    )
    judge.add_argument(
        "--judge-concurrency",
        type=positive_int,
        default=4,
        metavar="N",
        help="requests in flight (default 4)",
    )
    judge.add_argument(
        "--judge-cache",
        metavar="DIR",
        help="where the judge's answers are cached (default ~/.cache/icv/judge); a re-run costs nothing",
    )
    judge.add_argument("--no-judge-cache", action="store_true", help="ask the judge again every time")
    classifier = parser.add_argument_group("a text classifier rates the style")
    classifier.add_argument(
        "--style-model", metavar="NAME_OR_FOLDER", help="a Hugging Face text-classification model"
    )
    classifier.add_argument("--style-label", metavar="LABEL", help="its label for the style")
    classifier.add_argument(
        "--style-threshold",
        type=probability,
        metavar="P",
        help="count an output when the label's probability is above P (default: when it is the top label)",
    )
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
    engines = parser.add_argument_group("generation engine (docs/evaluation-engines.md)")
    engines.add_argument(
        "--engine",
        choices=ENGINES,
        default="transformers",
        help="transformers: model.generate (default); vllm: the whole sweep as one batch of vLLM requests, "
        "each with its own steering; server: the same requests to a running `icv serve` at --url",
    )
    engines.add_argument(
        "--url", metavar="URL", help="with --engine server: the server, e.g. http://host:8000"
    )
    engines.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"with --engine server: the server's API key (default: ${API_KEY_ENV}, which keeps it off the "
        "process list)",
    )
    engines.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"with --engine server: requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    engines.add_argument(
        "--tensor-parallel-size",
        type=positive_int,
        metavar="N",
        help="with --engine vllm: split the model over N GPUs (vLLM's tensor parallelism)",
    )
    engines.add_argument(
        "--enforce-eager",
        action="store_true",
        help="with --engine vllm: run vLLM's model eagerly (no compilation: starts faster, decodes slower)",
    )


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
    return methods


def _check_engine(args: argparse.Namespace) -> None:
    """Options of another engine are a usage error (said before any model is loaded)."""
    if args.engine != "server" and (args.url is not None or args.api_key is not None):
        args.parser.error("--url and --api-key are for --engine server")
    if args.engine != "vllm" and (args.tensor_parallel_size is not None or args.enforce_eager):
        args.parser.error("--tensor-parallel-size and --enforce-eager are for --engine vllm")
    if args.engine == "server" and not args.url:
        args.parser.error("--engine server needs --url (the server's address, e.g. http://host:8000)")


def _condition_rule(args: argparse.Namespace, methods: list[str]) -> Any:
    """The rule --when and --unless make (read before the model loads), or None without them."""
    from ..session import condition_rule

    if not args.when and not args.unless:
        return None
    if not any(m in methods for m in ("icv", "icl+icv")):
        args.parser.error("--when and --unless gate the steered methods: add icv or icl+icv to --methods")
    if args.engine != "transformers":
        args.parser.error("--when and --unless run on --engine transformers")
    return condition_rule(args.when, args.unless)


def _engine(args: argparse.Namespace, model_name: str) -> Any:
    """The engine --engine names, with its options."""
    from ..engines import ServerEngine, VllmEngine

    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if args.engine == "server":
        return ServerEngine(args.url, api_key=key, concurrency=args.concurrency)
    if args.engine == "vllm":
        options: dict[str, Any] = {"enforce_eager": True} if args.enforce_eager else {}
        if args.tensor_parallel_size is not None:
            options["tensor_parallel_size"] = args.tensor_parallel_size
        return VllmEngine(model_name, **options)
    return "transformers"


def _style_scorer(args: argparse.Namespace) -> Any:
    """The style scorer the options name: a classifier, a judge, or a built-in style."""
    from ..scorers import ClassifierScorer, OffensiveScorer, SentimentScorer

    judged = args.judge_url is not None or args.judge_model is not None
    if args.style_model is not None or args.style_label is not None:
        if judged:
            args.parser.error(
                "rate the style with a judge (--judge-url) or a classifier (--style-model), not both"
            )
        if args.style_model is None or args.style_label is None:
            args.parser.error("--style-model and --style-label go together")
        return ClassifierScorer(args.style_model, args.style_label, threshold=args.style_threshold)
    if args.style_threshold is not None:
        args.parser.error("--style-threshold is for --style-model")
    if not args.style:
        args.parser.error("--style is needed (or --style-model with --style-label)")
    if judged:
        if args.judge_url is None or args.judge_model is None:
            args.parser.error("--judge-url and --judge-model go together")
        from ..judge import JudgeScorer

        cache: bool | str = False if args.no_judge_cache else (args.judge_cache or True)
        return JudgeScorer(
            args.style,
            url=args.judge_url,
            model=args.judge_model,
            api_key_env=args.judge_key_env or None,
            concurrency=args.judge_concurrency,
            cache=cache,
        )
    if args.style not in EVAL_STYLES:
        args.parser.error(
            f"--style {args.style!r}: the built-in styles are {', '.join(EVAL_STYLES)}; for any other, "
            "name a judge (--judge-url, --judge-model) or a classifier (--style-model, --style-label)"
        )
    return OffensiveScorer() if args.style == "inoffensive" else SentimentScorer(args.style)


def run(args: argparse.Namespace) -> int:
    from ..demos import read_demos
    from ..evaluate import evaluate, read_inputs
    from ..models import model_name_of
    from ..scorers import BleuScorer, PerplexityScorer, RepetitionScorer, fluency_model_for

    methods = _eval_methods(args)
    _check_engine(args)
    style = _style_scorer(args)
    demos = read_demos(args.demos) if args.demos else None
    if args.prompt_demos is not None and demos is not None and args.prompt_demos > len(demos):
        args.parser.error(f"--prompt-demos {args.prompt_demos}: '{args.demos}' holds only {len(demos)}")
    inputs, references = read_inputs(args.inputs, args.limit)
    rule = _condition_rule(args, methods)
    vector = read_vector(args.vector) if args.vector else None
    model_name = args.model or (vector.metadata["model_name"] if vector is not None else None) or None
    model, tokenizer = load_model_for(args, model_name)
    engine = _engine(args, model_name_of(model))
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
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=False if quiet(args) else None,
        engine=engine,
        when=rule,
        **steer_options,
    )
    stats = getattr(style, "stats", None)
    if stats is not None:  # the judge's counts, unparsable answers among them, go in the report
        evaluation.settings["judge"] = {"url": args.judge_url, "model": args.judge_model, **stats.as_dict()}
    paths = evaluation.save(args.out)
    print(evaluation.markdown())
    if args.show:
        from ..display import side_by_side

        print("\n" + side_by_side(inputs, {r.label: r.outputs for r in evaluation.results}))
    if stats is not None:
        counts = stats.as_dict()
        print(
            f"\njudge {args.judge_model}: {counts['ratings']} ratings, {counts['cache_hits']} from the cache, "
            f"{counts['requests']} requests ({counts['retries']} retries), {counts['unparsable']} unparsable"
        )
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


COMMAND = Command(
    "eval",
    "compare zero-shot, ICL, ICV (and ICL + ICV) on test inputs",
    configure,
    run,
)
