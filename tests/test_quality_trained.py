"""benchmarks/quality/trained.py: issue 29's protocol picks each arm's calibrated row and its neighbours."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import trained  # noqa: E402

from icv.evaluate import Evaluation, MethodResult  # noqa: E402


def test_neighbours_are_the_calibrated_strength_and_the_grid_points_beside_it():
    grid = [0.03, 0.04, 0.05, 0.06]
    assert trained.neighbours(0.05, grid) == [0.04, 0.05, 0.06]
    assert trained.neighbours(0.03, grid) == [0.03, 0.04]  # the lowest has one neighbour
    assert trained.neighbours(0.06, grid) == [0.05, 0.06]
    assert trained.neighbours(0.045, grid) == [0.04, 0.045, 0.05]  # off the grid: placed in it


def result(method: str, strength: float | None, style: float) -> MethodResult:
    return MethodResult(method, strength, style, 1.0 - style, {"repetition_3gram": 0.0}, 10.0, 1.0, 0.0)


def test_the_summary_reports_each_arm_at_its_calibrated_strength_not_its_neighbours():
    eight = Evaluation(
        [
            result("zero-shot", None, 0.1),
            result("icl", None, 0.2),
            *(result("icv", s, s * 10) for s in (0.03, 0.04, 0.05)),
            *(result("trained", s, s * 10 + 0.01) for s in (0.04, 0.05, 0.06)),
        ],
        "positive",
        "similarity",
        {},
    )
    sixty_four = Evaluation(
        [result("icv", s, s * 9) for s in (0.05, 0.06)] + [result("trained", s, s * 8) for s in (0.06, 0.08)],
        "positive",
        "similarity",
        {},
    )
    vectors = {
        arm: SimpleNamespace(recommended_strength=s)
        for arm, s in (("icv8", 0.04), ("trained8", 0.06), ("icv64", 0.05), ("trained64", 0.08))
    }
    rows = trained.summary_rows({"8": eight, "64": sixty_four}, vectors)
    assert [(r["strength"], round(r["style"], 3)) for r in rows] == [
        (None, 0.1),
        (None, 0.2),
        (0.04, 0.4),
        (0.06, 0.61),
        (0.05, 0.45),
        (0.08, 0.64),
    ]
