"""Training cost: ``icv.train`` per step and in all, against a plain forward pass over the same pairs.

Two cases from the issue: the coefficients fitted on the 8 hand-written Yelp demonstrations, and
the directions fitted on 64 Yelp pairs (``reference.0`` rows 400-463).  Per case, in one run:

* ``forward``: one unsteered ``model(...)`` pass (no gradients) over a training batch: the unit
  every step is measured in, so the ratio ``step / forward`` holds across machines and loads;
* ``step``: the seconds per optimizer step (forward with the vector's hooks, backward to the
  vector, Adam), from a 5-step run with no held-out part;
* ``train``: the whole ``icv.train`` call with its defaults (``--steps`` sets another count; no
  extraction: the start is given; held-out evaluation and early stopping included).

    python benchmarks/train_speed.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from harness import describe, embedded_model, has_yelp, markdown_table, tiny_llama, yelp_pairs

import icv
from icv.demos import as_demos
from icv.extract import model_device, pad_token_id
from icv.supervision import batch_of, encode_pairs, target_loss

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
    model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], level: str, steps: int | None
) -> dict[str, float]:
    """Seconds: one plain forward over a batch of 8, one training step, one whole icv.train."""
    start = icv.extract(model, tokenizer, pairs, progress=False)
    examples = encode_pairs(tokenizer, as_demos(pairs), 1 << 20)[:8]
    batch = batch_of(examples, pad_token_id(tokenizer), model_device(model))
    with torch.no_grad():
        forward = min(_seconds(lambda: target_loss(model, batch)) for _ in range(3))  # the first is cold
    began = time.perf_counter()
    icv.train(model, tokenizer, pairs, init=start, level=level, steps=STEP_RUN, held_out=0, progress=False)
    step = (time.perf_counter() - began) / STEP_RUN
    began = time.perf_counter()
    trained = icv.train(model, tokenizer, pairs, init=start, level=level, steps=steps, progress=False)
    whole = time.perf_counter() - began
    return {
        "forward": forward,
        "step": step,
        "train": whole,
        "steps": float(trained.metadata["training"]["steps"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: icv.train's own)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke run)")
    args = parser.parse_args(argv)
    model, tokenizer = tiny_llama() if args.tiny else embedded_model()
    rows = []
    for name, (pairs, level) in cases(args.tiny).items():
        m = measure(model, tokenizer, pairs, level, args.steps)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
