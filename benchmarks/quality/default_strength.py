"""Where the default strength comes from: one calibration sweep per embedded model, on a common axis.

    .venv/bin/python benchmarks/quality/default_strength.py            # both models, rotate and add
    .venv/bin/python benchmarks/quality/default_strength.py --modes rotate --models smollm2

A strength is an angle (rotate) or a fraction of the activation's size (add) *per layer*, and
every layer is steered, so what a strength does grows with the layer count.  This script sweeps
the **budget** ``strength * num_layers`` (the same budgets on every model), runs
``icv.calibrate`` on held-in Yelp rows (``reference.0`` rows 300-339 by default: disjoint from the
test rows 0-199 of docs/results.md; the 8 hand-written demos of yelp.py) with the same floors on
both models (content >= 0.70, 3-gram repetition <= 0.2; no perplexity, to keep it short), and
writes one table per model and mode with the budget each calibration chose
(docs/results/default-strength.md).  ``icv.strength.DEFAULT_BUDGET`` is set from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import DATA, REPO, rows  # noqa: E402
from yelp import HANDWRITTEN, read_reference  # noqa: E402

import icv  # noqa: E402
from icv.layers import decoder_layers  # noqa: E402
from icv.scorers import SentimentScorer  # noqa: E402

BUDGETS = {
    "rotate": (0.9, 1.2, 1.5, 1.8, 2.1, 2.4),
    "add": (0.1, 0.15, 0.2, 0.25, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05),
}


def sweep(
    model_name: str, mode: str, inputs: list[str], budgets: tuple[float, ...], min_content: float
) -> dict:
    model, tokenizer = icv.load_model(model_name)
    num_layers = len(decoder_layers(model))
    vector = icv.extract(
        model, tokenizer, HANDWRITTEN[:8], name="positive", injection_mode=mode, progress=False
    )
    strengths = [round(b / num_layers, 5) for b in budgets]
    started = time.perf_counter()
    result = icv.calibrate(
        model,
        tokenizer,
        vector,
        inputs,
        style=SentimentScorer("positive"),
        strengths=strengths,
        min_content=min_content,
        max_new_tokens=32,
        batch_size=32,
    )
    report = result.report
    return {
        "model": model_name,
        "mode": mode,
        "num_layers": num_layers,
        "chosen_strength": report.chosen.strength,
        "chosen_budget": round(report.chosen.strength * num_layers, 3),
        "feasible": report.feasible,
        "seconds": round(time.perf_counter() - started, 1),
        "table": report.markdown(),
        "points": [
            {
                "budget": round(p.strength * num_layers, 3),
                "strength": p.strength,
                "style": p.style_success,
                "content": p.content,
                "repetition": p.repetition,
            }
            for p in [report.baseline, *report.points]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--modes", default="rotate,add")
    parser.add_argument("--calib-rows", default="300:340")
    parser.add_argument("--min-content", type=float, default=0.70)
    parser.add_argument(
        "--budgets", default=None, help="comma-separated budgets (default: per mode, BUDGETS)"
    )
    parser.add_argument(
        "--budgets", default=None, help="comma-separated budgets (default: per mode, BUDGETS)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "default-strength")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = read_reference(DATA / "yelp" / "reference.0")
    inputs = [data[i][0] for i in rows(args.calib_rows)]
    results = []
    for mode in args.modes.split(","):
        for model_name in args.models.split(","):
            budgets = tuple(float(b) for b in args.budgets.split(",")) if args.budgets else BUDGETS[mode]
            result = sweep(model_name, mode, inputs, budgets, args.min_content)
            results.append(result)
            print(
                f"## {model_name}, {mode}: chose {result['chosen_strength']:g} = budget {result['chosen_budget']:g} "
                f"/ {result['num_layers']} layers ({result['seconds']} s)\n\n{result['table']}\n",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {
                "calib_rows": args.calib_rows,
                "min_content": args.min_content,
                "demos": "yelp.py HANDWRITTEN[:8]",
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    lines = [
        "# Default strength: calibration per model on a common budget axis\n",
        f"Yelp reference.0 rows {args.calib_rows} (held-in), 8 hand-written demos, content floor "
        f"{args.min_content}, repetition <= 0.2. Budget = strength x decoder layers.\n",
    ]
    for r in results:
        lines.append(
            f"## {r['model']} ({r['num_layers']} layers), {r['mode']}: chose {r['chosen_strength']:g} "
            f"(budget {r['chosen_budget']:g})\n\n{r['table']}\n"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
