"""What every subcommand shares: messages, output checks, reading vectors, loading a model quietly."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..arguments import WeightedPath
from ..errors import VectorExistsError, VectorFileError

if TYPE_CHECKING:
    from ..vector import InContextVector

PROG = "icv"


@dataclass(frozen=True)
class Command:
    """One subcommand: its name and summary, what it adds to its parser, and what it runs."""

    name: str
    summary: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def say(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr)


def check_new_file(path: Path, force: bool) -> None:
    """Before any slow work: refuse an existing output without --force, and make its missing folders.

    ``--out vectors/positive.safetensors`` on a fresh clone makes ``vectors/`` (as ``mkdir -p``);
    the file itself is still written atomically (a temporary file, then a rename).
    """
    if path.exists() and not force:
        raise VectorExistsError(f"'{path}' exists; pass --force to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission
        raise VectorFileError(
            f"cannot write '{path}': cannot make folder '{folder}' ({error.strerror or error})"
        ) from None


def read_vector(path: str | Path) -> InContextVector:
    """A vector wherever the command line names one.

    An icv safetensors file, a GGUF control vector (recognised by its magic bytes), a folder
    that ``save_pretrained`` wrote, or a Hub id (``owner/name``, through the Hub's cache).
    """
    from ..gguf import import_gguf, is_gguf_file
    from ..hub import resolve
    from ..vector import InContextVector

    file = resolve(path)
    if is_gguf_file(file):
        return import_gguf(file)
    return InContextVector.load(file)


def add_condition_options(parser: argparse.ArgumentParser) -> None:
    """``--when`` and ``--unless`` (conditional steering), as icv generate and icv eval take them."""
    parser.add_argument(
        "--when",
        action="append",
        default=[],
        metavar="COND_OR_RULE",
        help="steer only if the prompt matches this condition file (icv condition), or a rule of "
        "condition files with &, |, ~ and parentheses ('a.safetensors & ~b.safetensors'); "
        "repeat: all must match",
    )
    parser.add_argument(
        "--unless",
        action="append",
        default=[],
        metavar="COND_OR_RULE",
        help="steer only if the prompt does not match this condition file or rule; repeat: none may match",
    )


def quiet(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "quiet", False))


# Read by huggingface_hub and transformers when they are imported.
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


@contextmanager
def quiet_libraries(enabled: bool) -> Iterator[None]:
    """No progress bars or notices from transformers and the hub (model loading, scorers' models).

    Before transformers is imported (the usual case: ``icv`` imports it only when a
    command needs a model), the environment tells it; once imported, its switches do.
    """
    if not enabled:
        yield
        return
    if "transformers" in sys.modules:
        from ..models import quiet_transformers

        with quiet_transformers():
            yield
        return
    saved = {key: os.environ.get(key) for key in QUIET_ENVIRONMENT}
    os.environ.update(QUIET_ENVIRONMENT)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_model_for(args: argparse.Namespace, name: str | None) -> tuple[Any, Any]:
    """The model a subcommand needs; with ``--quiet`` without a word or a progress bar."""
    from ..models import load_model

    if not quiet(args):
        say(f"{PROG}: loading model {name or '(embedded default)'} ...")
    return load_model(name, progress=not quiet(args))


def weighted_sum(specs: Sequence[WeightedPath]) -> InContextVector:
    """``w1 * v1 + w2 * v2 + ...`` through the vectors' own arithmetic (which refuses mixed models)."""
    total: InContextVector | None = None
    for spec in specs:
        vector = read_vector(spec.path)
        term = vector if spec.weight == 1.0 else vector * spec.weight
        total = term if total is None else total + term
    assert total is not None
    return total
