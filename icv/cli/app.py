"""The ``icv`` command's parser and entry point: the table of subcommands, exit codes, error display."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..errors import ICVError
from . import calibrate, combine, condition, evaluate, extract, generate, gguf, hub, inspect, serve, train
from .common import PROG, Command, quiet, quiet_libraries, say

COMMANDS: list[Command] = [
    extract.COMMAND,
    inspect.COMMAND,
    generate.COMMAND,
    combine.COMMAND,
    gguf.EXPORT,
    gguf.IMPORT,
    evaluate.COMMAND,
    calibrate.COMMAND,
    serve.COMMAND,
    hub.PUSH,
    hub.PULL,
    condition.COMMAND,
    train.COMMAND,
]


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    # Library warnings are for the user here, not for a developer: no file and line.
    say(f"{PROG}: warning: {message}")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the subcommand; SUPPRESS keeps the
    # subcommand's default from overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
    )
    common.add_argument(
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars or loading messages (ours and transformers')",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="In-context vectors: steer a language model with a few demonstrations.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = commands.add_parser(
            command.name, help=command.summary, description=command.summary, parents=[common]
        )
        command.configure(sub)
        sub.set_defaults(run=command.run, parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``icv`` command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: --help / --version (0) or a usage error (2)
        return stop.code if isinstance(stop.code, int) else 2
    debug = getattr(args, "debug", False)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        # Deprecations are for developers (Python hides them outside __main__ too): a
        # command shows the user only warnings about what it did, whatever filters the
        # caller (a test runner, an embedding program) set.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        try:
            with quiet_libraries(quiet(args)):
                code = args.run(args)
            sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
            return code
        except SystemExit as stop:  # parser.error() inside a subcommand
            return stop.code if isinstance(stop.code, int) else 2
        except ICVError as error:
            if debug:
                raise
            say(f"{PROG}: error: {error}")
            return 1
        except KeyboardInterrupt:
            if debug:
                raise
            say(f"{PROG}: interrupted")
            return 130
        except BrokenPipeError:
            # The reader went away (`icv inspect VEC | head`): stop quietly, as other tools do.
            _silence_stdout()
            return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
