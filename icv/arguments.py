"""Argument types of the command line: text in, a checked value out, or an ``argparse.ArgumentTypeError``.

Shared by ``icv`` (:mod:`icv.cli`) and ``icv serve``'s options (:mod:`icv.serving.command`),
and by the interactive ``/commands`` of ``icv generate -i``.  Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WeightedPath:
    path: str
    weight: float


VECTOR_SUFFIXES = (".safetensors", ".gguf")


def weighted_path(text: str) -> WeightedPath:
    """``PATH`` or ``PATH:WEIGHT``.

    What follows the last colon is a weight unless it reads as part of a path (it holds a
    folder separator or ends in a vector file's suffix, as in ``C:/v.safetensors``) or the
    whole text names an existing file; a weight that is not a number is an error.
    """
    path, sep, tail = text.rpartition(":")
    if not (sep and path) or _looks_like_path(tail) or Path(text).is_file():
        return WeightedPath(text, 1.0)
    try:
        weight = float(tail)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"the weight of '{path}' is not a number: '{tail}' (write PATH:WEIGHT, e.g. {path}:0.5)"
        ) from None
    if weight != weight or weight in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"weight of '{path}' must be finite, got {tail}")
    return WeightedPath(path, weight)


def _looks_like_path(tail: str) -> bool:
    return "/" in tail or "\\" in tail or tail.lower().endswith(VECTOR_SUFFIXES)


_LAYER_RANGE = re.compile(r"(-?\d+)-(-?\d+)")
_LAYER_INDEX = re.compile(r"-?\d+")


def layer_list(text: str) -> list[int]:
    """``"3,5-8,-1"`` -> ``[3, 5, 6, 7, 8, -1]``: indices (negative from the end) and inclusive ranges.

    A range counts from the start (``5-8``) or from the end (``-20--10``: the 20th-last to
    the 10th-last layer); one that mixes the two would depend on the model's depth.
    """
    layers: list[int] = []
    for part in text.replace(" ", "").split(","):
        if _LAYER_INDEX.fullmatch(part):
            layers.append(int(part))
        elif match := _LAYER_RANGE.fullmatch(part):
            first, last = int(match.group(1)), int(match.group(2))
            if (first < 0) != (last < 0):
                raise argparse.ArgumentTypeError(
                    f"layer range '{part}' mixes a count from the start with one from the end "
                    "(write 5-29, or -25--1)"
                )
            if last < first:
                raise argparse.ArgumentTypeError(f"layer range '{part}' runs backwards")
            layers.extend(range(first, last + 1))
        else:
            raise argparse.ArgumentTypeError(
                f"'{part}' is not a layer index or range (examples: 3 / -1 / 5-12 / -20--10 / 0,4,8-10)"
            )
    return layers


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"'{text}' is not finite")
    return value


def strength_list(text: str) -> list[float]:
    """``"0.02,0.04,0.08"`` -> ``[0.02, 0.04, 0.08]``: one strength or several, each finite, none repeated."""
    values = [finite_float(part) for part in text.replace(" ", "").split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"'{text}' repeats a strength")
    return values


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must not be negative")
    return value


def probability(text: str) -> float:
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be above 0 and at most 1")
    return value


def _whole_number(text: str, low: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"'{text}' {bound}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    """A count that may be 0 (``icv generate --with-demos 0``: the paraphrase prompt with no demos)."""
    return _whole_number(text, 0, "must not be negative")
