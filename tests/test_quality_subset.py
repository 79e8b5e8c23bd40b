"""benchmarks/quality/subset.py: a run's stored outputs re-scored on some of its rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "quality"))

import subset  # noqa: E402

from icv.scorers import FunctionScorer  # noqa: E402


def test_each_arm_keeps_the_rows_asked_for_and_is_scored_there(monkeypatch):
    monkeypatch.setattr(subset, "sources", lambda data, wanted: [f"src{i}" for i in wanted])
    monkeypatch.setattr(
        subset, "style_for", lambda data: FunctionScorer("yes", lambda o, s, r: [float("y" in t) for t in o])
    )
    monkeypatch.setattr(
        subset,
        "SimilarityScorer",
        lambda: FunctionScorer(
            "similarity",
            lambda o, s, r: [float(t.endswith(src[-1])) for t, src in zip(o, s, strict=True)],
            needs_sources=True,
        ),
    )
    outputs = ["y0", "n1", "y2", "n3"]  # data rows 10-13
    run = {
        "settings": {"data": "d", "test_rows": "10:14", "model": "m"},
        "results": [
            {"method": "icv", "strength": 0.1, "prompt_tokens": 5.0, "outputs": outputs, "scores": {}}
        ],
    }
    kept = subset.subset(run, range(11, 13))
    row = kept["results"][0]
    assert row["outputs"] == ["n1", "y2"] and row["style_success"] == 0.5 and row["content"] == 1.0
    assert row["prompt_tokens"] == 5.0 and row["strength"] == 0.1
    assert kept["settings"]["test_rows"] == "11:13" and kept["settings"]["subset_of"] == "10:14"
    with pytest.raises(SystemExit):
        subset.subset(run, range(8, 12))  # not inside the run's rows
