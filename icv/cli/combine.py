"""``icv combine``: a weighted sum of vectors of the same model, written as a new vector file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..arguments import weighted_path
from .common import Command, check_new_file, say, weighted_sum


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "vectors",
        nargs="+",
        type=weighted_path,
        metavar="VEC[:WEIGHT]",
        help="vectors to add, each optionally weighted",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="OUT", help="the vector file to write")
    parser.add_argument("--name", help="the combination's name (default: the arithmetic it records)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    check_new_file(args.out, args.force)
    total = weighted_sum(args.vectors)
    if args.name:
        total = total.with_metadata(name=args.name)
    total.save(args.out, overwrite=args.force)
    say(f"wrote {args.out}: {total!r}", sys.stdout)
    return 0


COMMAND = Command("combine", "weighted sum of vectors of the same model", configure, run)
