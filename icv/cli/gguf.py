"""``icv export`` and ``icv import``: vector files to llama.cpp's GGUF control vectors and back, and
to lm-evaluation-harness's steering files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..arguments import finite_float, layer_list, positive_int
from .common import PROG, Command, check_new_file, read_vector, say


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vector", metavar="VEC", help="the vector to export (a file, folder or Hub id)")
    parser.add_argument(
        "--format",
        choices=("gguf", "lm-eval"),
        default="gguf",
        help="gguf: llama.cpp control vector; lm-eval: the .pt steering file of lm-evaluation-harness's "
        "`steered` model (additive vectors only)",
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
    lm_eval = parser.add_argument_group("--format lm-eval")
    lm_eval.add_argument(
        "--mode", choices=("add",), help="export a rotating vector as addition (the file can only add)"
    )
    lm_eval.add_argument(
        "--site", choices=("block", "mlp", "attn"), help="where to add (default: the vector's)"
    )
    lm_eval.add_argument(
        "--layers", type=layer_list, metavar="LIST", help="only these layers (e.g. 10-20, -8--1)"
    )


def run_export(args: argparse.Namespace) -> int:
    if args.format == "lm-eval":
        return _export_lm_eval(args)
    if (args.mode, args.site, args.layers) != (None, None, None):
        args.parser.error("--mode, --site and --layers are for --format lm-eval")
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


def _export_lm_eval(args: argparse.Namespace) -> int:
    from ..lmeval_file import export_lm_eval

    vector = read_vector(args.vector)
    check_new_file(args.out, args.force)
    report = export_lm_eval(
        vector,
        args.out,
        strength=args.strength,
        mode=args.mode,
        site=args.site,
        layers=args.layers,
        overwrite=args.force,
    )
    say(
        f"wrote {report.path}: {len(report.hookpoints)} hookpoints ({report.hookpoints[0]} .. "
        f"{report.hookpoints[-1]}), steering_coefficient {report.strength:g}\n"
        f"use: lm_eval --model steered --model_args pretrained=MODEL,steer_path={report.path} --tasks ...",
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


EXPORT = Command(
    "export",
    "write a vector as a llama.cpp GGUF control vector or an lm-eval steering file",
    configure_export,
    run_export,
)
IMPORT = Command("import", "read a GGUF control vector into a vector file", configure_import, run_import)
