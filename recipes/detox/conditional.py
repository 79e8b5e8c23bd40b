"""Conditional detox: steer only the prompts a "toxic" condition matches (docs/conditions.md).

Bounded measurement on the embedded SmolLM2-135M-Instruct, greedy, the paper's zero-shot
paraphrase prompt around every sentence (as recipes/detox/run.py prompts it):

* the condition: ParaDetox toxic sentences (matching) against non-toxic ones (ParaDetox's
  neutral rewrites of *other* rows, and Yelp sentences), ``--fit`` of each kind;
* a fresh test set of ``--test`` toxic and ``--test`` non-toxic sentences (other rows and
  lines than the fit's), generated unsteered, steered with the detox vector unconditioned,
  and steered with ``when=condition``, in the same batches.

    python recipes/detox/conditional.py [--model gemma3-270m] [--fit 60] [--test 40] [--tokens 24] [--strength 0.04]
        [--positions prompt_mean|prompt_last] [--estimator mean|probe] [--l2 0.001,0.01,0.1]
        [--rows blocks|spread] [--rows-seed 2026] [--condition-only]

Data: ../shared/data (paradetox/paradetox.tsv, yelp/sentiment.dev.{0,1}); the folder can be
given with ``--data``.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

import icv  # noqa: E402
from icv.generation import complete  # noqa: E402
from icv.prompts import icl_prompt  # noqa: E402


def read_data(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(toxic, neutral rewrites, yelp sentences), in file order."""
    with open(folder / "paradetox" / "paradetox.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    toxic = [r[0].strip() for r in rows if len(r) > 1 and r[0].strip() and r[1].strip()]
    neutral = [r[1].strip() for r in rows if len(r) > 1 and r[0].strip() and r[1].strip()]
    yelp = []
    for name in ("sentiment.dev.0", "sentiment.dev.1"):
        lines = (folder / "yelp" / name).read_text(encoding="utf-8").splitlines()
        yelp.extend(line.strip() for line in lines if len(line.split()) >= 5)
    return toxic, neutral, yelp


def split_rows(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], list[str]]:
    """(fit toxic, fit other, test toxic, test other) for ``--rows``, ``--fit`` and ``--test``."""
    toxic, neutral, yelp = read_data(args.data)
    half, test_half = args.fit // 2, args.test // 2
    if args.rows == "blocks":
        # Fit: toxic rows 0.., neutral rewrites of rows 5000.. (other rows); test: toxic rows
        # 3000.., neutral rewrites of rows 8000.. (none in the fit).
        fit_toxic = toxic[: args.fit]
        fit_neutral = neutral[5000 : 5000 + half]
        test_toxic = toxic[3000 : 3000 + args.test]
        test_neutral = neutral[8000 : 8000 + test_half]
    else:
        # Rows drawn across the whole file (a fixed shuffle): every source of ParaDetox's in both
        # the fit and the test; each row gives one sentence, toxic or rewrite, never both.
        order = list(range(len(toxic)))
        random.Random(args.rows_seed).shuffle(order)
        picked = iter(order)
        fit_toxic = [toxic[next(picked)] for _ in range(args.fit)]
        fit_neutral = [neutral[next(picked)] for _ in range(half)]
        test_toxic = [toxic[next(picked)] for _ in range(args.test)]
        test_neutral = [neutral[next(picked)] for _ in range(test_half)]
    # Yelp: lines 0, 7, ... for the fit; 3, 10, ... for the test.
    fit_other = fit_neutral + yelp[0 : 7 * (args.fit - half) : 7]
    test_other = test_neutral + yelp[3 : 3 + 7 * (args.test - test_half) : 7]
    return fit_toxic, fit_other, test_toxic, test_other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="icv.load_model name (default: the embedded SmolLM2)")
    parser.add_argument("--fit", type=int, default=60, help="texts of each kind for the condition")
    parser.add_argument("--test", type=int, default=40, help="toxic and non-toxic test sentences each")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--strength", type=float, default=0.04, help="the detox recipe's strength")
    parser.add_argument("--positions", choices=("prompt_mean", "prompt_last"), default="prompt_mean")
    parser.add_argument(
        "--estimator",
        choices=("mean", "probe"),
        default="mean",
        help="the condition's direction: the mean difference (CAST's) or a logistic probe",
    )
    parser.add_argument(
        "--l2",
        type=lambda text: [float(v) for v in text.split(",")],
        default=[1e-3, 1e-2, 1e-1],
        help="the probe's L2 regularisation, or several comma-separated (the held-out part chooses)",
    )
    parser.add_argument(
        "--condition-only",
        action="store_true",
        help="only the condition's F1 on the test set (no generation)",
    )
    parser.add_argument(
        "--rows",
        choices=("blocks", "spread"),
        default="blocks",
        help="which ParaDetox rows: fixed blocks (fit 0.., test 3000..; the file's rows ~2500-7000 "
        "come from another source, without final punctuation) or rows drawn across the whole file",
    )
    parser.add_argument("--rows-seed", type=int, default=2026, help="the shuffle of --rows spread")
    args = parser.parse_args()

    fit_toxic, fit_other, test_toxic, test_other = split_rows(args)

    model, tokenizer = icv.load_model(args.model)
    start = time.perf_counter()
    condition = icv.extract_condition(
        model,
        tokenizer,
        [icl_prompt([], t) for t in fit_toxic],
        [icl_prompt([], t) for t in fit_other],
        name="toxic",
        positions=args.positions,
        estimator=args.estimator,
        l2=args.l2,
    )
    print(f"condition: {condition} confusion {condition.confusion} ({time.perf_counter() - start:.0f} s)")
    if condition.estimator == "probe":
        print(f"probe, l2 {condition.metadata['l2']:g} (chosen on the held-out half)")
    print("best F1 per layer:", " ".join(f"{f:.2f}" for f in condition.layer_f1 or []))
    vector = icv.extract(model, tokenizer, icv.read_demos(HERE / "demos.jsonl"), name="polite")

    prompts = [icl_prompt([], t) for t in (*test_toxic, *test_other)]
    is_toxic = [True] * len(test_toxic) + [False] * len(test_other)
    if args.condition_only:
        fired = _decide(model, tokenizer, condition, prompts)
        print_f1(fired, is_toxic)
        return
    options = dict(max_new_tokens=args.tokens, batch_size=8, progress=False)
    timings = {}
    start = time.perf_counter()
    plain = complete(model, tokenizer, prompts, **options)
    timings["unsteered"] = time.perf_counter() - start
    start = time.perf_counter()
    steered = complete(model, tokenizer, prompts, vector=vector, strength=args.strength, **options)
    timings["unconditioned"] = time.perf_counter() - start
    decisions: list = []
    start = time.perf_counter()
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
    timings["conditioned"] = time.perf_counter() - start
    fired = [f for d in decisions for f in d.fired]
    print_f1(fired, is_toxic)

    def share(rows: list[int], a: list[str], b: list[str]) -> str:
        differ = sum(a[i] != b[i] for i in rows)
        return f"{differ}/{len(rows)} ({100 * differ / max(1, len(rows)):.0f}%)"

    clean = [i for i, t in enumerate(is_toxic) if not t]
    rejected_clean = [i for i in clean if not fired[i]]
    print("non-toxic outputs that differ from unsteered:")
    print(f"  unconditioned: {share(clean, steered, plain)}")
    print(f"  conditioned:   {share(clean, gated, plain)}")
    rejected = [i for i, f in enumerate(fired) if not f]
    accepted = [i for i, f in enumerate(fired) if f]
    print(f"  rows the condition rejected (any kind): {share(rejected, gated, plain)} differ from unsteered")
    print(f"  rows it accepted: {share(accepted, gated, steered)} differ from the unconditioned steering")
    print(f"  (rejected non-toxic rows: {len(rejected_clean)} of {len(clean)})")
    try:
        from icv.scorers import OffensiveScorer

        scorer = OffensiveScorer()
        rude = [i for i, t in enumerate(is_toxic) if t]
        for label, outputs in (("unsteered", plain), ("unconditioned", steered), ("conditioned", gated)):
            values = scorer.probability([outputs[i] for i in rude])
            offensive = sum(p > scorer.threshold for p in values)
            print(
                f"offensive on the toxic rows, {label}: {offensive}/{len(rude)} ({100 * offensive / len(rude):.0f}%)"
            )
    except icv.ICVError as error:
        print(f"offensive: not scored ({error})")
    print("seconds:", {k: round(v, 1) for k, v in timings.items()})
    print(
        f"gate cost: conditioned / unconditioned = {timings['conditioned'] / timings['unconditioned']:.2f} "
        "(one run, a shared machine)"
    )


def print_f1(fired: list[bool], is_toxic: list[bool]) -> None:
    tp = sum(f and t for f, t in zip(fired, is_toxic, strict=True))
    fp = sum(f and not t for f, t in zip(fired, is_toxic, strict=True))
    fn = sum(not f and t for f, t in zip(fired, is_toxic, strict=True))
    tn = len(fired) - tp - fp - fn
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    print(f"test set: F1 {f1:.3f} (tp={tp} fp={fp} tn={tn} fn={fn})")


def _decide(model: object, tokenizer: object, condition: icv.Condition, prompts: list[str]) -> list[bool]:
    """How the gate decides each prompt, in left-padded batches of 8 (as generation batches them)."""
    import torch

    from icv.gate import read_prompt_states, readings_of, scores_of
    from icv.generation import left_padded

    fired: list[bool] = []
    for start in range(0, len(prompts), 8):
        batch = left_padded(tokenizer, prompts[start : start + 8], torch.device("cpu"))
        states = read_prompt_states(
            model, batch["input_ids"], batch["attention_mask"], readings_of([condition])
        )
        fired += condition.evaluate(scores_of([condition], states)).tolist()
    return fired


if __name__ == "__main__":
    sys.exit(main())
