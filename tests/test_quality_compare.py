"""benchmarks/quality/compare.py: style success read at equal content similarity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import compare  # noqa: E402


def _run(rows, calibrated=None, **settings):
    results = [{"method": m, "strength": s, "content": c, "style_success": y} for m, s, c, y in rows]
    return {
        "results": results,
        "settings": {
            "model": "m",
            "test_rows": "0:200",
            "data": "d",
            "max_new_tokens": 40,
            "calibrated_strength": calibrated,
            **settings,
        },
    }


def test_style_is_interpolated_where_the_sweep_crosses_a_similarity():
    points = compare.icv_points(_run([("icv", 0.05, 0.6, 0.8), ("icv", 0.03, 0.8, 0.4)]))
    assert points[0][1] == 0.8  # most content first
    assert abs(compare.style_at(points, 0.7) - 0.6) < 1e-12
    assert compare.style_at(points, 0.9) is None and compare.style_at(points, 0.5) is None


def test_a_run_without_zero_shot_borrows_it_from_one_of_the_same_rows(tmp_path, capsys):
    full = _run([("zero-shot", None, 0.9, 0.1), ("icv", 0.04, 0.7, 0.5)], calibrated=0.04)
    preset = _run([("icv", 0.03, 0.8, 0.3)], calibrated=0.03)
    other_rows = _run([("icv", 0.03, 0.8, 0.3)], calibrated=0.03, test_rows="0:48")
    paths = []
    for name, run in (("full", full), ("preset", preset), ("other", other_rows)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    assert compare.main([str(p) for p in paths] + ["--at", "0.85"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| full | 0.04, 50.0%, 0.700 | 20.0% |" in lines  # 0.1 at 0.9 .. 0.5 at 0.7
    assert "| preset | 0.03, 30.0%, 0.800 | 20.0% |" in lines  # 0.1 at 0.9 (borrowed) .. 0.3 at 0.8
    assert "| other | 0.03, 30.0%, 0.800 |  |" in lines  # other rows: nothing to borrow
