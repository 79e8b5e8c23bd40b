"""``icv serve``: its options and engines live in :mod:`icv.serving.command`, imported when used.

The import waits for the call, so that the rest of the command line does not load the
serving code (nor anything it imports).
"""

from __future__ import annotations

import argparse

from .common import Command


def configure(parser: argparse.ArgumentParser) -> None:
    from ..serving.command import add_serve_arguments

    add_serve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..serving.command import run_serve

    return run_serve(args)


COMMAND = Command(
    "serve", "serve the model over HTTP (OpenAI-compatible), steered per request", configure, run
)
