"""One frontier plot from several reports: each line an arm's sweep of style success against similarity.

    .venv/bin/python benchmarks/quality/frontier.py --out docs/img/trained-paradetox-smollm2-preference.png \\
        --title "ParaDetox, SmolLM2" \\
        --line "ICV, 64 pairs=docs/results/trained-paradetox-smollm2-64.json:icv" \\
        --line "preference=docs/results/trained-paradetox-smollm2.preference64.json:trained,docs/results/trained-paradetox-smollm2.preference64-extended.json:trained" \\
        --point "ICL=docs/results/trained-paradetox-smollm2-8.json:icl"

``trained.py`` plots its own arms; an arm run later (``trained_arm.py``) or extended
(``trained_extend.py``) is in other reports.  A ``--line LABEL=FILE:METHOD[,FILE:METHOD...]``
joins the rows of ``METHOD`` from every ``FILE`` (``icv.evaluate``'s JSON reports) into one
sweep, ordered by strength; a ``--point LABEL=FILE:METHOD`` marks an unsteered row (zero-shot, ICL).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import arm_points  # noqa: E402

Row = tuple[float, float, float]  # (strength, similarity, style success)


def rows_of(spec: str) -> list[Row]:
    """``FILE:METHOD[,FILE:METHOD...]`` -> the rows of each method in each file, by strength."""
    rows: list[Row] = []
    for part in spec.split(","):
        path, _, method = part.rpartition(":")
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        rows += [(strength or 0.0, x, y) for strength, x, y in arm_points(report, method)]
    if not rows:
        raise SystemExit(f"no rows for {spec!r}")
    return sorted(set(rows))


def labelled(text: str) -> tuple[str, str]:
    label, sep, spec = text.partition("=")
    if not sep or not label or not spec:
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE:METHOD, got {text!r}")
    return label, spec


def style_label(spec: str) -> str:
    """What style success counts: the report's style, or its absence for a lower-is-better one."""
    path = spec.split(",")[0].rpartition(":")[0]
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    style = str(report.get("style", "style"))
    return style if report.get("settings", {}).get("style_higher_is_better", True) else f"not {style}"


def plot(
    path: Path, lines: list[tuple[str, list[Row]]], points: list[tuple[str, Row]], style: str, title: str
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes: Any = figure.add_subplot()
    for label, rows in lines:
        axes.plot([r[1] for r in rows], [r[2] for r in rows], "o-", label=label)
        for strength, x, y in rows:
            axes.annotate(f"{strength:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for (label, (_, x, y)), marker in zip(points, "s^Dv", strict=False):
        axes.plot([x], [y], marker, markersize=9, label=label)
    axes.set_xlabel("content preservation (similarity)")
    axes.set_ylabel(f"style success ({style})")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--line", type=labelled, action="append", required=True, metavar="LABEL=FILE:METHOD,..."
    )
    parser.add_argument("--point", type=labelled, action="append", default=[], metavar="LABEL=FILE:METHOD")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    lines = [(label, rows_of(spec)) for label, spec in args.line]
    points = [(label, rows_of(spec)[0]) for label, spec in args.point]
    plot(args.out, lines, points, style_label(args.line[0][1]), args.title)
    for label, rows in lines:
        print(label + ": " + "; ".join(f"{s:g}: {y:.3f} at {x:.3f}" for s, x, y in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
