"""The options ``icv eval`` and ``icv calibrate`` share: which scorer rates the style, and which engine generates.

One place builds the scorer (a built-in style, a judge model, or a text classifier) and the
engine (transformers, vLLM, or a running ``icv serve``) from the command line, so the two
commands accept the same options with the same checks and messages.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..arguments import positive_int, probability
from ..engines import DEFAULT_CONCURRENCY, ENGINES

EVAL_STYLES = ("inoffensive", "negative", "positive")
API_KEY_ENV = "ICV_API_KEY"


def add_style_arguments(parser: argparse.ArgumentParser) -> None:
    """``--style``, the judge's options (``--judge-url`` ...) and the classifier's (``--style-model`` ...)."""
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


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine`` with ``--url``, ``--api-key``, ``--concurrency`` (server) and the vLLM options."""
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


def check_engine(args: argparse.Namespace) -> None:
    """Options of another engine are a usage error (said before any model is loaded)."""
    if args.engine != "server" and (args.url is not None or args.api_key is not None):
        args.parser.error("--url and --api-key are for --engine server")
    if args.engine != "vllm" and (args.tensor_parallel_size is not None or args.enforce_eager):
        args.parser.error("--tensor-parallel-size and --enforce-eager are for --engine vllm")
    if args.engine == "server" and not args.url:
        args.parser.error("--engine server needs --url (the server's address, e.g. http://host:8000)")


def build_engine(args: argparse.Namespace, model_name: str) -> Any:
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


def style_scorer(args: argparse.Namespace) -> Any:
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


def judge_settings(style: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    """The judge's address, model and counts (unparsable answers among them) for a report; None without a judge."""
    stats = getattr(style, "stats", None)
    if stats is None:
        return None
    return {"url": args.judge_url, "model": args.judge_model, **stats.as_dict()}


def judge_summary(settings: dict[str, Any]) -> str:
    """One line of the judge's counts, printed after a run."""
    return (
        f"judge {settings['model']}: {settings['ratings']} ratings, {settings['cache_hits']} from the cache, "
        f"{settings['requests']} requests ({settings['retries']} retries), {settings['unparsable']} unparsable"
    )
