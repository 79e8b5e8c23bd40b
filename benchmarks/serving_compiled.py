"""What torch.compile would give ``icv serve``'s own engine: its decode loop, eager and compiled.

The transformers engine decodes with a ``DynamicCache`` that rows join and leave
(:class:`icv.serving.batch.DecodeBatch`), so a compiled forward must take dynamic shapes.
This times the engine's decode loop on the embedded model (2 prompts, 24 steps; at step 8
a third row joins, at step 16 one leaves; greedy, 2 torch threads): twice eager, then
with ``model.forward = torch.compile(model.forward, dynamic=True)`` once including the
compilation and twice more, and prints the compiled-graph count after each run (a count
that stays put means the joins, leaves and growing cache traced nothing new).

    python benchmarks/serving_compiled.py      # about 11 minutes on 2 cores, most of it compiling
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from harness import embedded_model
from torch._dynamo.utils import counters

from icv.serving.batch import DecodeBatch

STEPS = 24
JOIN_AT = 8
LEAVE_AT = 16


@torch.no_grad()
def decode_loop(model: torch.nn.Module, prompts: Sequence[Sequence[int]]) -> float:
    """Seconds for the loop's decode steps (the prefills of the first rows not counted)."""
    cpu = torch.device("cpu")
    batch, logits = DecodeBatch.prefill(model, prompts, 0, cpu)
    start = time.perf_counter()
    for step in range(STEPS):
        logits = batch.step(logits.argmax(-1).tolist())
        if step == JOIN_AT:
            joining, first = DecodeBatch.prefill(model, [prompts[0]], 0, cpu)
            batch.extend(joining)
            logits = torch.cat([logits, first], 0)
        if step == LEAVE_AT:
            batch.keep([0, 2])
            logits = logits[[0, 2]]
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(2)
    model, tokenizer = embedded_model()
    prompts = [
        tokenizer("the room was dirty and smelled bad")["input_ids"],
        tokenizer("i would not come back here again, never")["input_ids"],
    ]
    eager = [decode_loop(model, prompts) for _ in range(2)]
    model.forward = torch.compile(model.forward, dynamic=True)
    began = time.perf_counter()
    decode_loop(model, prompts)
    compiling = time.perf_counter() - began
    graphs = int(counters["stats"]["unique_graphs"])
    compiled = [decode_loop(model, prompts) for _ in range(2)]
    print(f"eager decode loop: {eager[0]:.2f} / {eager[1]:.2f} s")
    print(f"first compiled run, compilation included: {compiling:.0f} s ({graphs} graphs)")
    print(
        f"compiled decode loop: {compiled[0]:.2f} / {compiled[1]:.2f} s "
        f"({int(counters['stats']['unique_graphs'])} graphs); "
        f"eager / compiled {min(eager) / min(compiled):.2f}x"
    )


if __name__ == "__main__":
    main()
