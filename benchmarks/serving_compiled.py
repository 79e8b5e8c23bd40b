"""``icv serve --compile`` against the eager engine: the same requests, steered and not.

Two engines on two copies of the model, side by side in one process: the eager engine
(:class:`icv.serving.engine.Engine` as ``icv serve`` runs it) on the bare model, and the
compiled one (``Engine(..., compilation=Compilation())``, inductor, as ``icv serve
--compile`` runs it).  Each round sends every arm the same batch of requests at once
(greedy, ``--tokens`` tokens each, end of sequence ignored) and waits for all of them:

* ``steered``: half the requests steered, by three vectors of two injections
  (rotate@mlp at two strengths, add@block), the rest unsteered;
* ``unsteered``: the same prompts, none steered.

Reported: the compiled engine's warm-up (the compilation, before a server listens) and
the graphs it made, whether the graph count moved while serving (it must not), the speed
of each compiled arm over its eager counterpart and of steered over unsteered in each
engine (ratios per round, the median and quartiles), and how many requests got the same
tokens from both engines.  Prefills run eager in both engines; the rest is decoding.

    python benchmarks/serving_compiled.py     # the embedded model: several minutes compiling, then the rounds
"""

from __future__ import annotations

import argparse
import copy
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from harness import MODELS, alternate, describe, speed_ratio
from torch import nn
from torch._dynamo.utils import counters

import icv
from icv.serving.compiled import Compilation
from icv.serving.engine import Engine, Failed, Finished
from icv.serving.sampling import SamplingParams
from icv.serving.steering import RowSteering
from icv.steer import default_strength_for

PROMPTS = [
    "The food was cold and the waiter never came back.",
    "I would not stay in this hotel again.",
    "The room was dirty and smelled bad.",
    "Service was slow and the staff were rude.",
    "The pizza arrived late and burnt.",
    "We waited an hour for a table.",
    "The coffee tasted like water.",
    "Parking was impossible and expensive.",
]
DEMOS = [
    ("The food was cold and bland.", "The food was warm and delicious."),
    ("The staff were rude to us.", "The staff were friendly to us."),
    ("I hated every minute of it.", "I loved every minute of it."),
    ("The room was dirty and small.", "The room was clean and spacious."),
]


@dataclass(frozen=True)
class Result:
    model: str
    requests: int
    tokens: int
    warm_up_seconds: float
    graphs_after_warm_up: int
    graphs_after_rounds: int
    same_tokens: int  # requests of the steered batch whose tokens both engines agree on
    times: dict[str, list[float]]

    def ratio(self, arm: str, baseline: str) -> str:
        return speed_ratio(self.times, arm, baseline).text()


def steerings(model: nn.Module, tokenizer: Any, requests: int) -> list[RowSteering | None]:
    """Every other request steered: rotate@mlp at its default strength and half of it, and add@block."""
    vector = icv.extract(model, tokenizer, DEMOS, name="positive", progress=False)
    strength = default_strength_for(vector)
    kinds = [
        RowSteering(vector * strength),
        RowSteering(vector * (strength / 2)),
        RowSteering(vector.with_metadata(injection_mode="add", injection_site="block") * 0.5),
    ]
    return [kinds[(row // 2) % len(kinds)] if row % 2 == 0 else None for row in range(requests)]


def run_batch(
    engine: Engine, prompts: Sequence[list[int]], steering: Sequence[RowSteering | None], tokens: int
) -> list[tuple[int, ...]]:
    """Send every request at once; each one's tokens, in order."""
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    inboxes: list[queue.Queue] = []
    for ids, row in zip(prompts, steering, strict=True):
        inbox: queue.Queue = queue.Queue()
        engine.submit(ids, params, row, inbox.put)
        inboxes.append(inbox)
    return [_tokens(inbox) for inbox in inboxes]


def _tokens(inbox: queue.Queue) -> tuple[int, ...]:
    while True:
        event = inbox.get(timeout=600)
        if isinstance(event, Failed):
            raise RuntimeError(f"a request failed: {event.error}")
        if isinstance(event, Finished):
            return event.token_ids


def measure(
    load: Callable[[], tuple[nn.Module, Any]],
    *,
    requests: int = 8,
    tokens: int = 32,
    rounds: int = 5,
    backend: str = "inductor",
) -> Result:
    model, tokenizer = load()
    twin = copy.deepcopy(model)  # the compiled engine's own copy: the eager one stays bare
    prompts = [tokenizer(PROMPTS[row % len(PROMPTS)])["input_ids"] for row in range(requests)]
    steered = steerings(model, tokenizer, requests)
    unsteered: list[RowSteering | None] = [None] * requests
    eager = Engine(model, tokenizer)
    compiled = Engine(twin, tokenizer, compilation=Compilation(backend=backend))
    try:
        began = time.perf_counter()
        compiled.warm_up()
        warm_up = time.perf_counter() - began
        graphs = int(counters["stats"]["unique_graphs"])
        by_eager = run_batch(eager, prompts, steered, tokens)
        by_compiled = run_batch(compiled, prompts, steered, tokens)
        same = sum(a == b for a, b in zip(by_eager, by_compiled, strict=True))
        arms: dict[str, Callable[[], object]] = {
            "eager steered": lambda: run_batch(eager, prompts, steered, tokens),
            "eager unsteered": lambda: run_batch(eager, prompts, unsteered, tokens),
            "compiled steered": lambda: run_batch(compiled, prompts, steered, tokens),
            "compiled unsteered": lambda: run_batch(compiled, prompts, unsteered, tokens),
        }
        times = alternate(arms, rounds, label="serving compiled")
    finally:
        eager.close()
        compiled.close()
    return Result(
        describe(model),
        requests,
        tokens,
        warm_up,
        graphs,
        int(counters["stats"]["unique_graphs"]),
        same,
        times,
    )


def report(result: Result) -> str:
    per_round = result.requests * result.tokens
    lines = [
        f"model: {result.model}; {result.requests} requests x {result.tokens} tokens per round, "
        f"{len(result.times['eager steered'])} rounds",
        f"warm-up (compiling): {result.warm_up_seconds:.0f} s, {result.graphs_after_warm_up} graphs; "
        f"after the rounds: {result.graphs_after_rounds} graphs",
        f"same tokens from both engines (steered batch): {result.same_tokens}/{result.requests}",
    ]
    for arm, times in result.times.items():
        lines.append(f"  {arm}: {per_round / min(times):.1f} tokens/s at best")
    lines += [
        f"compiled / eager, steered:   {result.ratio('compiled steered', 'eager steered')}",
        f"compiled / eager, unsteered: {result.ratio('compiled unsteered', 'eager unsteered')}",
        f"steered / unsteered, compiled: {result.ratio('compiled steered', 'compiled unsteered')}",
        f"steered / unsteered, eager:    {result.ratio('eager steered', 'eager unsteered')}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="embedded")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = measure(MODELS[args.model], requests=args.requests, tokens=args.tokens, rounds=args.rounds)
    print(report(result))


if __name__ == "__main__":
    main()
