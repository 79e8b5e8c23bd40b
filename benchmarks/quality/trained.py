"""Issue 29's protocol: extracted against trained vectors, calibrated, on 200 test rows (Yelp or ParaDetox).

    .venv-vllm/bin/python benchmarks/quality/trained.py --task yelp --engine vllm --out docs/results
    .venv-vllm/bin/python benchmarks/quality/trained.py --task paradetox --engine vllm --out docs/results

Six arms on the same test rows, greedy, every steered arm at its strength calibrated on the
task's held-in rows (``icv.calibrate``, the floors of docs/results.md) and at its neighbours:

- ``zero-shot`` and ``icl`` (the 8 hand-written demos of the task's benchmark in the prompt);
- ``icv8``: the vector extracted from the same 8 demos; ``trained8``: its coefficients
  fitted on the 8 (``icv.train(level="coefficients")``, starting from ``icv8`` at its
  calibrated strength);
- ``icv64``: the vector extracted from 64 pairs of the data's own train part; ``trained64``:
  its directions fitted on the 64 (``level="directions"``), so the gain from training and the
  gain from more data are told apart.

Rows (0-based): Yelp ``reference.0`` test 0-199, calibration 300-323, pairs 400-463;
ParaDetox test 0-199, calibration 5000-5023, pairs: the first 64 rows from 10000 on whose
toxic side alt-profanity-check calls offensive and whose rewrite it does not (the filter
``paradetox.py --demos paradetox`` uses).  ``--engine vllm`` runs every calibration and
evaluation as one batch of requests through the vLLM plugin (the same answers as the
transformers engine, docs/benchmarks.md section 10), training on the transformers model.

Writes ``<out>/<name>-8.{json,md,png}`` and ``<name>-64.*`` (``icv.evaluate``'s reports),
``<name>.calibration.md`` (every arm's calibration table), ``<name>.md`` (the summary: each arm
at its calibrated strength) and ``<name>.png`` (the frontier of every arm in one plot), and
each arm's vector as ``<out>/<name>.<arm>.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, REPO, rows  # noqa: E402
from paradetox import (
    HANDWRITTEN as PARADETOX_HANDWRITTEN,  # noqa: E402
    read_paradetox,  # noqa: E402
)
from yelp import (
    HANDWRITTEN as YELP_HANDWRITTEN,  # noqa: E402
    read_reference,  # noqa: E402
)

import icv  # noqa: E402
from icv.calibrate import calibrate  # noqa: E402
from icv.engines import VllmEngine, model_name_for  # noqa: E402
from icv.evaluate import Evaluation, evaluate  # noqa: E402
from icv.scorers import (  # noqa: E402
    BleuScorer,
    OffensiveScorer,
    PerplexityScorer,
    RepetitionScorer,
    Scorer,
    SentimentScorer,
    SimilarityScorer,
    fluency_model_for,
)

# Each trained arm's calibration grid: multiples of the strength it was trained at (trained
# directions keep content at twice it and more: Yelp on SmolLM2 chose the top of a grid ending at 2).
TRAINED_FACTORS = (0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


@dataclass
class Task:
    """What a task's run reads and scores: its rows, demos, pairs, scorers and floors."""

    name: str
    test: list[tuple[str, str]]
    calibration: list[str]
    demos: list[tuple[str, str]]
    pairs: list[tuple[str, str]]
    pair_rows: str
    style: Scorer
    extra: list[Scorer]
    references: bool
    grid: tuple[float, ...]
    min_content: float


def yelp_task(test_rows: range, pairs: int) -> Task:
    data = read_reference(DATA / "yelp" / "reference.0")
    pair_rows = range(400, 400 + pairs)
    return Task(
        name="yelp",
        test=[data[i] for i in test_rows],
        calibration=[data[i][0] for i in range(300, 324)],
        demos=list(YELP_HANDWRITTEN[:8]),
        pairs=[data[i] for i in pair_rows],
        pair_rows=f"reference.0 rows {pair_rows.start}-{pair_rows.stop - 1}",
        style=SentimentScorer("positive"),
        extra=[BleuScorer(lowercase=True)],
        references=True,
        grid=(0.03, 0.04, 0.05, 0.06, 0.07, 0.08),
        min_content=0.7,
    )


def paradetox_task(test_rows: range, pairs: int) -> Task:
    data = read_paradetox(DATA / "paradetox" / "paradetox.tsv")
    scorer = OffensiveScorer()
    candidates = list(range(10000, min(len(data), 10000 + 8 * pairs)))
    toxic = scorer.score([data[i][0] for i in candidates])
    clean = scorer.score([data[i][1] for i in candidates])
    chosen = [i for i, t, c in zip(candidates, toxic, clean, strict=True) if t == 1.0 and c == 0.0][:pairs]
    if len(chosen) < pairs:
        raise SystemExit(f"only {len(chosen)} ParaDetox pairs pass the filter in rows 10000+")
    return Task(
        name="paradetox",
        test=[data[i] for i in test_rows],
        calibration=[data[i][0] for i in range(5000, 5024)],
        demos=list(PARADETOX_HANDWRITTEN[:8]),
        pairs=[data[i] for i in chosen],
        pair_rows="rows " + ",".join(map(str, chosen)),
        style=scorer,
        extra=[],
        references=False,
        grid=(0.04, 0.05, 0.06, 0.07, 0.08, 0.09),
        min_content=0.65,
    )


def calibrated(
    args: argparse.Namespace,
    model: Any,
    tokenizer: Any,
    task: Task,
    vector: icv.InContextVector,
    grid: list[float],
    fluency: Scorer | None,
) -> tuple[icv.InContextVector, str]:
    """The vector at its calibrated strength on the task's held-in rows, and the sweep's table."""
    result = calibrate(
        model,
        tokenizer,
        vector,
        task.calibration,
        style=task.style,
        fluency=fluency,
        strengths=grid,
        min_content=task.min_content,
        perplexity_baseline=args.perplexity_baseline,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        engine=args.engine,
    )
    return result.vector, result.report.markdown()


def engine_for_args(args: argparse.Namespace, model: Any) -> Any:
    """``--engine``: the vLLM engine object for ``vllm`` (eager: on this CPU, compiling costs more
    than it saves on a sweep of a few thousand answers), else the name as it is."""
    return VllmEngine(model_name_for(model), enforce_eager=True) if args.engine == "vllm" else args.engine


def scoring(args: argparse.Namespace, task: Task, fluency: Scorer | None) -> dict[str, Any]:
    """``icv.evaluate``'s options every run of a task shares: scorers, references, generation, engine."""
    return dict(
        style=task.style,
        content=SimilarityScorer(),
        scorers=[RepetitionScorer(3)] + ([fluency] if fluency is not None else []) + task.extra,
        references=[r for _, r in task.test] if task.references else None,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        engine=args.engine,
    )


def neighbours(strength: float, grid: list[float]) -> list[float]:
    """The calibrated strength and the grid points on either side of it (the frontier around it)."""
    ordered = sorted(set(grid) | {strength})
    at = ordered.index(strength)
    return ordered[max(0, at - 1) : at + 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("yelp", "paradetox"), required=True)
    parser.add_argument("--model", default=None, help="steered model (default: embedded SmolLM2)")
    parser.add_argument("--test-rows", default="0:200")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument(
        "--grid",
        default=None,
        help="the extracted arms' calibration strengths, comma-separated (default: per task)",
    )
    parser.add_argument("--calibration-rows", type=int, default=24, help="held-in rows (the first n)")
    parser.add_argument("--engine", default="vllm", choices=("vllm", "transformers"))
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: icv.train's)")
    parser.add_argument("--no-fluency", action="store_true", help="skip the perplexity floor and column")
    parser.add_argument(
        "--perplexity-baseline",
        choices=("unsteered", "inputs"),
        default="unsteered",
        help="the fluency floor's reference (icv.calibrate's perplexity_baseline)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality" / "out")
    parser.add_argument("--name", default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    test_rows = rows(args.test_rows)
    task = (yelp_task if args.task == "yelp" else paradetox_task)(test_rows, args.pairs)
    task.calibration = task.calibration[: args.calibration_rows]
    if args.grid:
        task.grid = tuple(float(x) for x in args.grid.split(","))
    name = args.name or f"trained-{task.name}"
    model, tokenizer = icv.load_model(args.model) if args.model else icv.load_model()
    fluency = None if args.no_fluency else PerplexityScorer(model_name=fluency_model_for(model))
    args.engine = engine_for_args(args, model)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    tables: dict[str, str] = {}
    vectors: dict[str, icv.InContextVector] = {}
    grids: dict[str, list[float]] = {}

    def made(arm: str, vector: icv.InContextVector, grid: list[float]) -> icv.InContextVector:
        t0 = time.perf_counter()
        grids[arm] = grid
        vector, tables[arm] = calibrated(args, model, tokenizer, task, vector, grid, fluency)
        seconds[f"{arm} calibration"] = round(time.perf_counter() - t0, 1)
        vector.save(args.out / f"{name}.{arm}.safetensors", overwrite=True)
        vectors[arm] = vector
        print(f"{arm}: calibrated {vector.recommended_strength}\n{tables[arm]}", flush=True)
        return vector

    def trained_from(arm: str, start: icv.InContextVector, pairs: list, level: str) -> icv.InContextVector:
        t0 = time.perf_counter()
        vector = icv.train(model, tokenizer, pairs, init=start, level=level, steps=args.steps, name=arm)
        seconds[f"{arm} training"] = round(time.perf_counter() - t0, 1)
        base = vector.recommended_strength
        assert base is not None
        return made(arm, vector, [round(base * f, 6) for f in TRAINED_FACTORS])

    icv8 = made("icv8", icv.extract(model, tokenizer, task.demos, name="icv8"), list(task.grid))
    trained_from("trained8", icv8, task.demos, "coefficients")
    icv64 = made("icv64", icv.extract(model, tokenizer, task.pairs, name="icv64"), list(task.grid))
    trained_from("trained64", icv64, task.pairs, "directions")

    sources = [s for s, _ in task.test]
    common = scoring(args, task, fluency)
    reports: dict[str, Evaluation] = {}
    for size, methods, extracted, trained, demos in (
        ("8", ["zero-shot", "icl", "icv", "trained"], "icv8", "trained8", task.demos),
        ("64", ["icv", "trained"], "icv64", "trained64", task.pairs),
    ):
        t0 = time.perf_counter()
        report = evaluate(
            model,
            tokenizer,
            demos,
            sources,
            vector=vectors[extracted],
            strengths=neighbours(vectors[extracted].recommended_strength or 0.0, grids[extracted]),
            trained=vectors[trained],
            trained_strengths=neighbours(vectors[trained].recommended_strength or 0.0, grids[trained]),
            methods=methods,
            **common,
        )
        seconds[f"evaluation {size}"] = round(time.perf_counter() - t0, 1)
        report.settings.update(
            {"pairs": size, "pair_rows": task.pair_rows if size == "64" else "hand-written"}
        )
        report.save(
            args.out, stem=f"{name}-{size}", title=f"{task.name}, {size} pairs: {report.settings['model']}"
        )
        reports[size] = report
        print(report.markdown(), flush=True)
    seconds["total"] = round(time.perf_counter() - started, 1)
    write_summary(args.out, name, task, reports, vectors, tables, seconds, args)
    return 0


def summary_rows(
    reports: dict[str, Evaluation], vectors: dict[str, icv.InContextVector]
) -> list[dict[str, Any]]:
    """Every arm at its calibrated strength (the baselines as they are)."""
    arms = [
        ("zero-shot", "8", "zero-shot", None),
        ("ICL, 8 hand-written demos", "8", "icl", None),
        ("ICV extracted from the 8", "8", "icv", vectors["icv8"]),
        ("its coefficients trained on the 8", "8", "trained", vectors["trained8"]),
        ("ICV extracted from the 64 pairs", "64", "icv", vectors["icv64"]),
        ("its directions trained on the 64", "64", "trained", vectors["trained64"]),
    ]
    table = []
    for label, size, method, vector in arms:
        result = reports[size].result(method, None if vector is None else vector.recommended_strength)
        table.append(
            {
                "arm": label,
                "strength": result.strength,
                "style": result.style_success,
                "content": result.content,
                "scores": result.scores,
            }
        )
    return table


def write_summary(
    out: Path,
    name: str,
    task: Task,
    reports: dict[str, Evaluation],
    vectors: dict[str, icv.InContextVector],
    tables: dict[str, str],
    seconds: dict[str, float],
    args: argparse.Namespace,
) -> None:
    table = summary_rows(reports, vectors)
    style = reports["8"].style_label
    lines = [
        f"| arm | calibrated strength | {style} | similarity | repetition_3gram |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in table:
        strength = "" if row["strength"] is None else f"{row['strength']:g}"
        repetition = row["scores"].get("repetition_3gram", float("nan"))
        lines.append(
            f"| {row['arm']} | {strength} | {row['style']:.3f} | {row['content']:.3f} | {repetition:.3g} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / f"{name}.calibration.md").write_text(
        "\n\n".join(f"### {arm}\n\n{table_md}" for arm, table_md in tables.items()) + "\n", encoding="utf-8"
    )
    record = {
        "settings": {k: getattr(v, "name", str(v)) for k, v in vars(args).items()},
        "pair_rows": task.pair_rows,
        "seconds": seconds,
        "training": {arm: vectors[arm].metadata.get("training") for arm in ("trained8", "trained64")},
        "calibrated": {arm: v.recommended_strength for arm, v in vectors.items()},
        "summary": table,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    plot_frontier(out / f"{name}.png", task, reports, vectors)
    print("\n".join(lines))
    print(json.dumps(seconds, indent=1))


def plot_frontier(
    path: Path, task: Task, reports: dict[str, Evaluation], vectors: dict[str, icv.InContextVector]
) -> None:
    """Style success against similarity: each steered arm's sweep a line, its calibrated point ringed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    lines = (
        ("8", "icv", "icv8", "tab:blue", "ICV, 8 demos"),
        ("8", "trained", "trained8", "tab:purple", "coefficients trained on the 8"),
        ("64", "icv", "icv64", "tab:cyan", "ICV, 64 pairs"),
        ("64", "trained", "trained64", "tab:red", "directions trained on the 64"),
    )
    for size, method, arm, color, label in lines:
        sweep = sorted(
            (r for r in reports[size].results if r.method == method), key=lambda r: r.strength or 0.0
        )
        axes.plot(
            [r.content for r in sweep], [r.style_success for r in sweep], "o-", color=color, label=label
        )
        chosen = reports[size].result(method, vectors[arm].recommended_strength)
        axes.plot([chosen.content], [chosen.style_success], "o", color=color, markersize=13, fillstyle="none")
    for method, marker, color, label in (
        ("icl", "s", "tab:orange", "ICL"),
        ("zero-shot", "^", "tab:green", "zero-shot"),
    ):
        result = reports["8"].result(method)
        axes.plot([result.content], [result.style_success], marker, color=color, markersize=9, label=label)
    axes.set_xlabel("content preservation (similarity)")
    axes.set_ylabel(f"style success ({reports['8'].style_label})")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    axes.set_title(
        f"{task.name}: {str(reports['8'].settings['model']).split('/')[-1]} (calibrated points ringed)"
    )
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
