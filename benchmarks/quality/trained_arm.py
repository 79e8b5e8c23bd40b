"""One trained arm of a ``trained.py`` run again, with other training options (objective, beta, L2, steps).

    .venv-vllm/bin/python benchmarks/quality/trained_arm.py --task paradetox --run docs/results/trained-paradetox-smollm2 \
        --start icv64 --level directions --objective preference --name trained-paradetox-smollm2.preference64

The same protocol as ``trained.py``'s trained arms, from the same start: the run's saved
extracted vector (``<run>.<start>.safetensors``, at its calibrated strength) is trained on the
task's pairs (the 8 hand-written demos for ``icv8``, the 64 data pairs for ``icv64``),
calibrated on the held-in rows over ``trained.TRAINED_FACTORS`` times the strength it was
trained at, and evaluated on the test rows at the calibrated strength and its neighbours.
Writes ``<out>/<name>.{json,md,png}`` (``icv.evaluate``'s report), ``<name>.calibration.md``
and ``<name>.safetensors``, so the arm joins the run's tables beside the arms it is compared with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rows  # noqa: E402
from trained import (  # noqa: E402
    TRAINED_FACTORS,
    calibrated,
    engine_for_args,
    neighbours,
    paradetox_task,
    scoring,
    yelp_task,
)

import icv  # noqa: E402
from icv.evaluate import evaluate  # noqa: E402
from icv.scorers import PerplexityScorer, fluency_model_for  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("yelp", "paradetox"), required=True)
    parser.add_argument("--run", type=Path, required=True, help="the trained.py run's path prefix")
    parser.add_argument("--start", choices=("icv8", "icv64"), default="icv64")
    parser.add_argument("--level", choices=("coefficients", "directions"), default="directions")
    parser.add_argument(
        "--objective", choices=("teacher", "distillation", "preference"), default="preference"
    )
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--regularization", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, default=None, help="default: the run's folder")
    parser.add_argument("--model", default=None)
    parser.add_argument("--test-rows", default="0:200")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--calibration-rows", type=int, default=24)
    parser.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--perplexity-baseline", choices=("unsteered", "inputs"), default="unsteered")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or args.run.parent
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    task = (yelp_task if args.task == "yelp" else paradetox_task)(rows(args.test_rows), args.pairs)
    task.calibration = task.calibration[: args.calibration_rows]
    pairs = task.demos if args.start == "icv8" else task.pairs
    model, tokenizer = icv.load_model(args.model) if args.model else icv.load_model()
    start = icv.InContextVector.load(f"{args.run}.{args.start}.safetensors")
    vector = icv.train(
        model,
        tokenizer,
        pairs,
        init=start,
        level=args.level,
        objective=args.objective,
        beta=args.beta,
        regularization=args.regularization,
        steps=args.steps,
        learning_rate=args.learning_rate,
        name=args.name,
    )
    trained_seconds = time.perf_counter() - started
    print(json.dumps(vector.metadata["training"], indent=1), flush=True)
    base = vector.recommended_strength
    assert base is not None
    grid = [round(base * f, 6) for f in TRAINED_FACTORS]
    fluency = PerplexityScorer(model_name=fluency_model_for(model))
    args.engine = engine_for_args(args, model)
    vector, table = calibrated(args, model, tokenizer, task, vector, grid, fluency)
    vector.save(out / f"{args.name}.safetensors", overwrite=True)
    (out / f"{args.name}.calibration.md").write_text(table + "\n", encoding="utf-8")
    print(table, flush=True)
    report = evaluate(
        model,
        tokenizer,
        pairs,
        [s for s, _ in task.test],
        methods=["trained"],
        trained=vector,
        trained_strengths=neighbours(vector.recommended_strength or 0.0, grid),
        **scoring(args, task, fluency),
    )
    report.settings.update(
        {
            "start": f"{args.run.name}.{args.start}",
            "calibrated": vector.recommended_strength,
            "training_seconds": round(trained_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    report.save(out, stem=args.name, title=f"{task.name}: {args.objective} {args.level} from {args.start}")
    print(report.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
