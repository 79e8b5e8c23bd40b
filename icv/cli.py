"""The ``icv`` command: extract, inspect, try, combine and carry in-context vectors from a shell.

Each subcommand is a pair of functions, ``configure_<name>(parser)`` and
``run_<name>(args) -> int``, listed once in :data:`COMMANDS`; a new subcommand
(``eval``, say) is one more pair and one more row.  Exit codes: 0 success,
2 usage errors (argparse), 1 for the library's own errors (:class:`icv.ICVError`),
whose message is printed without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import __version__
from .errors import ICVError, OptionError, VectorExistsError, VectorFileError

if TYPE_CHECKING:
    from .vector import InContextVector

# Nothing above imports torch or transformers: `icv --help` and usage errors stay instant.
# Each subcommand imports what it needs when it runs.

PROG = "icv"


# -- shared helpers -------------------------------------------------------------------


def _say(message: str, stream: TextIO | None = None) -> None:
    print(message, file=stream or sys.stderr)


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    # Library warnings are for the user here, not for a developer: no file and line.
    _say(f"{PROG}: warning: {message}")


def _check_new_file(path: Path, force: bool) -> None:
    """Refuse before any slow work when the output exists and --force was not given."""
    if path.exists() and not force:
        raise VectorExistsError(f"'{path}' exists; pass --force to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VectorFileError(f"cannot write '{path}': folder '{folder}' does not exist")


def read_vector(path: str | Path) -> InContextVector:
    """An icv safetensors vector, or a GGUF control vector (recognised by its magic bytes)."""
    from .gguf import import_gguf, is_gguf_file
    from .vector import InContextVector

    if is_gguf_file(path):
        return import_gguf(path)
    return InContextVector.load(path)


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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


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
        from .models import quiet_transformers

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
    from .models import load_model

    if not quiet(args):
        _say(f"{PROG}: loading model {name or '(embedded default)'} ...")
    return load_model(name, progress=not quiet(args))


def _weighted_sum(specs: Sequence[WeightedPath]) -> InContextVector:
    """``w1 * v1 + w2 * v2 + ...`` through the vectors' own arithmetic (which refuses mixed models)."""
    total: InContextVector | None = None
    for spec in specs:
        vector = read_vector(spec.path)
        term = vector if spec.weight == 1.0 else vector * spec.weight
        total = term if total is None else total + term
    assert total is not None
    return total


# -- extract --------------------------------------------------------------------------


def configure_extract(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demos",
        required=True,
        metavar="FILE",
        help='demonstrations: JSONL ({"source": ..., "target": ...}), a .json array of pairs, CSV or TSV (two columns)',
    )
    parser.add_argument(
        "--out", required=True, metavar="VEC", type=Path, help="the vector file to write (.safetensors)"
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model folder, hub id, .gguf file or alias (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--method", choices=("pca", "mean"), help="aggregation over pairs (default: pca + mean)"
    )
    parser.add_argument(
        "--preset",
        choices=("paper",),
        help="paper: read the demonstrations exactly as the authors' reference code "
        "(punctuation deleted, svd_flip sign); excludes --method",
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument(
        "--template",
        metavar="TEXT",
        help="how each text is presented, with {text} where it goes (default: the raw text, as the paper)",
    )
    form.add_argument(
        "--chat",
        action="store_true",
        help="read each text as the assistant's reply in the model's chat template (for vectors that "
        "steer chat answers; needs a chat model)",
    )
    parser.add_argument(
        "--layers",
        type=layer_list,
        metavar="LIST",
        help="keep only these decoder layers (e.g. 10-20 or 0,4,-1); the others get a zero direction",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        metavar="N",
        help="texts per forward pass (default: 16)",
    )
    parser.add_argument("--name", help="the vector's name (default: the demonstrations file's name)")
    parser.add_argument(
        "--mode",
        choices=("rotate", "add"),
        default="rotate",
        help="how steering applies the vector by default (default: rotate, the paper)",
    )
    parser.add_argument(
        "--strength", type=finite_float, metavar="S", help="record a recommended strength in the vector"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run_extract(args: argparse.Namespace) -> int:
    from .demos import check_template, read_demos
    from .extract import extract
    from .prompts import chat_reply_template

    _check_new_file(args.out, args.force)
    template = check_template(args.template) if args.template is not None else None
    demos = read_demos(args.demos)
    model, tokenizer = load_model_for(args, args.model)
    if args.chat:
        template = chat_reply_template(tokenizer)
    vector = extract(
        model,
        tokenizer,
        demos,
        method=args.method,
        preset=args.preset,
        template=template,
        batch_size=args.batch_size,
        name=args.name or Path(args.demos).stem,
        injection_mode=args.mode,
        recommended_strength=args.strength,
        progress=not quiet(args),
    )
    if args.layers is not None:
        vector = vector.only_layers(args.layers)
    vector.save(args.out, overwrite=args.force)
    _say(f"wrote {args.out}: {vector!r}", sys.stdout)
    return 0


# -- inspect --------------------------------------------------------------------------


def configure_inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vector", metavar="VEC", help="a vector file (.safetensors) or a GGUF control vector")
    parser.add_argument(
        "--json", action="store_true", help="print the metadata, per-layer scales and norms as JSON"
    )
    parser.add_argument(
        "--columns",
        type=positive_int,
        default=3,
        metavar="N",
        help="layers per line of the table (default: 3)",
    )


def _strength_line(vector: InContextVector) -> str:
    m = vector.metadata
    if m["recommended_strength"] is not None:
        return f"{m['recommended_strength']:g} (for {m['injection_mode']}@{m['injection_site']})"
    from .strength import default_strength

    guess = default_strength(m["injection_mode"], vector.num_layers)
    return (
        f"none recorded (steering guesses {guess:g} for {m['injection_mode']} on {vector.num_layers} layers)"
    )


def _layer_table(vector: InContextVector, columns: int) -> list[str]:
    """Per layer, what varies: the residual stream's scale, the shift's own norm (when the file
    knows it), and the direction's norm unless it is 1 everywhere."""
    shifts = vector.shift_norms()
    norms = vector.layer_norms().tolist()
    table = {"scale": vector.layer_scales.tolist()}
    notes = ["scale: the residual stream's typical norm at that layer"]
    if shifts is not None:
        table["shift"] = shifts.tolist()
        notes.append("shift: the norm of the demonstrations' shift there")
    if all(abs(norm - 1.0) < 1e-4 for norm in norms):
        notes.append("every direction has norm 1")
    else:
        table["norm"] = norms
        notes.append("norm: the direction's norm")
    head = f"{'layer':>5}" + "".join(f" {name:>9}" for name in table)
    cells = [
        f"{layer:>5}" + "".join(f" {values[layer]:>9.4g}" for values in table.values())
        for layer in range(vector.num_layers)
    ]
    header = "   ".join([head] * min(columns, len(cells)))
    rows = ["   ".join(cells[i : i + columns]) for i in range(0, len(cells), columns)]
    return ["; ".join(notes), header, *rows]


def run_inspect(args: argparse.Namespace) -> int:
    vector = read_vector(args.vector)
    m = vector.metadata
    if args.json:
        report = {
            "file": str(args.vector),
            "metadata": m,
            "layer_norms": vector.layer_norms().tolist(),
            "layer_scales": vector.layer_scales.tolist(),
            "shift_norms": None if vector.shift_norms() is None else vector.shift_norms().tolist(),
        }
        print(json.dumps(report, indent=2))
        return 0
    demos = f"{m['num_demos']} demos" + (f" (sha256 {m['demos_sha256'][:12]})" if m["demos_sha256"] else "")
    lines = [
        f"file                  {args.vector}",
        f"name                  {m['name']}",
        f"model                 {m['model_name'] or 'unknown name'} ({m['model_type'] or 'unknown type'})",
        f"layers x hidden       {m['num_layers']} x {m['hidden_size']}",
        f"method                {m['method']}, {demos}",
        f"read at / applied as  {m['extraction_site']} / {m['injection_mode']}@{m['injection_site']}",
        f"recommended strength  {_strength_line(vector)}",
        f"template              {m['prompt_template']!r}",
        f"format                icv v{m['icv_format_version']}, written by icv {m['library_version']}",
        "",
        *_layer_table(vector, args.columns),
    ]
    print("\n".join(lines))
    return 0


# -- generate -------------------------------------------------------------------------


def configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt", nargs="?", metavar="PROMPT", help="the prompt; read from standard input when absent or '-'"
    )
    parser.add_argument(
        "--vector",
        action="append",
        required=True,
        type=weighted_path,
        metavar="VEC[:WEIGHT]",
        help="a vector (safetensors or GGUF), optionally weighted; repeat to add several",
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="the model (default: the first vector's model, else the embedded one)",
    )
    parser.add_argument(
        "--strength",
        type=strength_list,
        metavar="S[,S...]",
        help="steering strength; several (0.02,0.04,0.08) are generated side by side in one batch "
        "(default: the vector's recommended one, else a default for the model's depth)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="also print the unsteered completion (a row of the same batch)"
    )
    parser.add_argument("--mode", choices=("rotate", "add"), help="override the vector's injection mode")
    parser.add_argument(
        "--layers",
        type=layer_list,
        metavar="LIST",
        help="steer only these decoder layers (e.g. 10-20, -8--1)",
    )
    parser.add_argument(
        "--positions",
        choices=("all", "prompt", "generated"),
        default="all",
        help="which tokens to steer (default: all)",
    )
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template (a user turn)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse a vector made on a model of another name (by default a warning when "
        "the type, hidden size and layer count match)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=40,
        metavar="N",
        help="tokens to generate (default: 40)",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.0,
        metavar="T",
        help="0 (default): greedy; above 0: sample at this temperature",
    )
    parser.add_argument("--top-p", type=probability, metavar="P", help="with --temperature: nucleus sampling")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="with --temperature: the random seed, for repeatable samples"
    )
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print the completion as it is generated (default: when the output is a terminal and "
        "there is one completion)",
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="load the model once, then read prompts (and /commands that change the vector, strength ...) "
        "line by line; /help lists the commands",
    )


def _read_prompt(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.prompt is not None and args.prompt != "-":
        prompt = args.prompt
    elif sys.stdin is None or sys.stdin.isatty():
        parser.error("give a PROMPT argument or pipe one on standard input")
    else:
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        parser.error("the prompt is empty")
    return prompt


def _generate_settings(args: argparse.Namespace) -> Any:
    from .session import Settings

    if (args.top_p is not None or args.seed is not None) and args.temperature == 0:
        args.parser.error("--top-p and --seed need --temperature above 0 (greedy decoding does not sample)")
    if args.stream and (args.compare or len(args.strength or [None]) > 1):
        args.parser.error("--stream shows one completion as it comes: drop --compare, or give one strength")
    return Settings(
        vectors=list(args.vector),
        strengths=args.strength,
        compare=args.compare,
        chat=args.chat,
        mode=args.mode,
        layers=args.layers,
        positions=args.positions,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stream=args.stream,
        strict=args.strict,
    )


def run_generate(args: argparse.Namespace) -> int:
    from .session import Trial, interact

    if args.interactive and args.prompt is not None:
        args.parser.error("--interactive reads its prompts from standard input: drop PROMPT")
    settings = _generate_settings(args)
    prompt = None if args.interactive else _read_prompt(args, args.parser)
    first = read_vector(args.vector[0].path)
    model, tokenizer = load_model_for(args, args.model or first.metadata["model_name"] or None)
    trial = Trial(model, tokenizer, settings, _weighted_sum)
    if prompt is not None:
        trial.run(prompt, sys.stdout)
        return 0
    parsers = {
        "vector": weighted_path,
        "strengths": strength_list,
        "layers": layer_list,
        "temperature": non_negative_float,
        "top_p": probability,
        "seed": int,
        "tokens": positive_int,
    }
    return interact(trial, parsers, sys.stdin, sys.stdout, sys.stderr)


# -- combine --------------------------------------------------------------------------


def configure_combine(parser: argparse.ArgumentParser) -> None:
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


def run_combine(args: argparse.Namespace) -> int:
    _check_new_file(args.out, args.force)
    total = _weighted_sum(args.vectors)
    if args.name:
        total = total.with_metadata(name=args.name)
    total.save(args.out, overwrite=args.force)
    _say(f"wrote {args.out}: {total!r}", sys.stdout)
    return 0


# -- export / import ------------------------------------------------------------------


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vector", metavar="VEC", help="the vector file to export")
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
    _check_new_file(args.out, args.force)
    m = vector.metadata
    if (m["injection_mode"], m["injection_site"]) != ("add", "block"):
        _say(
            f"{PROG}: note: '{vector.name}' applies as {m['injection_mode']}@{m['injection_site']}; llama.cpp "
            "only adds at block outputs, so the file holds what `icv generate --mode add` does"
        )
    from .gguf import export_gguf

    report = export_gguf(vector, args.out, strength=args.strength, overwrite=args.force)
    blocks = f"{report.blocks[0]}..{report.blocks[-1]}"
    _say(
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
    from .gguf import import_gguf

    _check_new_file(args.out, args.force)
    vector = import_gguf(args.file, num_layers=args.num_layers, model_type=args.model_type, name=args.name)
    vector.save(args.out, overwrite=args.force)
    _say(f"wrote {args.out}: {vector!r}", sys.stdout)
    return 0


# -- eval -----------------------------------------------------------------------------

EVAL_STYLES = ("inoffensive", "negative", "positive")
EVAL_METHODS = ("zero-shot", "icl", "icv")


def configure_eval(parser: argparse.ArgumentParser) -> None:
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
        required=True,
        choices=EVAL_STYLES,
        help="style success: VADER positive/negative, or not offensive (alt-profanity-check)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="model name, folder or .gguf (default: the vector's model, else the embedded SmolLM2)",
    )
    parser.add_argument(
        "--vector",
        metavar="VEC",
        help="a saved vector (or GGUF control vector) instead of extracting one from --demos",
    )
    parser.add_argument(
        "--strengths", metavar="LIST", help="comma-separated ICV strengths, e.g. 0.03,0.05,0.07"
    )
    parser.add_argument(
        "--methods",
        default=",".join(EVAL_METHODS),
        metavar="LIST",
        help="comma-separated subset of zero-shot,icl,icv (default: all three)",
    )
    parser.add_argument("--limit", type=positive_int, metavar="N", help="use only the first N inputs")
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


def _eval_methods(args: argparse.Namespace) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(EVAL_METHODS))
    if unknown or not methods:
        args.parser.error(
            f"--methods: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(EVAL_METHODS)}"
        )
    if args.demos is None and ("icl" in methods or ("icv" in methods and args.vector is None)):
        args.parser.error("--demos is needed for the icl method, and for icv unless --vector is given")
    return methods


def _style_scorer(name: str) -> Any:
    from .scorers import OffensiveScorer, SentimentScorer

    return OffensiveScorer() if name == "inoffensive" else SentimentScorer(name)


def run_eval(args: argparse.Namespace) -> int:
    from .demos import read_demos
    from .evaluate import evaluate, read_inputs
    from .scorers import BleuScorer, PerplexityScorer, RepetitionScorer, fluency_model_for

    methods = _eval_methods(args)
    strengths = _parse_strengths(args.strengths) if args.strengths else None
    demos = read_demos(args.demos) if args.demos else None
    inputs, references = read_inputs(args.inputs, args.limit)
    vector = read_vector(args.vector) if args.vector else None
    model_name = args.model or (vector.metadata["model_name"] if vector is not None else None) or None
    model, tokenizer = load_model_for(args, model_name)
    fluency = [] if args.no_fluency else [PerplexityScorer(model_name=fluency_model_for(model))]
    scorers = [RepetitionScorer(3), *fluency, *([BleuScorer()] if references is not None else [])]
    steer_options = {k: v for k, v in (("mode", args.mode), ("site", args.site)) if v}
    evaluation = evaluate(
        model,
        tokenizer,
        demos,
        inputs,
        style=_style_scorer(args.style),
        scorers=scorers,
        references=references,
        vector=vector,
        strengths=strengths,
        methods=methods,
        extract_options={"method": args.extract_method},
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=False if quiet(args) else None,
        **steer_options,
    )
    paths = evaluation.save(args.out)
    print(evaluation.markdown())
    if args.show:
        from .display import side_by_side

        print("\n" + side_by_side(inputs, {r.label: r.outputs for r in evaluation.results}))
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {paths['plot']}")
    return 0


def _parse_strengths(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"--strengths must be comma-separated numbers, got {text!r}") from None


# -- the table of subcommands ---------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def configure_serve(parser: argparse.ArgumentParser) -> None:
    from .serving.command import add_serve_arguments

    add_serve_arguments(parser)


def run_serve(args: argparse.Namespace) -> int:
    from .serving.command import run_serve as serve_from_args

    return serve_from_args(args)


COMMANDS: list[Command] = [
    Command(
        "extract", "read an in-context vector from a file of demonstrations", configure_extract, run_extract
    ),
    Command("inspect", "show a vector's metadata and per-layer scales", configure_inspect, run_inspect),
    Command(
        "generate",
        "complete a prompt with the model steered by one or more vectors",
        configure_generate,
        run_generate,
    ),
    Command("combine", "weighted sum of vectors of the same model", configure_combine, run_combine),
    Command("export", "write a vector as a llama.cpp GGUF control vector", configure_export, run_export),
    Command("import", "read a GGUF control vector into a vector file", configure_import, run_import),
    Command(
        "eval", "compare zero-shot, in-context learning and the ICV on test inputs", configure_eval, run_eval
    ),
    Command(
        "serve",
        "serve the model over HTTP (OpenAI-compatible), steered per request",
        configure_serve,
        run_serve,
    ),
]


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
            _say(f"{PROG}: error: {error}")
            return 1
        except KeyboardInterrupt:
            if debug:
                raise
            _say(f"{PROG}: interrupted")
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
