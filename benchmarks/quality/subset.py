"""A quality run restricted to some of its test rows: its stored outputs re-scored there, no generation.

    .venv/bin/python benchmarks/quality/subset.py docs/results/yelp-handwritten8.json --rows 0:100 \\
        --out docs/results/yelp100-handwritten8.json

Greedy outputs do not depend on which other rows share the run, so a run on rows 0-199 holds
the outputs a run on rows 0-99 would give (batch composition aside: the ICV sweep pads rows
of one batch together, which can change a float's last bits, not the comparison).  Every arm
keeps its rows ``--rows`` (0-based data rows, inside the run's ``test_rows``), re-scored with
the benchmark's style scorer and MiniLM similarity to the source (the other scores are
dropped); the result has the run's layout, so compare.py reads it beside runs made on those
rows only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, rows  # noqa: E402

from icv.scorers import (  # noqa: E402
    OffensiveScorer,
    Scorer,
    SentimentScorer,
    SimilarityScorer,
    score_all,
    success_rate,
)


def sources(data: str, wanted: range) -> list[str]:
    """The source sentences of data rows ``wanted`` of the run's data file."""
    if data == "yelp/reference.0":
        lines = (DATA / "yelp" / "reference.0").read_text(encoding="utf-8").splitlines()
        return [lines[i].partition("\t")[0].strip() for i in wanted]
    if data == "paradetox/paradetox.tsv":
        from paradetox import read_paradetox

        table = read_paradetox(DATA / "paradetox" / "paradetox.tsv")
        return [table[i][0] for i in wanted]
    raise SystemExit(f"unknown data {data!r}")


def style_for(data: str) -> Scorer:
    return SentimentScorer("positive") if data.startswith("yelp") else OffensiveScorer()


def subset(run: dict, wanted: range) -> dict:
    settings = run["settings"]
    tested = rows(settings["test_rows"])
    if wanted.start < tested.start or wanted.stop > tested.stop or not wanted:
        raise SystemExit(
            f"rows {wanted.start}:{wanted.stop} are not inside the run's {settings['test_rows']}"
        )
    cut = slice(wanted.start - tested.start, wanted.stop - tested.start)
    inputs = sources(settings["data"], wanted)
    style, content = style_for(settings["data"]), SimilarityScorer()
    results = []
    for r in run["results"]:
        outputs = r["outputs"][cut]
        scored = score_all([style, content], outputs, inputs, None)  # as icv.evaluate scores them
        results.append(
            {
                **{k: v for k, v in r.items() if k not in ("scores", "outputs")},
                "style_success": success_rate(style, scored[style.name][0]),
                "content": scored[content.name][1],
                "scores": {},
                "outputs": outputs,
            }
        )
    test_rows = f"{wanted.start}:{wanted.stop}"
    return {
        **run,
        "settings": {**settings, "test_rows": test_rows, "subset_of": settings["test_rows"]},
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a result JSON written by yelp.py / paradetox.py")
    parser.add_argument("--rows", required=True, help="data rows to keep, start:stop")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    restricted = subset(json.loads(args.run.read_text()), rows(args.rows))
    args.out.write_text(json.dumps(restricted, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
