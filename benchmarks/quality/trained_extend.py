"""More strengths for one arm of a ``trained.py`` run: calibration rows and test rows, the same protocol.

    .venv-vllm/bin/python benchmarks/quality/trained_extend.py --task yelp --run docs/results/trained-yelp-smollm2 \
        --arm trained64 --strengths 0.075,0.09

Where ``trained.py``'s calibration chose the top of its grid, the frontier goes on past it:
this loads the arm's saved vector (``<run>.<arm>.safetensors``), runs ``icv.calibrate`` on the
task's held-in rows at ``--strengths`` (the same floors; the baseline row is the unsteered
model's, so the tables join) and ``icv.evaluate`` on the test rows at them, and writes
``<run>.<arm>-extended.{json,md,png}`` and ``<run>.<arm>-extended.calibration.md``
(``--suffix`` names another run of the same arm).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import rows  # noqa: E402
from trained import calibrated, engine_for_args, paradetox_task, scoring, yelp_task  # noqa: E402

import icv  # noqa: E402
from icv.evaluate import evaluate  # noqa: E402
from icv.scorers import PerplexityScorer, fluency_model_for  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("yelp", "paradetox"), required=True)
    parser.add_argument("--run", type=Path, required=True, help="the trained.py run's path prefix")
    parser.add_argument("--arm", required=True, help="icv8, trained8, icv64 or trained64")
    parser.add_argument("--strengths", required=True, help="comma-separated")
    parser.add_argument("--model", default=None)
    parser.add_argument("--test-rows", default="0:200")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--perplexity-baseline", choices=("unsteered", "inputs"), default="unsteered")
    parser.add_argument(
        "--suffix", default="extended", help="the outputs' name after the arm: <run>.<arm>-<suffix>.*"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    task = (yelp_task if args.task == "yelp" else paradetox_task)(rows(args.test_rows), args.pairs)
    strengths = [float(s) for s in args.strengths.split(",")]
    model, tokenizer = icv.load_model(args.model) if args.model else icv.load_model()
    vector = icv.InContextVector.load(f"{args.run}.{args.arm}.safetensors")
    fluency = PerplexityScorer(model_name=fluency_model_for(model))
    args.engine = engine_for_args(args, model)
    _, table = calibrated(args, model, tokenizer, task, vector, strengths, fluency)
    stem = Path(f"{args.run}.{args.arm}-{args.suffix}")
    Path(f"{stem}.calibration.md").write_text(table + "\n", encoding="utf-8")
    print(table, flush=True)
    method = "trained" if vector.metadata["method"] == "trained" else "icv"
    report = evaluate(
        model,
        tokenizer,
        task.demos,
        [s for s, _ in task.test],
        methods=[method],
        **(
            {"trained": vector, "trained_strengths": strengths} if method == "trained" else {"vector": vector}
        ),
        **({} if method == "trained" else {"strengths": strengths}),
        **scoring(args, task, fluency),
    )
    report.save(stem.parent, stem=stem.name, title=f"{task.name}, {args.arm} at more strengths")
    print(report.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
