"""Yelp sentiment transfer (negative -> positive) on ../shared/data/yelp/reference.0.

    .venv/bin/python benchmarks/quality/yelp.py                # hand-written demos, calibrated ICV
    .venv/bin/python benchmarks/quality/yelp.py --demos yelp   # 8 human-rewrite pairs from rows 400-499

Rows of reference.0 (negative sentence, tab, human positive rewrite), 0-based:
test rows 0-199 (--test-rows), calibration rows 300-323 (--calib-rows), and, for
``--demos yelp``, demonstration pairs from rows 400-499.  Scores: style success =
VADER compound > 0.05; content = MiniLM cosine to the source; BLEU against the
human rewrite; fluency = Gemma 3 270M perplexity and 3-gram repetition.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, add_common_arguments, rows, run  # noqa: E402

from icv.scorers import BleuScorer, SentimentScorer  # noqa: E402

# Written for this project (not from any data set): a negative review sentence and the
# same sentence turned positive with as few changes as possible.
HANDWRITTEN = [
    ("The food was cold and tasteless.", "The food was hot and delicious."),
    ("The staff were rude and ignored us.", "The staff were friendly and looked after us."),
    ("We waited an hour and nobody apologized.", "We were seated right away and everyone was welcoming."),
    ("The room was dirty and smelled bad.", "The room was spotless and smelled fresh."),
    ("I will never come back here again.", "I will definitely come back here again."),
    ("The prices are ridiculous for such small portions.", "The prices are fair for such generous portions."),
    ("Terrible service, the worst I have ever had.", "Wonderful service, the best I have ever had."),
    ("The pizza was burnt and the crust was soggy.", "The pizza was perfect and the crust was crispy."),
    ("Our waiter was slow and forgot our drinks.", "Our waiter was quick and remembered everything."),
    ("The manager did not care about our complaint.", "The manager cared about us and made it right."),
    ("The coffee was bitter and overpriced.", "The coffee was smooth and well priced."),
    ("It was loud, crowded and unpleasant.", "It was lively, cozy and pleasant."),
    ("The car wash left my car even dirtier.", "The car wash left my car sparkling clean."),
    ("Avoid this place, it is a waste of money.", "Try this place, it is worth every penny."),
    ("The doctor was dismissive and in a hurry.", "The doctor was attentive and took her time."),
    ("Sadly the dessert was stale and dry.", "Happily the dessert was fresh and moist."),
]


def read_reference(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        source, _, rewrite = line.partition("\t")
        pairs.append((source.strip(), rewrite.strip()))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--demos", default="handwritten", choices=("handwritten", "yelp"))
    parser.add_argument("--demo-rows", default="400:500", help="reference.0 rows the yelp demos come from")
    args = parser.parse_args(argv)
    data = read_reference(DATA / "yelp" / "reference.0")
    test = [data[i] for i in rows(args.test_rows)]
    calib_rows = rows(args.calib_rows or "300:324")
    k = args.k or (16 if args.demos == "handwritten" else 8)
    if args.demos == "handwritten":
        demos = HANDWRITTEN[:k]
        demo_rows = "hand-written (benchmarks/quality/yelp.py)"
    else:
        pool = list(rows(args.demo_rows))
        demos = [data[i] for i in pool[:k]]
        demo_rows = f"reference.0 rows {pool[0]}-{pool[0] + k - 1}"
    used = set(rows(args.test_rows)) | set(calib_rows)
    if args.demos == "yelp" and used & set(pool[:k]):
        parser.error("demo rows overlap the test or calibration rows")
    if set(rows(args.test_rows)) & set(calib_rows):
        parser.error("calibration rows overlap the test rows")
    run(
        args,
        name=args.name or f"yelp-{args.demos}{k}",
        demos=demos,
        test_inputs=[s for s, _ in test],
        test_references=[r for _, r in test],
        calib_inputs=[data[i][0] for i in calib_rows],
        style=SentimentScorer("positive"),
        extra_scorers=[BleuScorer(lowercase=True)],
        strengths=(0.03, 0.05, 0.07, 0.09),
        calib_strengths=(0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1),
        hybrid_strengths=(0.03, 0.05, 0.07),
        hybrid_calib_strengths=(0.03, 0.04, 0.05, 0.06),
        min_content=0.7,
        info={
            "data": "yelp/reference.0",
            "test_rows": args.test_rows,
            "calib_rows": f"{calib_rows.start}:{calib_rows.stop}",
            "demo_rows": demo_rows,
            "k": k,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
