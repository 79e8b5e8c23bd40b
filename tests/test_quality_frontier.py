"""benchmarks/quality/frontier.py: one plot from several reports' rows, each line ordered by strength."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import frontier  # noqa: E402


def _report(path: Path, rows: list[tuple[str, float | None, float, float]], higher: bool = True) -> Path:
    results = [{"method": m, "strength": s, "content": c, "style_success": y} for m, s, c, y in rows]
    settings = {"style_higher_is_better": higher}
    path.write_text(json.dumps({"style": "offensive", "settings": settings, "results": results}))
    return path


def test_a_line_joins_one_method_across_reports_by_strength(tmp_path):
    first = _report(tmp_path / "a.json", [("icv", 0.04, 0.7, 0.5), ("trained", 0.06, 0.8, 0.6)])
    second = _report(tmp_path / "b.json", [("trained", 0.08, 0.6, 0.9), ("trained", 0.03, 0.9, 0.4)])
    rows = frontier.rows_of(f"{first}:trained,{second}:trained")
    assert rows == [(0.03, 0.9, 0.4), (0.06, 0.8, 0.6), (0.08, 0.6, 0.9)]
    with pytest.raises(SystemExit, match="no rows"):
        frontier.rows_of(f"{first}:icl")


def test_the_plot_is_written_and_a_lower_is_better_style_is_named_by_its_absence(tmp_path, capsys):
    report = _report(
        tmp_path / "r.json", [("zero-shot", None, 0.98, 0.4), ("icv", 0.1, 0.7, 0.7)], higher=False
    )
    out = tmp_path / "f.png"
    frontier.main(
        ["--out", str(out), "--line", f"ICV={report}:icv", "--point", f"zero-shot={report}:zero-shot"]
    )
    assert out.read_bytes().startswith(b"\x89PNG")
    assert frontier.style_label(f"{report}:icv") == "not offensive"
    assert "ICV: 0.1: 0.700 at 0.700" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        frontier.main(["--out", str(out), "--line", "no label"])
