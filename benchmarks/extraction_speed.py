"""2. Extraction cost: ``icv.extract`` over N pairs vs a plain batched forward and vs the paper's way.

* plain forward: ``model(**batch, use_cache=False)`` over the same 2N texts, in batches of
  the same size (tokenizing included on both sides); the target is extract speed >= 0.9
  of it.  (``use_cache=False`` makes the baseline a little faster than a bare
  ``model(**batch)``, so the comparison is the stricter one.)
* the paper's way (the authors' code): one text at a time, ``output_hidden_states=True``,
  every hidden state of every text kept, then the same last-token shifts and PCA.

    python benchmarks/extraction_speed.py
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from harness import (
    MODELS,
    alternate,
    describe,
    has_yelp,
    markdown_table,
    median_seconds,
    speed_ratio,
    yelp_pairs,
)

import icv
from icv.aggregate import aggregator
from icv.extract import model_device
from icv.generation import left_padded

TARGET = 0.9


def demo_pairs(count: int) -> list[tuple[str, str]]:
    """Yelp pairs (rows 0..count-1), or the tiny test demonstrations repeated without data."""
    if has_yelp():
        return yelp_pairs(range(count))
    from tiny import DEMOS

    return [DEMOS[i % len(DEMOS)] for i in range(count)]


def texts_of(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [s for s, _ in pairs] + [t for _, t in pairs]


@torch.no_grad()
def plain_forward(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int) -> None:
    device = model_device(model)
    for start in range(0, len(texts), batch_size):
        batch = left_padded(tokenizer, texts[start : start + batch_size], device)
        model(**batch, use_cache=False)


@torch.no_grad()
def paper_extract(
    model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], method: str = "pca"
) -> torch.Tensor:
    """The reference code's extraction: batch 1, all hidden states kept, PCA of the shifts.

    Like the reference code it reads ``hidden_states``, whose last entry is after the
    final norm (icv reads the last block's own output): only that layer differs.
    """
    device = model_device(model)
    kept = []
    for text in texts_of(pairs):
        ids = torch.tensor([tokenizer(text, add_special_tokens=True)["input_ids"]], device=device)
        kept.append(model(input_ids=ids, output_hidden_states=True).hidden_states)
    last = torch.stack([torch.stack([h[0, -1] for h in states]) for states in kept]).float()
    shifts = (last[len(pairs) :] - last[: len(pairs)]).flatten(start_dim=1)
    return aggregator(method)(shifts)


def extraction_cost(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int,
    rounds: int,
    warmup: int = 1,
) -> dict[str, Any]:
    texts = texts_of(pairs)
    arms = {
        "extract": lambda: icv.extract(model, tokenizer, pairs, batch_size=batch_size, progress=False),
        "plain": lambda: plain_forward(model, tokenizer, texts, batch_size),
        "paper": lambda: paper_extract(model, tokenizer, pairs),
    }
    times = alternate(arms, rounds, warmup, label="extraction")
    return {
        "pairs": len(pairs),
        "batch_size": batch_size,
        "vs_plain": speed_ratio(times, "extract", "plain"),
        "vs_paper": speed_ratio(times, "extract", "paper"),
        "seconds": {name: median_seconds(times, name) for name in arms},
    }


def measure(model_name: str, pairs: int, batch_size: int, rounds: int) -> dict[str, Any]:
    model, tokenizer = MODELS[model_name]()
    result = extraction_cost(model, tokenizer, demo_pairs(pairs), batch_size=batch_size, rounds=rounds)
    return {"model": describe(model), **result}


def table(result: dict[str, Any]) -> str:
    s = result["seconds"]
    rows = [
        [
            result["model"],
            f"{result['pairs']} pairs ({2 * result['pairs']} texts), batch {result['batch_size']}",
            f"{s['extract']:.2f} / {s['plain']:.2f} / {s['paper']:.2f}",
            result["vs_plain"].text(),
            "yes" if result["vs_plain"].median >= TARGET else "no",
            result["vs_paper"].text(2) + "x",
        ]
    ]
    header = [
        "model",
        "demonstrations",
        "median s: extract / plain forward / paper's way",
        "extract speed vs plain forward",
        f">= {TARGET}",
        "speed-up vs paper's way",
    ]
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(table(measure(args.model, args.pairs, args.batch_size, args.rounds)))


if __name__ == "__main__":
    main()
