"""1b. Generation under torch.compile: steering a compiled model, against the same model compiled unsteered.

The way transformers documents compiled generation: ``cache_implementation="static"`` and
``model.forward = torch.compile(model.forward)`` (inductor, ``fullgraph=True``).  Three
copies of the embedded model, arms alternating round by round (greedy, 48 new tokens,
2 torch threads, batches 1 and 8, medians of 5 rounds after a warm-up that compiles):

* eager: plain ``model.generate`` (dynamic cache), the uncompiled default;
* compiled: the model compiled with no steering at all (no hooks);
* compiled + steered: the model prepared with :func:`icv.prepare_for_compile` and then
  compiled, generating under ``icv.steer`` (rotate@mlp on all layers, a new strength
  each round, so a steering that needed a new trace would show).

Speed ratio = the compiled arm's time / the arm's time per round (target for compiled +
steered: >= 0.98); "compiled / eager" says whether compiling pays on this machine.  The
number of compiled frames after the warm-up and at the end is printed: equal means no
steering traced the model again.

    python benchmarks/compiled_speed.py
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from generation_speed import (
    NEW_TOKENS,
    ROUNDS,
    THREADS,
    fixed_length,
    on_batches,
    print_load,
    speed_arguments,
)
from harness import alternate, markdown_table, median_seconds, speed_ratio

import icv

TARGET = 0.98


def _frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@torch.no_grad()
def compiled_overhead(
    model: torch.nn.Module,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    vector: icv.InContextVector,
    *,
    new_tokens: int,
    rounds: int,
    backend: str = "inductor",
) -> dict[str, Any]:
    """Ratios of the three arms on one batch, and the compiled graphs before and after the rounds."""
    options = fixed_length(tokenizer, new_tokens)
    static = dict(options, cache_implementation="static")
    plain = copy.deepcopy(model)
    plain.forward = torch.compile(plain.forward, backend=backend, fullgraph=True)
    prepared = copy.deepcopy(model)
    icv.prepare_for_compile(prepared)
    prepared.forward = torch.compile(prepared.forward, backend=backend, fullgraph=True)
    strengths = iter(0.05 + 0.001 * i for i in range(1000))

    def steered() -> None:
        with icv.steer(prepared, vector, next(strengths)):
            prepared.generate(**inputs, **static)

    arms = {
        "eager": lambda: model.generate(**inputs, **options),
        "compiled": lambda: plain.generate(**inputs, **static),
        "compiled + steered": steered,
    }
    for arm in arms.values():  # compile outside the timed rounds
        arm()
    before = _frames()
    times = alternate(arms, rounds, 1, label=f"compiled batch {inputs['input_ids'].shape[0]}")
    tokens = new_tokens * inputs["input_ids"].shape[0]
    return {
        "ratios": {
            "compiled + steered / compiled": speed_ratio(times, "compiled + steered", "compiled"),
            "compiled / eager": speed_ratio(times, "compiled", "eager"),
        },
        "tokens_per_s": {name: tokens / median_seconds(times, name) for name in arms},
        "frames": (before, _frames()),
    }


def measure(
    model_name: str, batches: Sequence[int], new_tokens: int = NEW_TOKENS, rounds: int = ROUNDS
) -> list[dict[str, Any]]:
    def run(model: Any, tokenizer: Any, inputs: dict[str, torch.Tensor], vector: Any) -> dict[str, Any]:
        return compiled_overhead(model, tokenizer, inputs, vector, new_tokens=new_tokens, rounds=rounds)

    return on_batches(model_name, batches, new_tokens, run)


def table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        speeds = " / ".join(f"{v:.1f}" for v in r["tokens_per_s"].values())
        for name, ratio in r["ratios"].items():
            target = f"{'yes' if ratio.median >= TARGET else 'no'}" if "steered" in name else "-"
            rows.append(
                [
                    r["model"],
                    r["batch"],
                    speeds,
                    name,
                    ratio.text(),
                    f"{ratio.low:.3f}-{ratio.high:.3f}",
                    target,
                    "{} -> {}".format(*r["frames"]),
                ]
            )
    header = [
        "model",
        "batch",
        "tok/s eager / compiled / compiled + steered",
        "ratio",
        "median",
        "min-max",
        f">= {TARGET}",
        "compiled graphs (after warm-up -> end)",
    ]
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    args = speed_arguments(__doc__).parse_args(argv)
    print_load(THREADS)
    print(table(measure(args.model, args.batches, args.new_tokens, args.rounds)))


if __name__ == "__main__":
    main()
