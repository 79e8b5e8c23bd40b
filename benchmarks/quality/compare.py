"""Compare the steered sweeps of quality runs (ICV, ICL + ICV) at equal content preservation.

    .venv/bin/python benchmarks/quality/compare.py docs/results/yelp-handwritten8.json \\
        docs/results/yelp-handwritten8-hybrid.json --at 0.75,0.7,0.65,0.6

Strengths of two extractions, or of one vector used in two prompt forms, are not
comparable (one moves the model faster per unit of strength), so each steered arm
of each run is read as a curve of style success against content similarity, and
style success is linearly interpolated where the curve crosses each similarity in
``--at`` (blank where a sweep does not reach it).  Each curve starts at strength 0,
which is the unsteered prompt of its arm: the zero-shot row for ICV, the ICL row
for ICL + ICV.  A run made without that row (``--methods icv`` or ``icl+icv``)
borrows it from another run of the same model and test rows (for ICL + ICV, one
whose ICL prompt held as many demonstrations).  Zero-shot and ICL rows are printed
as points.  Also printed: each arm's calibrated strength and its scores, and the
mean prompt length in tokens each arm costs.
"""

from __future__ import annotations

import argparse
import json
from itertools import pairwise
from pathlib import Path

Point = tuple[float, float, float]  # (strength, content similarity, style success)

# Steered arm -> (the unsteered row its curve starts at, the settings key of its calibrated strength).
ARMS = {"icv": ("zero-shot", "calibrated_strength"), "icl+icv": ("icl", "hybrid_calibrated_strength")}
BASELINES = ("zero-shot", "icl")


def arm_points(run: dict, method: str, start: Point | None = None) -> list[Point]:
    """(strength, content, style success) of every row of a steered arm and strength 0, most content first."""
    points = [
        (r["strength"], r["content"], r["style_success"]) for r in run["results"] if r["method"] == method
    ]
    if start is not None and all(p[0] != 0.0 for p in points):
        points.append(start)
    return sorted(points, key=lambda p: -p[1])


def icv_points(run: dict, zero: Point | None = None) -> list[Point]:
    """The ICV arm's curve, starting at the zero-shot row."""
    return arm_points(run, "icv", zero)


def baseline(run: dict, method: str) -> Point | None:
    """An unsteered row (``zero-shot`` or ``icl``) as the point at strength 0."""
    for r in run["results"]:
        if r["method"] == method:
            return (0.0, r["content"], r["style_success"])
    return None


def zero_shot(run: dict) -> Point | None:
    return baseline(run, "zero-shot")


def same_rows(a: dict, b: dict) -> bool:
    keys = ("model", "test_rows", "data", "max_new_tokens")
    return all(a["settings"].get(k) == b["settings"].get(k) for k in keys)


def _same_prompt(run: dict, other: dict, method: str) -> bool:
    """Whether ``other``'s unsteered row is this run's arm at strength 0 (ICL: as many demos in the prompt)."""
    if method != "icl+icv":
        return True
    wanted = run["settings"].get("hybrid_prompt_demos", run["settings"].get("num_demos"))
    return wanted == other["settings"].get("num_demos")


def start_of(run: dict, method: str, runs: list[dict]) -> Point | None:
    """The row an arm's curve starts at: this run's own, else one borrowed from a run of the same rows."""
    unsteered = ARMS[method][0]
    if method == "icl+icv" and run["settings"].get("hybrid_prompt_demos") not in (
        None,
        run["settings"].get("num_demos"),
    ):
        return None  # fewer demos in the prompt than ICL had: no run holds that ICL row
    own = baseline(run, unsteered)
    if own is not None:
        return own
    for other in runs:
        point = baseline(other, unsteered)
        if point is not None and same_rows(run, other) and _same_prompt(run, other, method):
            return point
    return None


def style_at(points: list[Point], similarity: float) -> float | None:
    """Style success where the sweep crosses ``similarity`` (linear between neighbours)."""
    for (_, c1, s1), (_, c2, s2) in pairwise(points):
        if c1 >= similarity >= c2 and c1 > c2:
            return s1 + (s2 - s1) * (c1 - similarity) / (c1 - c2)
    return None


def calibrated(run: dict, method: str = "icv") -> Point | None:
    strength = run["settings"].get(ARMS[method][1])
    for point in arm_points(run, method):
        if strength is not None and abs(point[0] - strength) < 1e-12:
            return point
    return None


def prompt_tokens(run: dict, method: str) -> float | None:
    rows = [r["prompt_tokens"] for r in run["results"] if r["method"] == method and "prompt_tokens" in r]
    return sum(rows) / len(rows) if rows else None


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
        f"| run | arm | prompt tokens | calibrated: strength, {label}, similarity | "
        + " | ".join(f"{label} at {x:g}" for x in levels)
        + " |"
    )
    print("|---|---|---:|---|" + "---:|" * len(levels))
    runs = {path: json.loads(path.read_text()) for path in args.runs}
    for path, run in runs.items():
        for method in (*BASELINES, *ARMS):
            tokens = prompt_tokens(run, method)
            if tokens is None:
                continue
            if method in BASELINES:
                point = baseline(run, method)
                assert point is not None
                cal, cells = f"-, {show(point[2]):.1%}, {point[1]:.3f}", [""] * len(levels)
            else:
                points = arm_points(run, method, start_of(run, method, list(runs.values())))
                chosen = calibrated(run, method)
                cal = "-" if chosen is None else f"{chosen[0]:g}, {show(chosen[2]):.1%}, {chosen[1]:.3f}"
                values = [style_at(points, level) for level in levels]
                cells = ["" if value is None else f"{show(value):.1%}" for value in values]
            print(f"| {path.stem} | {method} | {tokens:.1f} | {cal} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
