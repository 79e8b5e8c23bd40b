"""Extracted vs trained in-context vectors on Yelp negative -> positive (a bounded run).

    .venv/bin/python benchmarks/quality/train_yelp.py --test-rows 0:48 --out docs/results/train-yelp

Rows of ``../shared/data/yelp/reference.0`` (0-based): test rows from ``--test-rows``
(default 0-47, the first rows of docs/results.md's 200 test rows), the 64 training pairs
from ``--pair-rows`` (default 400-463: disjoint from the test rows 0-199 and the
calibration rows 200-323 docs/results.md uses).  The 8 hand-written demonstrations are the
first 8 of ``benchmarks/quality/yelp.py``'s ``HANDWRITTEN``, the ones docs/results.md's ICV
and ICL use.  Arms: the vector extracted from the 8 demos, its coefficients trained on the
same 8; the vector extracted from the 64 pairs, its coefficients and its directions
trained on the 64.  Every arm is swept at the same multiples of its recommended strength
(the extracted vectors recommend ``--strength``).  Greedy, rotate@mlp (the default), VADER
positive share (compound > 0.05) and MiniLM similarity to the source.  Training time per
arm is printed and stored (the machine is shared: compare within one run only); every
arm's vector is saved beside the report (``<out>.<arm>.safetensors``) for later sweeps.

``--objective teacher,distillation`` trains every trained arm once per objective (the
distilled ones are named ``<arm>-distillation``); ``--skip-eval icv64`` trains or extracts an
arm (as another's start) without sweeping it.  Each arm is swept right after it is made and
the report is rewritten after every arm, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA  # noqa: E402
from yelp import HANDWRITTEN, read_reference  # noqa: E402

import icv  # noqa: E402
from icv.scorers import SentimentScorer, SimilarityScorer, success_rate  # noqa: E402
from icv.sweep import steered_answers  # noqa: E402


def span(text: str) -> range:
    start, _, stop = text.partition(":")
    return range(int(start), int(stop))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--test-rows", type=span, default=span("0:48"))
    parser.add_argument("--pair-rows", type=span, default=span("400:464"))
    parser.add_argument("--strength", type=float, default=0.04, help="the extracted vectors' strength")
    parser.add_argument(
        "--factors", default="0.75,1,1.25", help="multiples of each arm's recommended strength"
    )
    parser.add_argument("--arms", default="icv8,coef8,icv64,coef64,dir64")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--regularization", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: icv.train's)")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=8, help="pairs per training step")
    parser.add_argument("--objective", default="teacher", help="icv.train objectives, comma-separated")
    parser.add_argument("--skip-eval", default="", help="arms made but not swept, comma-separated")
    parser.add_argument("--out", type=Path, required=True, help="path prefix for .json and .md")
    args = parser.parse_args(argv)

    reference = read_reference(DATA / "yelp" / "reference.0")
    sources = [reference[i][0] for i in args.test_rows]
    pairs64 = [reference[i] for i in args.pair_rows]
    demos8 = HANDWRITTEN[:8]
    model, tokenizer = icv.load_model(args.model) if args.model else icv.load_model()
    factors = [float(f) for f in args.factors.split(",")]
    style, similarity = SentimentScorer("positive"), SimilarityScorer()

    options = dict(
        regularization=args.regularization,
        steps=args.steps,
        eval_every=args.eval_every,
        batch_size=args.train_batch,
    )
    vectors: dict[str, icv.InContextVector] = {}
    seconds: dict[str, float] = {}
    objectives = args.objective.split(",")
    skip = set(filter(None, args.skip_eval.split(",")))
    plan: list[tuple[str, str, str]] = []  # (label, arm, objective)
    for arm in args.arms.split(","):
        if arm.startswith("icv"):
            plan.append((arm, arm, ""))
        else:
            plan += [(arm if o == "teacher" else f"{arm}-{o}", arm, o) for o in objectives]
    rows: list[dict] = []
    for label, arm, objective in plan:
        started = time.perf_counter()
        trained = dict(options, objective=objective)
        if arm == "icv8":
            vec = icv.extract(model, tokenizer, demos8, recommended_strength=args.strength)
        elif arm == "icv64":
            vec = icv.extract(model, tokenizer, pairs64, recommended_strength=args.strength)
        elif arm == "coef8":
            vec = icv.train(model, tokenizer, demos8, init=vectors["icv8"], level="coefficients", **trained)
        elif arm in ("coef64", "dir64"):
            level = "coefficients" if arm == "coef64" else "directions"
            vec = icv.train(model, tokenizer, pairs64, init=vectors["icv64"], level=level, **trained)
        elif arm == "dir64h":  # the hand-written direction, fitted on the 64 pairs
            vec = icv.train(model, tokenizer, pairs64, init=vectors["icv8"], level="directions", **trained)
        else:
            raise SystemExit(f"unknown arm {arm}")
        seconds[label] = time.perf_counter() - started
        vectors[label] = vec
        args.out.parent.mkdir(parents=True, exist_ok=True)
        vec.save(f"{args.out}.{label}.safetensors", overwrite=True)  # for later sweeps
        print(f"{label}: {seconds[label]:.1f} s, training={vec.metadata.get('training')}", flush=True)
        if label in skip:
            continue
        base = vec.recommended_strength
        assert base is not None
        strengths = [round(base * f, 6) for f in factors]
        started = time.perf_counter()
        answers = steered_answers(
            model,
            tokenizer,
            vec,
            sources,
            strengths,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        for s, completions in answers.items():
            positive = success_rate(style, style.score(completions.answers))
            content = similarity.summary(similarity.score(completions.answers, sources), completions.answers)
            rows.append(
                {
                    "arm": label,
                    "strength": s,
                    "factor": s / base,
                    "positive": positive,
                    "similarity": content,
                    "outputs": completions.answers,
                }
            )
            print(f"{label} @ {s:g}: positive {positive:.3f} similarity {content:.3f}", flush=True)
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        write_report(args, seconds, vectors, [p[0] for p in plan if p[0] in vectors], rows)
    return 0


def write_report(
    args: argparse.Namespace,
    seconds: dict[str, float],
    vectors: dict[str, icv.InContextVector],
    labels: list[str],
    rows: list[dict],
) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {
            k: (list(v)[:1] + list(v)[-1:] if isinstance(v, range) else str(v)) for k, v in vars(args).items()
        },
        "training_seconds": seconds,
        "training": {label: vectors[label].metadata.get("training") for label in labels},
        "results": rows,
    }
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    lines = ["| arm | strength | positive | similarity |", "|---|---:|---:|---:|"]
    lines += [
        f"| {r['arm']} | {r['strength']:g} | {r['positive']:.3f} | {r['similarity']:.3f} |" for r in rows
    ]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
