"""Shared plumbing of the quality benchmarks: data paths, row ranges, extraction variants, runs.

The data lives in ../shared/data (read here, never copied into the package).
Every benchmark extracts a vector from its demonstrations, calibrates its
strength on held-in rows (disjoint from demos and test rows), then runs the
harness (zero-shot, ICL with the same demos, ICV over a sweep that includes the
calibrated strength) on the test rows, and writes JSON, markdown and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import icv
from icv.calibrate import calibrate
from icv.evaluate import evaluate
from icv.scorers import PerplexityScorer, RepetitionScorer, Scorer, SimilarityScorer, fluency_model_for

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("ICV_DATA", REPO.parent / "shared" / "data"))


def rows(spec: str) -> range:
    """``"0:200"`` -> range(0, 200)."""
    start, _, stop = spec.partition(":")
    return range(int(start), int(stop))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="steered model (default: embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--test-rows", default="0:200", help="test rows, start:stop")
    parser.add_argument("--calib-rows", default=None, help="held-in rows for calibration, start:stop")
    parser.add_argument("--k", type=int, default=None, help="number of demonstrations")
    parser.add_argument("--method", default="pca", choices=("pca", "mean"))
    parser.add_argument(
        "--preset",
        default=None,
        choices=("paper",),
        help="extract with icv.extract(preset=...) (fixes --method and --template)",
    )
    parser.add_argument(
        "--template",
        default="raw",
        choices=("raw", "chat"),
        help="how demo texts are presented at extraction",
    )
    parser.add_argument("--mode", default="rotate", choices=("rotate", "add"))
    parser.add_argument("--site", default=None, choices=("mlp", "block", "attn"))
    parser.add_argument("--layers", default=None, help="steer only layers start:stop")
    parser.add_argument(
        "--positions",
        default=None,
        choices=("all", "prompt", "generated"),
        help="which token positions are steered (default: the vector's)",
    )
    parser.add_argument("--strengths", default=None, help="comma-separated sweep (default: per benchmark)")
    parser.add_argument("--calib-strengths", default=None, help="comma-separated calibration sweep")
    parser.add_argument(
        "--min-content", type=float, default=None, help="calibration's content floor (default: per benchmark)"
    )
    parser.add_argument("--no-calibrate", action="store_true")
    parser.add_argument("--no-fluency", action="store_true", help="skip Gemma perplexity")
    parser.add_argument("--methods", default="zero-shot,icl,icv", help="any of zero-shot,icl,icv,icl+icv")
    parser.add_argument(
        "--hybrid-strengths", default=None, help="comma-separated icl+icv sweep (default: per benchmark)"
    )
    parser.add_argument(
        "--hybrid-calib-strengths", default=None, help="comma-separated icl+icv calibration sweep"
    )
    parser.add_argument(
        "--prompt-demos",
        type=int,
        default=None,
        help="icl+icv: how many of the demos (the first) go into the prompt (default: all); "
        "the vector is always made from all of them",
    )
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="output folder (default: benchmarks/quality/out/<name>)")
    parser.add_argument("--name", default=None, help="run name (file stem)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a small shared machine)"
    )


def floats(text: str | None, default: tuple[float, ...]) -> list[float]:
    return [float(s) for s in text.split(",")] if text else list(default)


def chat_template(tokenizer: Any) -> str:
    """The model's chat format around ``{text}`` (as a user turn), braces escaped."""
    marker = "\x00TEXT\x00"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    return rendered.replace("{", "{{").replace("}", "}}").replace(marker, "{text}")


def run(
    args: argparse.Namespace,
    *,
    name: str,
    demos: list[tuple[str, str]],
    test_inputs: list[str],
    test_references: list[str] | None,
    calib_inputs: list[str],
    style: Scorer,
    extra_scorers: list[Scorer],
    strengths: tuple[float, ...],
    calib_strengths: tuple[float, ...],
    min_content: float,
    info: dict[str, Any],
    hybrid_strengths: tuple[float, ...] = (),
    hybrid_calib_strengths: tuple[float, ...] = (),
) -> dict[str, Any]:
    """Extract, calibrate, evaluate; write <out>/<name>.{json,md,png} and the calibration table."""
    out = Path(args.out or REPO / "benchmarks" / "quality" / "out")
    stem = args.name or name
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    model, tokenizer = icv.load_model(args.model)
    template = chat_template(tokenizer) if args.template == "chat" else "{text}"
    site = args.site or ("mlp" if args.mode == "rotate" else "block")
    reading = {"preset": args.preset} if args.preset else {"method": args.method, "template": template}
    vector = icv.extract(
        model,
        tokenizer,
        demos,
        **reading,
        injection_mode=args.mode,
        injection_site=site,
        name=name,
        progress=False,
    )
    steer_options: dict[str, Any] = {}
    if args.layers:
        steer_options["layers"] = list(rows(args.layers))
    if args.positions:
        steer_options["positions"] = args.positions
    fluency = None if args.no_fluency else PerplexityScorer(model_name=fluency_model_for(model))
    methods = [m for m in args.methods.split(",") if m]
    in_prompt = demos[: args.prompt_demos] if args.prompt_demos is not None else demos
    calibration_tables: dict[str, str] = {}
    sweeps = {
        "icv": floats(args.strengths, strengths),
        "icl+icv": floats(args.hybrid_strengths, hybrid_strengths or strengths),
    }
    if not args.no_calibrate:
        # Each steered arm gets its own calibration: the hybrid's prompt holds the demos,
        # so its strength is calibrated with them there (the vector records which form).
        forms = {
            "icv": ("calibrated_strength", None, floats(args.calib_strengths, calib_strengths)),
            "icl+icv": (
                "hybrid_calibrated_strength",
                in_prompt,
                floats(args.hybrid_calib_strengths, hybrid_calib_strengths or calib_strengths),
            ),
        }
        for arm in (m for m in ("icv", "icl+icv") if m in methods):
            key, prompt_demos, grid = forms[arm]
            t0 = time.perf_counter()
            result = calibrate(
                model,
                tokenizer,
                vector,
                calib_inputs,
                style=style,
                fluency=fluency,
                strengths=grid,
                min_content=min_content if args.min_content is None else args.min_content,
                layer_ranges=[steer_options["layers"]] if "layers" in steer_options else None,
                demos=prompt_demos,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
            )
            calibrated = result.vector
            calibration_tables[arm] = result.report.markdown()
            info[key.replace("strength", "seconds")] = round(time.perf_counter() - t0, 1)
            info[key] = calibrated.recommended_strength
            if calibrated.recommended_strength not in sweeps[arm]:
                sweeps[arm] = sorted(sweeps[arm] + [calibrated.recommended_strength])
            print(f"{arm} calibration\n{calibration_tables[arm]}", flush=True)
        # The last calibration's vector (the hybrid's, when it ran) carries its layer choice
        # and marks its arm's recommended strength; the directions are the same either way.
        vector = calibrated if calibration_tables else vector
        if calibration_tables:
            steer_options.pop("layers", None)
    elif vector.recommended_strength is not None and vector.recommended_strength not in sweeps["icv"]:
        sweeps["icv"] = sorted(sweeps["icv"] + [vector.recommended_strength])
    scorers = [RepetitionScorer(3)] + ([fluency] if fluency is not None else []) + extra_scorers
    evaluation = evaluate(
        model,
        tokenizer,
        demos,
        test_inputs,
        style=style,
        content=SimilarityScorer(),
        scorers=scorers,
        references=test_references,
        vector=vector,
        strengths=sweeps["icv"],
        methods=methods,
        hybrid_strengths=sweeps["icl+icv"],
        prompt_demos=args.prompt_demos,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        **steer_options,
    )
    evaluation.settings.update(info)
    evaluation.settings["demos"] = [list(d) for d in demos]
    evaluation.settings["extraction"] = {
        "preset": args.preset,
        "method": vector.metadata["method"],
        "template": args.template,
        "mode": args.mode,
        "site": site,
        "layers": args.layers,
    }
    evaluation.settings["total_seconds"] = round(time.perf_counter() - started, 1)
    paths = evaluation.save(out, stem=stem, title=f"{name}: {evaluation.settings['model']}")
    for arm, table in calibration_tables.items():
        suffix = "calibration" if arm == "icv" else "hybrid-calibration"
        (out / f"{stem}.{suffix}.md").write_text(table + "\n")
    print(evaluation.markdown())
    print(json.dumps({k: v for k, v in info.items()}, indent=1))
    print(
        f"wrote {paths['json']}, {paths['markdown']}, {paths['plot']} in {evaluation.settings['total_seconds']} s"
    )
    return evaluation.to_dict(outputs=False)
