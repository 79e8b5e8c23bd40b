"""The vLLM plugin's per-step steering, without vLLM: token slots, hooks on a flat batch, arming.

A vLLM step is one flat ``(num_tokens, hidden)`` batch mixing requests, prompt chunks
and decode tokens.  These tests build such batches by hand on a tiny model's modules
and check that every token gets exactly what :func:`icv.steer` gives its request alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from steering_reference import hook_count
from tiny import DEMOS, ByteTokenizer, tiny_model
from torch import nn

import icv
from icv.inject import away_directions, rotate_towards
from icv.layers import site_modules
from icv.serving import ModelShape, SteeringSpec, SteeringTerm, VectorLibrary
from icv.serving.vllm.contract import encode
from icv.serving.vllm.rows import POSITION_CODES, token_slots
from icv.serving.vllm.step import SlotAllocator, StepRequest, StepSteering
from icv.steer import layer_deltas

ALL, PROMPT, GENERATED = (POSITION_CODES[p] for p in ("all", "prompt", "generated"))


def test_token_slots_split_prompt_and_generated_tokens_exactly():
    # Request 0: second chunk of a 10-token prompt (positions 6..9) then its first generated
    # token can't be in the same step, so 4 prompt tokens. Request 1: a decode token at
    # position 7 of a 5-token prompt. Request 2: a 3-token prompt from scratch, unsteered.
    qsl = np.array([0, 4, 5, 8])
    computed = np.array([6, 7, 0])
    prompts = np.array([10, 5, 3])
    slots = np.array([1, 2, 0])
    for positions, expected in [
        ([ALL, ALL, ALL], [1, 1, 1, 1, 2, 0, 0, 0]),
        ([PROMPT, PROMPT, ALL], [1, 1, 1, 1, 0, 0, 0, 0]),
        ([GENERATED, GENERATED, ALL], [0, 0, 0, 0, 2, 0, 0, 0]),
    ]:
        got = token_slots(qsl, computed, prompts, slots, np.array(positions), num_tokens=10)
        assert got.tolist() == expected + [0, 0]  # two padding tokens stay unsteered


def test_token_slots_switch_inside_a_chunk_that_crosses_the_prompt_end():
    # Recomputation after preemption: prompt of 3 plus 2 generated tokens, all in one chunk.
    got = token_slots(np.array([0, 5]), np.array([0]), np.array([3]), np.array([4]), np.array([GENERATED]), 5)
    assert got.tolist() == [0, 0, 0, 4, 4]


def test_token_slots_refuse_more_tokens_than_the_batch_holds():
    with pytest.raises(ValueError, match="schedules 4 tokens"):
        token_slots(np.array([0, 4]), np.array([0]), np.array([4]), np.array([1]), np.array([ALL]), 3)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def library(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    tok = ByteTokenizer()
    icv.extract(model, tok, DEMOS, name="pos").save(folder / "positive.safetensors")
    icv.extract(model, tok, [(t, s) for s, t in DEMOS], name="neg").save(folder / "negative.safetensors")
    additive = icv.extract(model, tok, DEMOS, name="add").with_metadata(
        injection_mode="add", injection_site="block"
    )
    additive.save(folder / "additive.safetensors")
    icv.InContextVector.load(folder / "positive.safetensors").with_metadata(injection_site="block").save(
        folder / "turn.safetensors"
    )
    return VectorLibrary.load([folder], ModelShape.of(model))


def spec(*terms: tuple[str, float], positions: str = "all") -> SteeringSpec:
    return SteeringSpec(tuple(SteeringTerm(v, s) for v, s in terms), positions)


def make_steering(library, finder, static=False):
    return StepSteering(
        library, finder, torch.device("cpu"), torch.float32, max_tokens=64, max_requests=8, static=static
    )


def mlp_finder(model):
    return lambda site: list(enumerate(site_modules(model, site)))


def alone(model, library, request_spec, module, x):
    """What ``module`` gives ``x`` under icv.steer with the request's composed vector, at every position."""
    with icv.steer(model, library.compose(request_spec), strength=1.0, positions="all"):
        return module(x)


# (steering, prompt length, tokens computed before the step, tokens in the step)
MIXED = [
    (spec(("positive", 0.4)), 6, 0, 6),  # a whole prompt
    (None, 4, 4, 1),  # an unsteered decode step
    (spec(("negative", 0.3), ("positive", 0.1), positions="generated"), 5, 7, 1),  # decode
    (spec(("positive", 0.4), positions="prompt"), 8, 5, 3),  # the last chunk of a prompt
    (spec(("negative", 0.3), ("positive", 0.1), positions="generated"), 3, 0, 3),  # its prefill: untouched
    (spec(("positive", 0.4)), 2, 9, 1),  # the same steering as the first: shares its slot
]


def arm_mixed(steering, library, requests=MIXED):
    counts = [n for *_, n in requests]
    qsl = np.concatenate([[0], np.cumsum(counts)])
    step = [StepRequest(None if s is None else encode(library.resolve(s)), p) for s, p, _, _ in requests]
    return steering.arm(step, qsl, np.array([c for _, _, c, _ in requests]), int(qsl[-1]))


def test_a_mixed_step_gives_each_token_what_its_request_gets_alone(model, library):
    steering = make_steering(library, mlp_finder(model))
    try:
        assert arm_mixed(steering, library)
        mlp = model.model.layers[1].mlp
        torch.manual_seed(0)
        x = torch.randn(sum(n for *_, n in MIXED), 32)
        out = mlp(x)
        steering.disarm()
        plain = mlp(x)
        start = 0
        for request_spec, prompt, computed, n in MIXED:
            rows = slice(start, start + n)
            positions = torch.arange(computed, computed + n)
            steered = (
                torch.ones(n, dtype=torch.bool)
                if request_spec is None
                else {
                    "all": torch.ones(n, dtype=torch.bool),
                    "prompt": positions < prompt,
                    "generated": positions >= prompt,
                }[request_spec.positions]
            )
            if request_spec is None or not steered.any():
                assert torch.equal(out[rows], plain[rows]), "an unsteered token changed"
            else:
                expected = alone(model, library, request_spec, mlp, x[rows])
                torch.testing.assert_close(out[rows][steered], expected[steered], rtol=1e-5, atol=1e-6)
                assert torch.equal(out[rows][~steered], plain[rows][~steered])
            start += n
    finally:
        steering.remove()
    assert hook_count(model) == 0


class FakeVllmLayer(nn.Module):
    """A decoder layer shaped like vLLM's: returns ``(hidden_states, residual)``."""

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden * 1.0, residual * 1.0


@pytest.mark.parametrize("vector", ["turn", "additive"])
def test_the_block_site_steers_the_sum_of_hidden_states_and_residual(library, vector):
    layers = nn.ModuleList([FakeVllmLayer() for _ in range(3)])
    block_spec = spec((vector, 0.5))
    steering = make_steering(library, lambda site: list(enumerate(layers)))
    try:
        arm_mixed(steering, library, [(block_spec, 4, 0, 4), (None, 3, 0, 3)])
        torch.manual_seed(1)
        hidden, residual = torch.randn(7, 32), torch.randn(7, 32)
        out_hidden, out_residual = layers[2](hidden, residual)
    finally:
        steering.remove()
    assert torch.equal(out_residual, residual)
    assert torch.equal(out_hidden[4:], hidden[4:]), "an unsteered token changed"
    composed = library.compose(block_spec)
    mode = composed.metadata["injection_mode"]
    d = layer_deltas([composed], [1.0], torch.ones(3), mode)[0, 2]
    total = hidden[:4] + residual[:4]  # transformers' block output
    expected = total + d if mode == "add" else rotate_towards(total, d, total @ away_directions(d)[:, None])
    torch.testing.assert_close(out_hidden[:4] + residual[:4], expected, rtol=1e-5, atol=1e-5)


def test_disarmed_hooks_and_steps_without_steered_tokens_change_nothing(model, library):
    steering = make_steering(library, mlp_finder(model))
    mlp = model.model.layers[0].mlp
    x = torch.randn(4, 32)
    plain = mlp(x)
    try:
        prefill_only = [(spec(("positive", 0.4), positions="generated"), 4, 0, 4)]
        assert arm_mixed(steering, library, prefill_only) is False
        assert torch.equal(mlp(x), plain)
        assert arm_mixed(steering, library, [(None, 4, 0, 4)]) is False
        assert torch.equal(mlp(x), plain)
    finally:
        steering.remove()
    assert hook_count(model) == 0


def test_every_injection_of_the_library_is_hooked_up_front_and_removed_with_its_buffers(model, library):
    steering = make_steering(library, mlp_finder(model))
    try:
        raw = encode(library.resolve(spec(("positive", 0.4))))
        assert steering.compiled(raw) is steering.compiled(raw)
        # rotate@mlp, rotate@block, add@block: one hook per layer each, before any step.
        assert steering.injections == [("add", "block"), ("rotate", "block"), ("rotate", "mlp")]
        assert hook_count(model) == 3 * len(model.model.layers)
        arm_mixed(steering, library, [(spec(("positive", 0.4)), 4, 0, 4)])
        assert hook_count(model) == 3 * len(model.model.layers)
    finally:
        steering.remove()
    assert hook_count(model) == 0
    assert not [name for name, _ in model.named_buffers() if "_icv_" in name]


def test_slots_are_kept_while_in_use_and_the_least_recently_used_is_reused():
    slots = SlotAllocator(3)  # slots 1 and 2
    assert slots.place(["a", "b"]) == ({"a": 1, "b": 2}, ["a", "b"])
    assert slots.place(["b"]) == ({"b": 2}, [])
    assert slots.place(["c", "b"]) == ({"c": 1, "b": 2}, ["c"])  # a was the least recently used
    with pytest.raises(ValueError, match="more than 2 distinct"):
        slots.place(["d", "e", "f"])


def run_mlps(model, x):
    for layer in model.model.layers:
        x = layer.mlp(x)
    return x


def test_compiled_steering_takes_new_steerings_without_recompiling(model, library):
    """As in vLLM's compiled engine: the hooks are traced once; a new vector or mix only rewrites buffers."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compiled = torch.compile(run_mlps, backend=counter, fullgraph=True, dynamic=True)
    steering = make_steering(library, mlp_finder(model), static=True)
    torch.manual_seed(2)
    x = torch.randn(6, 32)
    requests = [
        [(None, 6, 0, 6)],  # the warm-up run vLLM compiles on: nothing steered
        [(spec(("positive", 0.4)), 4, 0, 4), (None, 2, 0, 2)],
        [(spec(("negative", 0.3), ("positive", 0.1)), 3, 0, 3), (spec(("positive", 0.2)), 3, 4, 3)],
        [(spec(("negative", 0.5), positions="generated"), 2, 4, 1), (spec(("positive", 0.4)), 5, 0, 5)],
    ]
    try:
        with torch.no_grad():
            for step in requests:
                arm_mixed(steering, library, step)
                got = compiled(model, x)
                expected = run_mlps(model, x)  # the same hooks, eagerly
                steering.disarm()
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
            assert not torch.equal(got, run_mlps(model, x)), "the last step should have been steered"
    finally:
        steering.remove()
        torch._dynamo.reset()
    assert counter.frame_count == 1, f"{counter.frame_count} compilations"


def test_a_pipeline_stage_hooks_only_its_own_layers_under_their_global_numbers():
    from icv.errors import SteeringError
    from icv.serving.vllm.worker import site_modules as stage_modules

    class PPMissingLayer(nn.Identity):  # what vLLM puts where another stage's layers are
        pass

    stage = tiny_model("llama")
    layers = stage.model.layers
    layers[0] = PPMissingLayer()  # the second stage of two: the first layers are elsewhere
    found = stage_modules(stage, "mlp")
    assert [i for i, _ in found] == list(range(1, len(layers)))
    assert all(module is layers[i].mlp for i, module in found)
    assert [module for _, module in stage_modules(stage, "block")] == list(layers[1:])
    for i in range(len(layers)):
        layers[i] = PPMissingLayer()
    with pytest.raises(SteeringError, match="runs no decoder layer"):
        stage_modules(stage, "mlp")
