"""ParaDetox detoxification (toxic -> polite) on ../shared/data/paradetox/paradetox.tsv.

    .venv/bin/python benchmarks/quality/paradetox.py                    # hand-written demos
    .venv/bin/python benchmarks/quality/paradetox.py --demos paradetox  # 8 data pairs from rows 10000+
    .venv/bin/python benchmarks/quality/paradetox.py --demos minimal    # hand-written, only insults edited

Data rows are 0-based after the header: test rows 0-199 (--test-rows), calibration
rows 5000-5023 (--calib-rows), and, for ``--demos paradetox``, the first k pairs
(toxic, neutral1) from rows 10000 on whose toxic side alt-profanity-check calls
offensive and whose rewrite it does not (a demonstration-quality filter; the rows
used are printed and recorded).  Scores: offensive rate (alt-profanity-check
probability > 0.5; style success = 1 - rate), MiniLM similarity to the source,
fluency (Gemma 3 270M perplexity, 3-gram repetition).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, add_common_arguments, rows, run  # noqa: E402

from icv.scorers import OffensiveScorer  # noqa: E402

# Written for this project (not from any data set): a rude sentence and a polite
# rewrite that keeps its meaning.
HANDWRITTEN = [
    (
        "Shut up, nobody cares about your stupid opinion.",
        "Please stop, I don't think your opinion helps here.",
    ),
    ("You are a complete idiot.", "I think you are mistaken."),
    ("This is the dumbest fucking idea I have ever heard.", "This is not a good idea, in my view."),
    ("Get the hell out of my office.", "Please leave my office."),
    ("What a load of crap this article is.", "This article is not very convincing."),
    ("Only a moron would believe that shit.", "I find that hard to believe."),
    ("Stop whining like a little bitch.", "Please stop complaining so much."),
    ("These damn politicians are all lying scumbags.", "These politicians are often dishonest."),
    ("Your code is garbage, you useless hack.", "Your code needs a lot of work."),
    ("Who the fuck parks like that?", "Who parks like that?"),
    ("He is a lazy piece of shit.", "He does not work very hard."),
    ("Screw you and your stupid rules.", "I disagree with your rules."),
    ("That referee is blind as a bat, what a jackass.", "That referee made some poor calls."),
    ("You people are pathetic losers.", "I am disappointed in you."),
    ("Quit being such an ass about it.", "Please be more reasonable about it."),
    ("This crappy phone broke after a week.", "This phone broke after a week."),
]

# Written for this project: comment-style rude sentences and a rewrite that changes
# only the insulting words, so the shift is about the insults and not the content.
MINIMAL_EDITS = [
    ("you are an idiot if you think that will work .", "you are wrong if you think that will work ."),
    ("only a stupid person would vote for this bill .", "only a careless person would vote for this bill ."),
    (
        "these morons in congress can't even pass a budget .",
        "these people in congress can't even pass a budget .",
    ),
    (
        "what a load of crap , the article gets every fact wrong .",
        "what a poor piece , the article gets every fact wrong .",
    ),
    (
        "the mayor is a lying scumbag and everyone knows it .",
        "the mayor is not honest and everyone knows it .",
    ),
    ("shut the fuck up and read the report first .", "please stop and read the report first ."),
    (
        "this team sucks , they lost every game this year .",
        "this team is weak , they lost every game this year .",
    ),
    ("he is a pathetic loser who blames everyone else .", "he is a person who blames everyone else ."),
    ("stop posting this garbage on my page .", "stop posting this on my page ."),
    ("that driver is a complete jackass .", "that driver is very careless ."),
    ("you are too dumb to understand a simple chart .", "you may not understand this chart ."),
    ("the new manager is an ignorant bastard .", "the new manager is not well informed ."),
    ("who the hell wrote this shitty code ?", "who wrote this code ?"),
    ("damn , the bus is late again .", "well , the bus is late again ."),
    ("the referee is blind and stupid .", "the referee made poor calls ."),
    ("go to hell with your fake news .", "i do not trust your news ."),
]

WRITTEN_DEMOS = {"handwritten": HANDWRITTEN, "minimal": MINIMAL_EDITS}


def read_paradetox(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)  # header: toxic, neutral1, neutral2, neutral3
        return [(row[0].strip(), row[1].strip()) for row in reader if len(row) > 1 and row[0].strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--demos", default="handwritten", choices=(*WRITTEN_DEMOS, "paradetox"))
    parser.add_argument(
        "--demo-start", type=int, default=10000, help="first data row the paradetox demos may come from"
    )
    args = parser.parse_args(argv)
    data = read_paradetox(DATA / "paradetox" / "paradetox.tsv")
    test_rows, calib_rows = rows(args.test_rows), rows(args.calib_rows or "5000:5024")
    k = args.k or (8 if args.demos == "paradetox" else 16)
    scorer = OffensiveScorer()
    if args.demos in WRITTEN_DEMOS:
        demos = WRITTEN_DEMOS[args.demos][:k]
        demo_rows = f"{args.demos} pairs written for this project (benchmarks/quality/paradetox.py)"
    else:
        candidates = list(range(args.demo_start, min(len(data), args.demo_start + 200)))
        toxic = scorer.score([data[i][0] for i in candidates])
        clean = scorer.score([data[i][1] for i in candidates])
        chosen = [i for i, t, c in zip(candidates, toxic, clean, strict=True) if t == 1.0 and c == 0.0][:k]
        demos = [data[i] for i in chosen]
        demo_rows = "rows " + ",".join(map(str, chosen))
        if set(chosen) & (set(test_rows) | set(calib_rows)):
            parser.error("demo rows overlap the test or calibration rows")
    if set(test_rows) & set(calib_rows):
        parser.error("calibration rows overlap the test rows")
    test = [data[i] for i in test_rows]
    sources = [s for s, _ in test]
    run(
        args,
        name=args.name or f"paradetox-{args.demos}{k}",
        demos=demos,
        test_inputs=sources,
        test_references=None,
        calib_inputs=[data[i][0] for i in calib_rows],
        style=scorer,
        extra_scorers=[],
        strengths=(0.05, 0.07, 0.09),
        calib_strengths=(0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12),
        hybrid_strengths=(0.02, 0.04),
        hybrid_calib_strengths=(0.02, 0.03, 0.04),
        min_content=0.65,
        info={
            "data": "paradetox/paradetox.tsv",
            "test_rows": args.test_rows,
            "calib_rows": f"{calib_rows.start}:{calib_rows.stop}",
            "demo_rows": demo_rows,
            "k": k,
            "source_offensive_rate": sum(scorer.score(sources)) / len(sources),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
