"""Compare the ICV sweeps of quality runs at equal content preservation.

    .venv/bin/python benchmarks/quality/compare.py docs/results/yelp-handwritten8.json \\
        docs/results/yelp-handwritten8-paper.json --at 0.75,0.7,0.65,0.6

Strengths of two extractions are not comparable (one vector may move the model faster
per unit of strength), so each run's ICV sweep is read as a curve of style success
against content similarity, and style success is linearly interpolated where the
curve crosses each similarity in ``--at`` (blank where a sweep does not reach it).
The curve starts at strength 0, which is the zero-shot row (steering at strength 0
changes nothing): a run made with ``--methods icv`` borrows it from another run of
the same model and test rows.  Also printed: each run's calibrated strength and its scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def icv_points(run: dict, zero: tuple[float, float, float] | None = None) -> list[tuple[float, float, float]]:
    """(strength, content, style success) of every ICV row and strength 0, most content first."""
    points = [
        (r["strength"], r["content"], r["style_success"]) for r in run["results"] if r["method"] == "icv"
    ]
    return sorted(points + ([zero] if zero else []), key=lambda p: -p[1])


def zero_shot(run: dict) -> tuple[float, float, float] | None:
    for r in run["results"]:
        if r["method"] == "zero-shot":
            return (0.0, r["content"], r["style_success"])
    return None


def same_rows(a: dict, b: dict) -> bool:
    keys = ("model", "test_rows", "data", "max_new_tokens")
    return all(a["settings"].get(k) == b["settings"].get(k) for k in keys)


def style_at(points: list[tuple[float, float, float]], similarity: float) -> float | None:
    """Style success where the sweep crosses ``similarity`` (linear between neighbours)."""
    for (_, c1, s1), (_, c2, s2) in zip(points, points[1:]):
        if c1 >= similarity >= c2 and c1 > c2:
            return s1 + (s2 - s1) * (c1 - similarity) / (c1 - c2)
    return None


def calibrated(run: dict) -> tuple[float, float, float] | None:
    strength = run["settings"].get("calibrated_strength")
    for point in icv_points(run):
        if strength is not None and abs(point[0] - strength) < 1e-12:
            return point
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, help="result JSON files written by yelp.py / paradetox.py"
    )
    parser.add_argument("--at", default="0.75,0.7,0.65,0.6", help="similarities to compare at")
    parser.add_argument("--offensive", action="store_true", help="print 1 - style success (ParaDetox)")
    args = parser.parse_args(argv)
    levels = [float(x) for x in args.at.split(",")]
    show = (lambda s: 1 - s) if args.offensive else (lambda s: s)  # noqa: E731
    label = "offensive" if args.offensive else "style success"
    print(
        f"| run | calibrated: strength, {label}, similarity | "
        + " | ".join(f"{label} at {x:g}" for x in levels)
        + " |"
    )
    print("|---|---|" + "---:|" * len(levels))
    runs = {path: json.loads(path.read_text()) for path in args.runs}
    for path, run in runs.items():
        zero = zero_shot(run) or next(
            (zero_shot(other) for other in runs.values() if zero_shot(other) and same_rows(run, other)), None
        )
        points = icv_points(run, zero)
        chosen = calibrated(run)
        cal = "-" if chosen is None else f"{chosen[0]:g}, {show(chosen[2]):.1%}, {chosen[1]:.3f}"
        cells = []
        for level in levels:
            value = style_at(points, level)
            cells.append("" if value is None else f"{show(value):.1%}")
        print(f"| {path.stem} | {cal} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
