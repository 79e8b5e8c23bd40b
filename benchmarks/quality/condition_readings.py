"""Research: how the detox condition's reading and direction estimator carry to fresh sentences.

Reads every fit and test prompt once (all layers, SmolLM2-135M-Instruct, the paraphrase
prompt around each sentence, the same rows as ``conditional.py --rows ...``) and, for each
reading and estimator, runs ``extract_condition``'s own search (the same split, seed 0, half
held out; the layer, threshold and comparison chosen on the held-out half) and scores the
chosen condition on the test set. Readings: the library's two (``prompt_mean``,
``prompt_last``) and three that drop the paraphrase template's shared tokens, which are not
library readings (the gate cannot read them): ``tail`` (the mean over the tokens after the
template's shared prefix), ``sentence`` (the mean over the sentence's own tokens, dropping the
shared prefix and suffix), ``suffix`` (the mean over the shared suffix's tokens, which attend
to the sentence). ``test-threshold`` is the best test F1 at the chosen layer had the threshold
been chosen on the test set itself (how much is the threshold's drift, how much the direction).

    OMP_NUM_THREADS=1 python benchmarks/quality/condition_readings.py --rows spread [--fit 200] [--test 100]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

# The detox recipe's data, splits and decisions: the same rows as its --condition-only runs.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes" / "detox"))

import conditional  # noqa: E402

import icv  # noqa: E402
from icv import gate  # noqa: E402
from icv.capture import pad_batch, tokenize  # noqa: E402
from icv.condition_search import _best_split, _split, probe_directions  # noqa: E402
from icv.layers import decoder_layers  # noqa: E402
from icv.prompts import icl_prompt  # noqa: E402

KINDS = ("prompt_mean", "prompt_last", "tail", "sentence", "suffix")
ESTIMATORS = ("mean", "probe:0.1", "probe:0.01", "probe:0.001")


def rows(args: argparse.Namespace) -> tuple[list[str], list[str], list[str], list[str]]:
    """(fit toxic, fit other, test toxic, test other), as conditional.py draws them (its default shuffle)."""
    return conditional.split_rows(argparse.Namespace(rows_seed=2026, **vars(args)))


def f1_counts(predicted: torch.Tensor, truth: torch.Tensor) -> tuple[float, tuple[int, int, int, int]]:
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    tn = len(predicted) - tp - fp - fn
    return (2 * tp / (2 * tp + fp + fn) if tp else 0.0), (tp, fp, tn, fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=conditional.ROOT.parent / "shared" / "data")
    parser.add_argument("--fit", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--rows", choices=("blocks", "spread"), default="spread")
    args = parser.parse_args()

    fit_toxic, fit_other, test_toxic, test_other = rows(args)
    model, tokenizer = icv.load_model()
    rng = random.Random(0)  # extract_condition's split (seed 0, half held out)
    splits = [_split([icl_prompt([], t) for t in s], 0.5, rng) for s in (fit_toxic, fit_other)]
    tests = [icl_prompt([], t) for t in (*test_toxic, *test_other)]
    texts = [t for fit, held in splits for t in (*fit, *held)] + tests
    ids = tokenize(tokenizer, texts, 2048)
    # The template's shared prefix and suffix: the tokens every prompt starts and ends with.
    prefix = 0
    while all(len(s) > prefix and s[prefix] == ids[0][prefix] for s in ids):
        prefix += 1
    suffix = 0
    while all(len(s) > suffix and s[-1 - suffix] == ids[0][-1 - suffix] for s in ids):
        suffix += 1
    print(f"{len(texts)} prompts; shared prefix {prefix} tokens, shared suffix {suffix}")
    starts: list[int] = []

    def masked(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return gate.unit_mean(hidden, keep)

    def tail(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.clone()
        for row, start in enumerate(starts):
            keep[row, start : start + prefix] = 0
        return masked(hidden, keep)

    def sentence(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.clone()
        for row, start in enumerate(starts):
            keep[row, start : start + prefix] = 0
        keep[:, keep.shape[1] - suffix :] = 0
        return masked(hidden, keep)

    def shared_suffix(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(mask)
        keep[:, keep.shape[1] - suffix :] = 1
        return masked(hidden, keep)

    # Research readings, registered for this process only (the gate's own stay as they are).
    gate.READINGS.update(tail=tail, sentence=sentence, suffix=shared_suffix)
    num_layers = len(decoder_layers(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start_time = time.perf_counter()
    read: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
    for start in range(0, len(ids), 16):
        chunk = ids[start : start + 16]
        batch = pad_batch(chunk, pad, "left", torch.device("cpu"))
        width = batch.input_ids.shape[1]
        starts[:] = [width - len(s) for s in chunk]
        states = gate.read_prompt_states(
            model,
            batch.input_ids,
            batch.attention_mask,
            [(k, layer) for k in KINDS for layer in range(num_layers)],
            position_ids=batch.position_ids,
        )
        for k in KINDS:
            read[k].append(torch.stack([states[k, layer] for layer in range(num_layers)], 1))
    print(f"read in {time.perf_counter() - start_time:.0f} s")

    (fit_m, held_m), (fit_o, held_o) = [(len(f), len(h)) for f, h in splits]
    held_truth = torch.cat([torch.ones(held_m, dtype=torch.bool), torch.zeros(held_o, dtype=torch.bool)])
    test_truth = torch.cat(
        [torch.ones(len(test_toxic), dtype=torch.bool), torch.zeros(len(test_other), dtype=torch.bool)]
    )
    print(
        "| reading | estimator | layer, rule | held-out F1 (tp fp tn fn) | test F1 (tp fp tn fn) | test-threshold F1 |"
    )
    print("|---|---|---|---|---|---|")
    for kind in KINDS:
        x = torch.cat(read[kind])
        a = 0
        fm, hm = x[a : a + fit_m], x[a + fit_m : a + fit_m + held_m]
        a += fit_m + held_m
        fo, ho = x[a : a + fit_o], x[a + fit_o : a + fit_o + held_o]
        test = x[a + fit_o + held_o :]
        held = torch.cat([hm, ho])
        for estimator in ESTIMATORS:
            if estimator == "mean":
                shift = fm.mean(0) - fo.mean(0)
            else:
                shift = probe_directions(fm, fo, l2=float(estimator.split(":")[1]))
            directions = shift / shift.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            held_scores = torch.einsum("nlh,lh->nl", held, directions)
            test_scores = torch.einsum("nlh,lh->nl", test, directions)
            best = None
            for layer in range(num_layers):
                f1, margin, threshold, comparison = _best_split(held_scores[:, layer], held_truth)
                if best is None or (f1, margin) > best[:2]:
                    best = (f1, margin, layer, threshold, comparison)
            assert best is not None
            _, _, layer, threshold, comparison = best

            def decide(scores: torch.Tensor, t: float = threshold, c: str = comparison) -> torch.Tensor:
                return scores > t if c == ">" else scores < t

            held_f1, held_counts = f1_counts(decide(held_scores[:, layer]), held_truth)
            test_f1, test_counts = f1_counts(decide(test_scores[:, layer]), test_truth)
            oracle = _best_split(test_scores[:, layer], test_truth)[0]
            print(
                f"| `{kind}` | {estimator} | {layer}, {comparison} {threshold:+.4f} | "
                f"{held_f1:.3f} ({' '.join(map(str, held_counts))}) | "
                f"{test_f1:.3f} ({' '.join(map(str, test_counts))}) | {oracle:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
