"""The rewind of a seeded row whose prompt is split over steps, without vLLM (icv.serving.vllm.seeded_rows).

vLLM's model runner samples every scheduled row, then rewinds the generator of each row
whose token it discards (a prompt not yet whole) with ``set_offset``, which CPU
generators refuse.  A fake runner holds what the functions read: the batch's
generators by row and the step's discard mask.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from icv.serving.vllm.seeded_rows import (
    discarded_cpu_generators,
    sample_as_if_discarded_rows_drew_nothing,
    without_discarded_cpu_generators,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runner(
    generators: dict[int, torch.Generator], discarded: list[int], num_reqs: int = 4
) -> SimpleNamespace:
    mask = np.zeros(8, dtype=bool)  # vLLM's buffer is max_num_reqs long; rows past num_reqs are stale
    mask[discarded] = True
    mask[num_reqs:] = True
    return SimpleNamespace(
        input_batch=SimpleNamespace(num_reqs=num_reqs, generators=generators),
        discard_request_mask=SimpleNamespace(np=mask),
    )


def draw_all(generators: dict[int, torch.Generator]) -> dict[int, torch.Tensor]:
    """What vLLM's sampler does with per-request generators: one exponential draw each."""
    return {row: torch.empty(5).exponential_(generator=g) for row, g in generators.items()}


def vllm_offset_rewind(run: SimpleNamespace) -> None:
    """vLLM 0.32's rewind loop (GPUModelRunner._bookkeeping_sync), as written there."""
    num_reqs = run.input_batch.num_reqs
    for i in np.nonzero(run.discard_request_mask.np[:num_reqs])[0]:
        gen = run.input_batch.generators.get(int(i))
        if gen is not None:
            gen.set_offset(gen.get_offset() - 4)


def test_vllms_own_rewind_fails_on_a_cpu_generator():
    # The failure the module works around: if torch ever gives CPU generators an offset,
    # this test says the workaround may go.
    with pytest.raises(RuntimeError, match="offset"):
        vllm_offset_rewind(runner({0: seeded(1)}, discarded=[0]))


def test_only_discarded_rows_within_the_batch_with_a_generator_are_rewound():
    generators = {0: seeded(1), 1: seeded(2), 3: seeded(3), 5: seeded(4)}  # row 5: past num_reqs
    found = dict(discarded_cpu_generators(runner(generators, discarded=[0, 2, 3])))
    assert found.keys() == {0, 3} and found[0] is generators[0]


def test_a_discarded_row_draws_next_what_it_draws_had_it_not_been_sampled():
    generators = {0: seeded(1), 1: seeded(2)}
    run = runner(generators, discarded=[0], num_reqs=2)
    first = sample_as_if_discarded_rows_drew_nothing(run, lambda: draw_all(generators))
    second = draw_all(generators)
    # Row 0 (discarded) draws again what it drew: its generator is where it was before.
    assert torch.equal(second[0], first[0])
    assert torch.equal(second[0], torch.empty(5).exponential_(generator=seeded(1)))
    # Row 1 (kept) moved on.
    assert not torch.equal(second[1], first[1])
    fresh = seeded(2)
    torch.empty(5).exponential_(generator=fresh)
    assert torch.equal(second[1], torch.empty(5).exponential_(generator=fresh))


def test_the_runners_bookkeeping_does_not_see_the_discarded_cpu_generators_and_gets_them_back():
    generators = {0: seeded(1), 1: seeded(2)}
    originals = dict(generators)
    run = runner(generators, discarded=[0], num_reqs=2)
    seen = without_discarded_cpu_generators(run, lambda: (vllm_offset_rewind(run), set(generators))[1])
    assert seen == {1}
    assert generators == originals and all(generators[row] is originals[row] for row in originals)


def test_the_generators_come_back_when_the_bookkeeping_fails():
    generators = {0: seeded(1)}
    run = runner(generators, discarded=[0], num_reqs=1)

    def failing() -> None:
        raise ValueError("bookkeeping failed")

    with pytest.raises(ValueError):
        without_discarded_cpu_generators(run, failing)
    assert set(generators) == {0}
