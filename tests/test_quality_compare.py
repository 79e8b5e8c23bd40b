"""benchmarks/quality/compare.py: style success read at equal content similarity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import compare  # noqa: E402


def _run(rows, calibrated=None, **settings):
    results = [
        {
            "method": m,
            "strength": s,
            "content": c,
            "style_success": y,
            "prompt_tokens": 200.0 if "icl" in m else 20.0,
        }
        for m, s, c, y in rows
    ]
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
    assert "| full | zero-shot | 20.0 | -, 10.0%, 0.900 |  |" in lines
    assert "| full | icv | 20.0 | 0.04, 50.0%, 0.700 | 20.0% |" in lines  # 0.1 at 0.9 .. 0.5 at 0.7
    assert (
        "| preset | icv | 20.0 | 0.03, 30.0%, 0.800 | 20.0% |" in lines
    )  # 0.1 at 0.9 (borrowed) .. 0.3 at 0.8
    assert "| other | icv | 20.0 | 0.03, 30.0%, 0.800 |  |" in lines  # other rows: nothing to borrow


def test_the_hybrid_curve_starts_at_icl_with_as_many_demos_in_the_prompt(tmp_path, capsys):
    full = _run(
        [("zero-shot", None, 0.9, 0.1), ("icl", None, 0.8, 0.3), ("icv", 0.04, 0.6, 0.5)], num_demos=8
    )
    hybrid = _run(
        [("icl+icv", 0.03, 0.6, 0.7)], hybrid_calibrated_strength=0.03, num_demos=8, hybrid_prompt_demos=8
    )
    fewer = _run([("icl+icv", 0.03, 0.6, 0.7)], num_demos=8, hybrid_prompt_demos=2)
    fewer_from_zero = _run(
        [("icl+icv", 0.0, 0.9, 0.2), ("icl+icv", 0.03, 0.6, 0.7)], num_demos=8, hybrid_prompt_demos=2
    )
    paths = []
    for name, run in (("full", full), ("hybrid", hybrid), ("fewer", fewer), ("zero", fewer_from_zero)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    assert compare.main([str(p) for p in paths] + ["--at", "0.7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| full | icl | 200.0 | -, 30.0%, 0.800 |  |" in lines
    assert "| full | icv | 20.0 | - | 36.7% |" in lines  # zero-shot 0.1 at 0.9 .. 0.5 at 0.6
    assert (
        "| hybrid | icl+icv | 200.0 | 0.03, 70.0%, 0.600 | 50.0% |" in lines
    )  # ICL 0.3 at 0.8 .. 0.7 at 0.6
    assert "| fewer | icl+icv | 200.0 | - |  |" in lines  # no run holds ICL with 2 demos
    assert "| zero | icl+icv | 200.0 | - | 53.3% |" in lines  # its own strength 0: 0.2 at 0.9 .. 0.7 at 0.6
