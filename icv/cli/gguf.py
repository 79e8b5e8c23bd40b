"""``icv export`` and ``icv import``: the two directions between vector files and llama.cpp's GGUF control vectors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..arguments import finite_float, positive_int
from .common import PROG, Command, check_new_file, read_vector, say


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vector", metavar="VEC", help="the vector to export (a file, folder or Hub id)")
    parser.add_argument(
        "--format",
        choices=("gguf",),
        default="gguf",
        help="gguf: llama.cpp control vector (the only format so far)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="the file to write, e.g. vec.gguf"
    )
    parser.add_argument(
        "--strength",
        type=finite_float,
        metavar="S",
        help="strength folded into the file (default: the vector's add@block recommendation, else the library's additive default)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_export(args: argparse.Namespace) -> int:
    vector = read_vector(args.vector)
    check_new_file(args.out, args.force)
    m = vector.metadata
    if (m["injection_mode"], m["injection_site"]) != ("add", "block"):
        say(
            f"{PROG}: note: '{vector.name}' applies as {m['injection_mode']}@{m['injection_site']}; llama.cpp "
            "only adds at block outputs, so the file holds what `icv generate --mode add` does"
        )
    from ..gguf import export_gguf

    report = export_gguf(vector, args.out, strength=args.strength, overwrite=args.force)
    blocks = f"{report.blocks[0]}..{report.blocks[-1]}"
    say(
        f"wrote {report.path}: {len(report.blocks)} directions (blocks {blocks}), strength {report.strength:g} "
        f"folded in, model hint '{report.model_hint}'\n"
        f"use: llama-cli -m MODEL.gguf --control-vector {report.path}   "
        f"(--control-vector-scaled {report.path} S multiplies by S)",
        sys.stdout,
    )
    return 0


def configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        metavar="FILE.gguf",
        help="a GGUF control vector (llama.cpp cvector-generator, repeng, EasySteer)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="VEC", help="the vector file to write (.safetensors)"
    )
    parser.add_argument(
        "--num-layers",
        type=positive_int,
        metavar="N",
        help="the model's decoder block count (default: one more than the highest direction.N)",
    )
    parser.add_argument(
        "--model-type", metavar="TYPE", help="override the file's model hint (transformers' model_type)"
    )
    parser.add_argument(
        "--name", help="the vector's name (default: the file's general.name, else its file name)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_import(args: argparse.Namespace) -> int:
    from ..gguf import import_gguf

    check_new_file(args.out, args.force)
    vector = import_gguf(args.file, num_layers=args.num_layers, model_type=args.model_type, name=args.name)
    vector.save(args.out, overwrite=args.force)
    say(f"wrote {args.out}: {vector!r}", sys.stdout)
    return 0


EXPORT = Command("export", "write a vector as a llama.cpp GGUF control vector", configure_export, run_export)
IMPORT = Command("import", "read a GGUF control vector into a vector file", configure_import, run_import)
