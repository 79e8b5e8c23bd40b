"""``icv serve``: its options and the table of engines (one row per engine).

An engine is a function ``(args) -> exit code`` that serves until interrupted;
:data:`ENGINES` is the one place that lists them, and ``--engine`` chooses among
its rows.  Options every engine understands are added here; an engine's own
options go in its ``add_arguments`` function.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from ..arguments import non_negative_float, positive_int
from ..distribution import pip_install
from .access import API_KEY_ENV, is_loopback
from .address import DEFAULT_HOST, DEFAULT_PORT


@dataclass(frozen=True)
class ServeEngine:
    """One way to serve: what it adds to the command line and how it runs."""

    summary: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- engine: transformers ---------------------------------------------------------------


def add_transformers_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine transformers")
    group.add_argument(
        "--max-batch",
        type=positive_int,
        default=16,
        metavar="N",
        help="rows decoded together at most (default: 16)",
    )
    group.add_argument(
        "--gather-ms",
        type=non_negative_float,
        default=5.0,
        metavar="MS",
        help="when idle, how long the first request waits for others to batch with (default: 5)",
    )
    group.add_argument(
        "--max-queue",
        type=positive_int,
        default=256,
        metavar="N",
        help="requests waiting at most; more get 503 (default: 256)",
    )
    group.add_argument(
        "--max-tokens",
        type=positive_int,
        default=1024,
        metavar="N",
        help="the largest max_tokens a request may ask for (default: 1024)",
    )
    group.add_argument(
        "--prefill-chunk",
        type=positive_int,
        default=256,
        metavar="TOKENS",
        help="what one prefill chunk may cost, in prompt tokens with no context before them (chunks "
        "narrow as a prompt's context grows), and an extraction's batch bound: what a running "
        "stream waits at most for other work (default: 256)",
    )
    group.add_argument(
        "--max-text-tokens",
        type=positive_int,
        default=256,
        metavar="N",
        help="tokens in one text of a pair sent to /v1/vectors/extract, at most (default: 256)",
    )
    group.add_argument(
        "--max-extractions",
        type=positive_int,
        default=4,
        metavar="N",
        help="extractions running or waiting at once; more get 503 (default: 4)",
    )
    group.add_argument(
        "--max-vectors",
        type=positive_int,
        default=32,
        metavar="N",
        help="vectors uploaded or extracted while the server runs, held at most; DELETE frees room (default: 32)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="run decode steps compiled by torch.compile (inductor), steering included: faster decoding "
        "once compiled, after minutes of compiling before the server listens (docs/serving.md); "
        "vectors must then inject as a loaded vector or as rotate@mlp / add@block do",
    )
    group.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=[],
        metavar="NAME",
        help="more Host names to answer to (besides the bound address, localhost, 127.0.0.1, [::1] and the "
        "address a client reached); '*' turns the check off (behind a proxy)",
    )
    group.add_argument(
        "--allowed-origins",
        nargs="+",
        default=[],
        metavar="ORIGIN",
        help="web origins (https://app.example) whose pages may call this server (CORS); default: none",
    )
    group.add_argument(
        "--allow-writes",
        action="store_true",
        help="on a non-loopback address without --api-key, keep the routes that add or delete vectors on "
        "(trusted networks only)",
    )


def run_transformers(args: argparse.Namespace) -> int:
    from ..models import load_model
    from .access import AccessPolicy, split_names
    from .compiled import Compilation
    from .engine import BatchingPolicy
    from .http import ServerLimits
    from .server import load_library, serve

    access = AccessPolicy(
        api_key=args.api_key,
        bound_host=args.host,
        allowed_hosts=split_names(args.allowed_hosts),
        allowed_origins=split_names(args.allowed_origins),
        allow_writes=args.allow_writes,
    )

    _say(f"loading model {args.model or '(embedded default)'} ...")
    model, tokenizer = load_model(args.model)
    library = load_library(model, args.vectors)
    _say(f"vectors: {', '.join(library.names) or 'none'}")
    if library.condition_names:
        _say(f"conditions (steering_when): {', '.join(library.condition_names)}")
    for name, reason in sorted(library.unfit.items()):
        _say(f"not served (made for another model): {name}: {reason}")
    policy = BatchingPolicy(
        max_batch=args.max_batch,
        gather_ms=args.gather_ms,
        max_queue=args.max_queue,
        prefill_chunk=args.prefill_chunk,
    )
    address = f"http://{_url_host(args.host)}:{args.port}"
    for line in access.describe():
        _say(line)
    if args.compile:
        _say("compiling the decode step (minutes on a CPU; the server listens once it is done) ...")

    def announce() -> None:
        _say(f"serving on {address}/v1 (Ctrl-C stops)")
        _say(f"playground: {address}/ (open it in a browser)")

    serve(
        model,
        tokenizer,
        library,
        host=args.host,
        port=args.port,
        policy=policy,
        max_tokens=args.max_tokens,
        model_id=args.served_model_name,
        limits=ServerLimits(
            max_added_vectors=args.max_vectors,
            max_text_tokens=args.max_text_tokens,
            max_extractions=args.max_extractions,
        ),
        access=access,
        compilation=Compilation() if args.compile else None,
        announce=announce,
    )
    return 0


# -- engine: vllm -----------------------------------------------------------------------


def add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        f"engine vllm (vLLM's OpenAI server with icv's plugin; {pip_install('vllm')})"
    )
    group.add_argument(
        "--vllm-args",
        default="",
        metavar="ARGS",
        help='more `vllm serve` options, in one string (e.g. "--max-model-len 2048 -tp 2")',
    )


def vllm_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` of the vLLM server ``icv serve --engine vllm`` becomes."""
    from .vllm.launch import command

    argv, env = command(
        args.model,
        args.vectors,
        host=args.host,
        port=args.port,
        extra=shlex.split(args.vllm_args),
        served_model_name=args.served_model_name,
    )
    if args.api_key is not None:
        env["VLLM_API_KEY"] = args.api_key  # vLLM's --api-key, kept off the process list
    return argv, env


def run_vllm(args: argparse.Namespace) -> int:
    argv, env = vllm_command(args)
    _say(f"starting vLLM: {shlex.join(argv)}")
    os.execve(argv[0], argv, env)  # the server is vLLM's own process from here on
    return 0  # not reached


ENGINES: dict[str, ServeEngine] = {
    "transformers": ServeEngine(
        "the model in this process, batched per step (default)", add_transformers_arguments, run_transformers
    ),
    "vllm": ServeEngine(
        "vLLM's OpenAI server, steered in every worker by icv's plugin (needs vLLM installed)",
        add_vllm_arguments,
        run_vllm,
    ),
}


# -- the subcommand ---------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Every option of ``icv serve`` (the common ones, then each engine's)."""
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model folder, hub id, .gguf file or alias (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--vectors",
        nargs="+",
        default=[],
        metavar="DIR_OR_FILE",
        help="vector files (safetensors or GGUF), folders of them, save_pretrained folders or Hub ids (owner/name); a vector is named by its file stem, folder or repository name; conditions (for steering_when) go here too, as files, folders or Hub ids",
    )
    parser.add_argument(
        "--engine",
        choices=sorted(ENGINES),
        default="transformers",
        help="; ".join(f"{name}: {engine.summary}" for name, engine in ENGINES.items()),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)",
    )
    parser.add_argument(
        "--api-key",
        type=api_key,
        default=os.environ.get(API_KEY_ENV) or None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}, else no key)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--served-model-name",
        metavar="NAME",
        help="the model's name in /v1/models and requests (default: the model's own name)",
    )
    for engine in ENGINES.values():
        engine.add_arguments(parser)


def run_serve(args: argparse.Namespace) -> int:
    if not is_loopback(args.host) and args.api_key is None:
        _say(f"warning: listening on {args.host} with no API key: anyone who can reach it can use the model")
    try:
        return ENGINES[args.engine].run(args)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: not an error
        _say("stopped")
        return 0


def api_key(value: str) -> str:
    """An ``--api-key`` value: printable ASCII without spaces (what an HTTP header carries intact)."""
    if not value or not all(33 <= ord(c) < 127 for c in value):
        raise argparse.ArgumentTypeError("an API key is printable ASCII without spaces")
    return value


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _say(message: str) -> None:
    print(f"icv serve: {message}", file=sys.stderr, flush=True)
