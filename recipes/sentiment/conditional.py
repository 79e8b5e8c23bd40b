"""Conditional sentiment: steer only the negative reviews with the positive vector (docs/conditions.md).

Bounded measurement, greedy, the paper's zero-shot paraphrase prompt around every Yelp
sentence (as recipes/sentiment/run.py prompts it):

* the condition "negative": Yelp dev negative sentences (matching) against positive ones,
  ``--fit`` of each kind (half of each held out for the layer/threshold grid);
* a fresh test set of ``--test`` negative and ``--test`` positive sentences (other lines than
  the fit's), generated unsteered, steered with the positive vector unconditioned, and
  steered with ``when=condition``, in the same batches.

    python recipes/sentiment/conditional.py [--model gemma3-270m] [--fit 60] [--test 40] [--tokens 24]

Data: ../shared/data/yelp/sentiment.dev.{0,1} (0: negative, 1: positive); the folder can be
given with ``--data``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

import icv  # noqa: E402
from icv.generation import complete  # noqa: E402
from icv.prompts import icl_prompt  # noqa: E402
from icv.sweep import ANSWER_STOPS  # noqa: E402

# recipes/sentiment/run.py's calibrated strength for SmolLM2.
STRENGTH = 0.06


def read_yelp(folder: Path) -> tuple[list[str], list[str]]:
    """(negative, positive) Yelp dev sentences of five words or more, in file order."""
    sets = []
    for name in ("sentiment.dev.0", "sentiment.dev.1"):
        lines = (folder / "yelp" / name).read_text(encoding="utf-8").splitlines()
        sets.append([line.strip() for line in lines if len(line.split()) >= 5])
    return sets[0], sets[1]


def f1_line(fired: list[bool], truth: list[bool]) -> str:
    tp = sum(f and t for f, t in zip(fired, truth, strict=True))
    fp = sum(f and not t for f, t in zip(fired, truth, strict=True))
    fn = sum(not f and t for f, t in zip(fired, truth, strict=True))
    tn = len(fired) - tp - fp - fn
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return f"F1 {f1:.3f} (tp={tp} fp={fp} tn={tn} fn={fn})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="icv.load_model name (default: the embedded SmolLM2)")
    parser.add_argument("--fit", type=int, default=60, help="texts of each kind for the condition")
    parser.add_argument("--test", type=int, default=40, help="negative and positive test sentences each")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--strength", type=float, default=STRENGTH)
    parser.add_argument("--positions", choices=("prompt_mean", "prompt_last"), default="prompt_mean")
    args = parser.parse_args()

    negative, positive = read_yelp(args.data)
    # Fit: lines 0, 2, 4, ... of each file; test: lines 1, 3, 5, ... (none in the fit).
    fit_negative, fit_positive = negative[0 : 2 * args.fit : 2], positive[0 : 2 * args.fit : 2]
    test_negative = negative[1 : 1 + 2 * args.test : 2]
    test_positive = positive[1 : 1 + 2 * args.test : 2]

    model, tokenizer = icv.load_model(args.model)
    start = time.perf_counter()
    condition = icv.extract_condition(
        model,
        tokenizer,
        [icl_prompt([], t) for t in fit_negative],
        [icl_prompt([], t) for t in fit_positive],
        name="negative",
        positions=args.positions,
    )
    print(f"condition: {condition} confusion {condition.confusion} ({time.perf_counter() - start:.0f} s)")
    print("best F1 per layer:", " ".join(f"{f:.2f}" for f in condition.layer_f1 or []))
    vector = icv.extract(model, tokenizer, icv.read_demos(HERE / "demos.jsonl"), name="positive")

    prompts = [icl_prompt([], t) for t in (*test_negative, *test_positive)]
    is_negative = [True] * len(test_negative) + [False] * len(test_positive)
    options = dict(max_new_tokens=args.tokens, batch_size=8, progress=False, stop_strings=list(ANSWER_STOPS))
    plain = complete(model, tokenizer, prompts, **options)
    steered = complete(model, tokenizer, prompts, vector=vector, strength=args.strength, **options)
    decisions: list = []
    gated = complete(
        model,
        tokenizer,
        prompts,
        vector=vector,
        strength=args.strength,
        when=condition,
        decisions=decisions,
        **options,
    )
    fired = [f for d in decisions for f in d.fired]
    print("test set:", f1_line(fired, is_negative))

    def share(rows: list[int], a: list[str], b: list[str]) -> str:
        differ = sum(a[i] != b[i] for i in rows)
        return f"{differ}/{len(rows)} ({100 * differ / max(1, len(rows)):.0f}%)"

    pos_rows = [i for i, n in enumerate(is_negative) if not n]
    rejected = [i for i, f in enumerate(fired) if not f]
    accepted = [i for i, f in enumerate(fired) if f]
    print("positive reviews' outputs that differ from unsteered:")
    print(f"  unconditioned: {share(pos_rows, steered, plain)}")
    print(f"  conditioned:   {share(pos_rows, gated, plain)}")
    print(f"  rows the condition rejected (any kind): {share(rejected, gated, plain)} differ from unsteered")
    print(f"  rejected positive rows: {share([i for i in rejected if i in pos_rows], gated, plain)} differ")
    print(f"  rows it accepted: {share(accepted, gated, steered)} differ from the unconditioned steering")
    from icv.prompts import cut_answer
    from icv.scorers import SentimentScorer

    scorer = SentimentScorer("positive")
    neg_rows = [i for i, n in enumerate(is_negative) if n]
    for label, outputs in (("unsteered", plain), ("unconditioned", steered), ("conditioned", gated)):
        for name, rows in (("negative", neg_rows), ("positive", pos_rows)):
            values = scorer.score([cut_answer(outputs[i]) for i in rows])
            hits = sum(v == 1.0 for v in values)
            print(
                f"positive outputs on the {name} rows, {label}: {hits}/{len(rows)} ({100 * hits / len(rows):.0f}%)"
            )


if __name__ == "__main__":
    sys.exit(main())
