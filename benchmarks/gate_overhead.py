"""The conditional gate's cost beside unconditioned steering: ``icv.steer`` + ``generate`` (docs/benchmarks.md).

One process, one model, the same left-padded batch, greedy, a fixed number of new tokens
(no early stop), three settings timed in turns (so that a change in the machine's load
falls on all of them): unsteered, steered, and steered with ``when=condition`` (the gate
reads every prompt once at its prefill, a partial forward pass as deep as the condition's
layer, then steers the rows it accepts).  Reported: the median of ``--repeats`` runs per
setting and the ratios gated / steered and steered / unsteered, measured in this one run.

    python benchmarks/gate_overhead.py [--model gemma3-270m] [--rows 8] [--tokens 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import icv
from icv.generation import left_padded
from icv.prompts import icl_prompt

HERE = Path(__file__).resolve().parent
DEMOS = HERE.parent / "recipes" / "detox" / "demos.jsonl"
TEXTS = [
    "you are such an idiot, nobody wants you here",
    "the meeting moved to thursday at ten",
    "shut up and stop wasting my time, moron",
    "thanks for the quick reply, that helps a lot",
    "what a stupid question, use your brain",
    "the soup was warm and the bread was fresh",
    "get lost, you pathetic loser",
    "could you send me the report by friday?",
]


def condition_and_vector(model: Any, tok: Any) -> tuple[icv.Condition, icv.InContextVector]:
    """The condition and the detox vector every gate benchmark uses (here and serve_gate_overhead.py).

    A condition of the library's own kind, fitted on the texts themselves: what it decides does
    not matter for the cost (the gate reads every row whatever it decides), only that it reads.
    """
    cond = icv.extract_condition(
        model,
        tok,
        [icl_prompt([], t) for t in TEXTS[0::2]],
        [icl_prompt([], t) for t in TEXTS[1::2]],
        held_out=0.5,
    )
    return cond, icv.extract(model, tok, icv.read_demos(DEMOS), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strength", type=float, default=0.04)
    args = parser.parse_args()

    model, tok = icv.load_model(args.model)
    prompts = [icl_prompt([], TEXTS[i % len(TEXTS)]) for i in range(args.rows)]
    cond, vector = condition_and_vector(model, tok)
    batch = left_padded(tok, prompts, torch.device("cpu"))
    options = dict(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id or 0,
    )

    def unsteered() -> None:
        model.generate(**batch, **options)

    def steered() -> None:
        with icv.steer(model, vector, args.strength):
            model.generate(**batch, **options)

    fired: list[int] = []

    def gated() -> None:
        with icv.steer(model, vector, args.strength, when=cond) as handle:
            model.generate(**batch, **options)
        fired.append(handle.decision.count)

    settings = {"unsteered": unsteered, "steered": steered, "gated": gated}
    times: dict[str, list[float]] = {name: [] for name in settings}
    with torch.no_grad():
        for run in settings.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in settings.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"model {model.config._name_or_path}, {args.rows} rows x {args.tokens} new tokens, {args.repeats} runs each"
    )
    print(f"condition: {cond} ; rows it fired on: {fired[-1]}/{args.rows}")
    for name, value in median.items():
        print(f"  {name:10s} median {value:.3f} s  (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"gated / steered   = {median['gated'] / median['steered']:.3f}")
    print(f"steered / unsteered = {median['steered'] / median['unsteered']:.3f}")


if __name__ == "__main__":
    main()
