"""1. Generation overhead: tokens/s of ``model.generate`` steered vs unsteered.

The method users run, and issue 22 states: the embedded model, 48 new tokens
(``min_new_tokens`` equal to ``max_new_tokens``, so a steered run cannot stop
earlier or later than the unsteered one), greedy, 2 torch threads, batches 1 and
8, 5 rounds after a warm-up round.  Each round generates once unsteered and once
per steering mode, in rotating order; the figure is the median over rounds of
``unsteered time / steered time`` (1.0 = free, the target is >= 0.985).  The load
average at the start is printed with the table: on a shared machine it says how
far the absolute figures can be trusted (the ratios, taken round by round, less so).

    nice -n 10 python benchmarks/generation_speed.py            # the embedded model
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
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
from icv import inject
from icv.extract import model_device, pad_token_id
from icv.generation import left_padded
from icv.inject import away_directions
from icv.layers import site_modules
from icv.prompts import paraphrase_prompt

MODES: dict[str, dict[str, str]] = {
    "rotate@mlp": {"mode": "rotate", "site": "mlp"},
    "add@block": {"mode": "add", "site": "block"},
}
TARGET = 0.985
THREADS = 2
NEW_TOKENS = 48
ROUNDS = 5
FALLBACK_SENTENCES = [
    "the food was cold and the service was slow .",
    "i would not come back here again .",
    "the room was dirty and smelled bad .",
    "our waiter ignored us for an hour .",
]


def sentences_and_demos(count: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Queries (Yelp rows 100+) and demonstrations (rows 0-4), disjoint; a fallback without data."""
    if has_yelp():
        return [s for s, _ in yelp_pairs(range(100, 100 + count))], yelp_pairs(range(5))
    from tiny import DEMOS

    return [FALLBACK_SENTENCES[i % len(FALLBACK_SENTENCES)] for i in range(count)], list(DEMOS)


def prompt_batch(tokenizer: Any, sentences: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    return left_padded(tokenizer, [paraphrase_prompt(s) for s in sentences], device)


def fixed_length(tokenizer: Any, new_tokens: int) -> dict[str, Any]:
    """``generate`` options for greedy decoding of exactly ``new_tokens`` (no arm stops earlier)."""
    return dict(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id(tokenizer),
    )


@torch.no_grad()
def generation_overhead(
    model: torch.nn.Module,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    vector: icv.InContextVector,
    *,
    new_tokens: int,
    rounds: int,
    warmup: int = 1,
    modes: dict[str, dict[str, str]] = MODES,
) -> dict[str, Any]:
    """Speed ratios steered/unsteered per mode, and the unsteered tokens/s."""
    options = fixed_length(tokenizer, new_tokens)

    def unsteered() -> None:
        model.generate(**inputs, **options)

    def steered(how: dict[str, str]):
        def run() -> None:
            with icv.steer(model, vector, **how):
                model.generate(**inputs, **options)

        return run

    arms = {"unsteered": unsteered, **{name: steered(how) for name, how in modes.items()}}
    tokens = new_tokens * inputs["input_ids"].shape[0]
    times = alternate(arms, rounds, warmup, label=f"generation batch {inputs['input_ids'].shape[0]}")
    return {
        "ratios": {name: speed_ratio(times, name, "unsteered") for name in modes},
        "tokens_per_s": tokens / median_seconds(times, "unsteered"),
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
    }


@torch.no_grad()
def hook_costs(
    model: torch.nn.Module, vector: icv.InContextVector, batch: int, *, calls: int = 500, rounds: int = 5
) -> dict[str, float]:
    """Where a steered layer's time goes at decode time (one token per row), in microseconds per call.

    On the first MLP, at shape ``(batch, 1, hidden)``, alternated round by round (medians):
    the MLP alone; with a no-op forward hook (torch's hook dispatch); with the steering's
    hook (dispatch, the hook's Python work and its tensor ops); and the rotation's tensor
    ops alone (:func:`icv.inject.rotate` on prepared tensors).
    """
    mlp = site_modules(model, "mlp")[0]
    hidden = vector.hidden_size
    x = torch.randn(batch, 1, hidden, dtype=next(model.parameters()).dtype)
    x_in = torch.randn(batch, 1, model.config.hidden_size, dtype=x.dtype)
    d = (vector.directions[0] * 0.1).to(x.dtype)
    away = away_directions(d)

    def repeat(call: Any) -> None:
        for _ in range(calls):
            call()

    def with_hook(hook: Any) -> None:
        handle = mlp.register_forward_hook(hook)
        try:
            repeat(lambda: mlp(x_in))
        finally:
            handle.remove()

    def steered() -> None:
        with icv.steer(model, vector, mode="rotate", site="mlp"):
            repeat(lambda: mlp(x_in))

    arms = {
        "mlp": lambda: repeat(lambda: mlp(x_in)),
        "mlp + no-op hook": lambda: with_hook(lambda *_: None),
        "mlp + steering hook": steered,
        "rotation ops": lambda: repeat(lambda: inject.rotate(x, d, away)),
    }
    times = alternate(arms, rounds, warmup=1)
    return {name: median_seconds(times, name) / calls * 1e6 for name in arms}


def hook_table(costs: dict[int, dict[str, float]], layers: int, step_ms: dict[int, float]) -> str:
    """The hook costs per batch, with what they add to a decode step of ``layers`` steered layers."""
    rows = []
    for batch, c in costs.items():
        added = c["mlp + steering hook"] - c["mlp"]
        per_step = added * layers / 1000
        rows.append(
            [
                batch,
                f"{c['mlp']:.1f}",
                f"{c['mlp + no-op hook'] - c['mlp']:.1f}",
                f"{added:.1f}",
                f"{c['rotation ops']:.1f}",
                f"{per_step:.2f} ms of {step_ms[batch]:.1f} ms ({per_step / step_ms[batch]:.1%})",
            ]
        )
    header = [
        "batch",
        "MLP alone (us)",
        "torch hook dispatch (us)",
        "steering hook, all of it (us)",
        "rotation ops alone (us)",
        f"steering per decode step ({layers} layers) / unsteered step",
    ]
    return markdown_table(header, rows)


def measure(
    model_name: str,
    batches: Sequence[int],
    new_tokens: int = NEW_TOKENS,
    rounds: int = ROUNDS,
    warmup: int = 1,
    threads: int | None = THREADS,
    modes: dict[str, dict[str, str]] = MODES,
) -> list[dict[str, Any]]:
    """One result per batch size on the named model (see ``harness.MODELS``), on ``threads``
    torch threads (``None``: as set), the thread count restored afterwards."""

    def run(model: Any, tokenizer: Any, inputs: dict[str, torch.Tensor], vector: Any) -> dict[str, Any]:
        return generation_overhead(
            model, tokenizer, inputs, vector, new_tokens=new_tokens, rounds=rounds, warmup=warmup, modes=modes
        )

    return on_batches(model_name, batches, new_tokens, run, threads)


BatchRun = Callable[[torch.nn.Module, Any, dict[str, torch.Tensor], icv.InContextVector], dict[str, Any]]


def on_batches(
    model_name: str, batches: Sequence[int], new_tokens: int, run: BatchRun, threads: int | None = THREADS
) -> list[dict[str, Any]]:
    """``run`` on the named model with a vector from its demos, once per batch size of Yelp
    prompts, on ``threads`` torch threads (``None``: as set; restored afterwards)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model, tokenizer = MODELS[model_name]()
        sentences, demos = sentences_and_demos(max(batches))
        vector = icv.extract(model, tokenizer, demos, progress=False)
        results = []
        for batch in batches:
            inputs = prompt_batch(tokenizer, sentences[:batch], model_device(model))
            result = run(model, tokenizer, inputs, vector)
            results.append(
                {
                    "model": describe(model),
                    "batch": batch,
                    "new_tokens": new_tokens,
                    "threads": torch.get_num_threads(),
                    **result,
                }
            )
        return results
    finally:
        torch.set_num_threads(before)


def table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        for mode, ratio in r["ratios"].items():
            met = "yes" if ratio.median >= TARGET else "no"
            rows.append(
                [
                    r["model"],
                    r["batch"],
                    r["new_tokens"],
                    f"{r['tokens_per_s']:.1f}",
                    mode,
                    ratio.text(),
                    f"{ratio.low:.3f}-{ratio.high:.3f}",
                    met,
                ]
            )
    header = [
        "model",
        "batch",
        "new tokens",
        "unsteered tok/s",
        "steering",
        "speed ratio (median)",
        "min-max",
        f">= {TARGET}",
    ]
    return markdown_table(header, rows)


def speed_arguments(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every generation benchmark takes: model, batches, tokens, rounds."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    return parser


def print_load(threads: int) -> None:
    """The load average at the start: on a shared machine it says how far to trust the figures."""
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average (1/5/15 min) at start: {load}; {threads} torch threads")


def main(argv: Sequence[str] | None = None) -> None:
    parser = speed_arguments(__doc__)
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument(
        "--modes", nargs="+", choices=sorted(MODES), default=sorted(MODES), help="the steerings to time"
    )
    parser.add_argument(
        "--hook-costs",
        action="store_true",
        help="also time where the hook's time goes (microseconds per call)",
    )
    args = parser.parse_args(argv)
    print_load(args.threads)
    modes = {name: MODES[name] for name in args.modes}
    print(
        table(
            measure(args.model, args.batches, args.new_tokens, args.rounds, threads=args.threads, modes=modes)
        )
    )


if __name__ == "__main__":
    main()
