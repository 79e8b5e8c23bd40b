"""Training cost: ``icv.train`` per step and in all, against a plain forward pass over the same pairs.

Two cases from the issue: the coefficients fitted on the 8 hand-written Yelp demonstrations, and
the directions fitted on 64 Yelp pairs (``reference.0`` rows 400-463).  Per case, in one run:

* ``forward``: one unsteered ``model(...)`` pass (no gradients) over a training batch: the unit
  every step is measured in, so the ratio ``step / forward`` holds across machines and loads;
* ``step``: the seconds per optimizer step (forward with the vector's hooks, backward to the
  vector, Adam), from a 5-step run with no held-out part;
* ``train``: the whole ``icv.train`` call with its defaults (``--steps`` sets another count; no
  extraction: the start is given; held-out evaluation and early stopping included).

``--objective`` times another objective (``preference`` runs two answers a step).
``--baseline`` also times, in the same run, the whole call with the teacher-forcing loss as it was
before 2026-12-06 (logits at every position, a key/value cache built), two rounds in alternating
order (old, new, new, old), and prints both arms' held-out loss after training: the speed-up, and
that it did not change what training finds.  ``--case coefficients`` runs only the cases whose
name starts so.

    python benchmarks/train_speed.py [--baseline] [--case coefficients]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from harness import describe, embedded_model, has_yelp, markdown_table, tiny_llama, yelp_pairs

import icv
from icv.demos import as_demos
from icv.extract import model_device, pad_token_id
from icv.supervision import IGNORE, TokenBatch, batch_of, encode_pairs, target_loss

sys.path.insert(0, str(Path(__file__).resolve().parent / "quality"))


def cases(tiny: bool) -> dict[str, tuple[list[tuple[str, str]], str]]:
    """Case name -> (pairs, level)."""
    if tiny or not has_yelp():
        from tiny import DEMOS

        return {
            "coefficients, 8 pairs": (DEMOS * 2, "coefficients"),
            "directions, 16 pairs": (DEMOS * 4, "directions"),
        }
    from yelp import HANDWRITTEN  # benchmarks/quality/yelp.py

    return {
        "coefficients, 8 demos": (HANDWRITTEN[:8], "coefficients"),
        "directions, 64 pairs": (yelp_pairs(range(400, 464)), "directions"),
    }


STEP_RUN = 5  # steps timed for the per-step cost (no held-out part, so no evaluation in them)


def _seconds(call: Any) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def measure(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: list[tuple[str, str]],
    level: str,
    steps: int | None,
    objective: str = "teacher",
) -> dict[str, float]:
    """Seconds: one plain forward over a batch of 8, one training step, one whole icv.train."""
    start = icv.extract(model, tokenizer, pairs, progress=False)
    examples = encode_pairs(tokenizer, as_demos(pairs), 1 << 20)[:8]
    batch = batch_of(examples, pad_token_id(tokenizer), model_device(model))
    with torch.no_grad():
        forward = min(_seconds(lambda: target_loss(model, batch)) for _ in range(3))  # the first is cold
    began = time.perf_counter()
    options: dict[str, Any] = dict(init=start, level=level, objective=objective, progress=False)
    icv.train(model, tokenizer, pairs, steps=STEP_RUN, held_out=0, **options)
    step = (time.perf_counter() - began) / STEP_RUN
    began = time.perf_counter()
    trained = icv.train(model, tokenizer, pairs, steps=steps, **options)
    whole = time.perf_counter() - began
    return {
        "forward": forward,
        "step": step,
        "train": whole,
        "steps": float(trained.metadata["training"]["steps"]),
    }


def full_logits_loss(model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
    """The teacher-forcing loss as it was before 2026-12-06: every position's logits, a cache built."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    predicted = logits[:, :-1].float()
    wanted = batch.labels[:, 1:]
    return F.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), wanted.reshape(-1), ignore_index=IGNORE
    )


def against_baseline(
    model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], level: str, steps: int | None
) -> dict[str, Any]:
    """Whole icv.train calls, old loss against new, in the order old, new, new, old."""
    start = icv.extract(model, tokenizer, pairs, progress=False)
    train_module = importlib.import_module("icv.train")
    supervision = importlib.import_module("icv.supervision")
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    records: dict[str, dict[str, Any]] = {}
    for arm in ("old", "new", "new", "old"):
        with mock.patch.object(
            train_module, "target_loss", full_logits_loss if arm == "old" else target_loss
        ):
            with mock.patch.object(
                supervision, "target_loss", full_logits_loss if arm == "old" else target_loss
            ):
                began = time.perf_counter()
                trained = icv.train(
                    model, tokenizer, pairs, init=start, level=level, steps=steps, progress=False
                )
                seconds[arm].append(time.perf_counter() - began)
        records[arm] = trained.metadata["training"]
    return {"seconds": seconds, "records": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: icv.train's own)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke run)")
    parser.add_argument("--baseline", action="store_true", help="also time the loss before 2026-12-06")
    parser.add_argument("--case", default="", help="only the cases whose name starts with this")
    parser.add_argument(
        "--objective",
        default="teacher",
        choices=("teacher", "distillation", "preference"),
        help="icv.train's objective for the step and whole-call timings",
    )
    args = parser.parse_args(argv)
    model, tokenizer = tiny_llama() if args.tiny else embedded_model()
    rows, compared = [], []
    chosen = {k: v for k, v in cases(args.tiny).items() if k.startswith(args.case)}
    for name, (pairs, level) in chosen.items():
        if args.baseline:
            b = against_baseline(model, tokenizer, pairs, level, args.steps)
            old, new = b["records"]["old"], b["records"]["new"]
            ratio = statistics.median(
                o / n for o, n in zip(b["seconds"]["old"], b["seconds"]["new"], strict=True)
            )
            compared.append(
                [
                    name,
                    " / ".join(f"{t:.1f}" for t in b["seconds"]["old"]),
                    " / ".join(f"{t:.1f}" for t in b["seconds"]["new"]),
                    f"{ratio:.2f}",
                    f"{old['steps']} / {new['steps']}",
                    f"{old['held_out_loss_after']:.4f} / {new['held_out_loss_after']:.4f}",
                ]
            )
        m = measure(model, tokenizer, pairs, level, args.steps, args.objective)
        rows.append(
            [
                name,
                f"{m['forward']:.2f}",
                f"{m['step']:.2f}",
                f"{m['step'] / m['forward']:.1f}",
                f"{m['train']:.1f}",
                int(m["steps"]),
            ]
        )
    print(describe(model))
    print(markdown_table(["case", "forward s", "step s", "step / forward", "train s", "steps run"], rows))
    if compared:
        header = [
            "case",
            "old train s",
            "new train s",
            "old / new",
            "steps old / new",
            "held-out loss old / new",
        ]
        print("\n" + markdown_table(header, compared))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
