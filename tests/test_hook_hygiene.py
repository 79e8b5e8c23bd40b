"""Every way out of steering or extraction leaves the model exactly as it was.

"Exactly" means: the logits are bitwise identical to the pristine model's, no
hook of any kind remains on any module, and ``icv.is_steered`` is False.
"""

from __future__ import annotations

import importlib
import itertools
import threading

import pytest
import torch
from tiny import DEMOS, ByteTokenizer, tiny_model
from torch.nn.modules import module as torch_module
from transformers import StoppingCriteria, StoppingCriteriaList

import icv

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
)
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
PROMPTS = ["the food was", "service was slow and", "i"]
STEERINGS = [  # (mode, site, positions, strength): a varied set to nest
    ("rotate", "mlp", "all", 0.3),
    ("add", "block", "prompt", 0.5),
    ("add", "attn", "all", 0.4),
]


def hooks_left(model: torch.nn.Module) -> list[str]:
    left = [
        f"{name or '<model>'}.{attr}"
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if getattr(module, attr, None)
    ]
    return left + [name for name in GLOBAL_HOOKS if getattr(torch_module, name, None)]


def logits(model: torch.nn.Module) -> torch.Tensor:
    batch = ByteTokenizer().batch(PROMPTS, side="left")
    with torch.no_grad():
        return model(**batch).logits


def generate(model: torch.nn.Module, **options) -> torch.Tensor:
    batch = ByteTokenizer().batch(PROMPTS, side="left")
    return model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=0, **options)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    assert hooks_left(model) == [], "the pristine model already has hooks: the checks would mean nothing"
    vector = icv.extract(model, ByteTokenizer(), DEMOS, name="hygiene")
    return model, vector, logits(model)


def assert_pristine(model: torch.nn.Module, reference: torch.Tensor) -> None:
    assert hooks_left(model) == []
    assert not icv.is_steered(model)
    assert torch.equal(logits(model), reference)


def steering(model, vector, index: int) -> icv.Steering:
    mode, site, positions, strength = STEERINGS[index]
    return icv.steer(model, vector, strength, mode=mode, site=site, positions=positions)


# -- exceptions inside the block -----------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("raised", [Boom, icv.OptionError, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("index", range(len(STEERINGS)))
def test_exception_inside_with_block(setup, raised, index):
    model, vector, pristine = setup
    with pytest.raises(raised):
        with steering(model, vector, index):
            assert icv.is_steered(model) and hooks_left(model)
            generate(model)
            raise raised("inside the block")
    assert_pristine(model, pristine)


class InterruptAfter(StoppingCriteria):
    """A stopping criterion that raises KeyboardInterrupt on its n-th call (a user's Ctrl-C)."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def __call__(self, input_ids, scores, **kwargs):
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_keyboard_interrupt_from_a_stopping_criterion_during_generate(setup, positions):
    model, vector, pristine = setup
    with pytest.raises(KeyboardInterrupt):
        with icv.steer(model, vector, 0.3, positions=positions):
            generate(model, stopping_criteria=StoppingCriteriaList([InterruptAfter(3)]))
    assert_pristine(model, pristine)


def test_keyboard_interrupt_from_a_forward_hook_mid_forward(setup):
    """Interrupted inside the forward pass, between two steered layers."""
    model, vector, pristine = setup
    calls = {"n": 0}

    def interrupt(_module, _args, _output):
        calls["n"] += 1
        if calls["n"] == 4:  # during the third generated token
            raise KeyboardInterrupt

    ours = model.model.layers[1].register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            with icv.steer(model, vector, 0.3, positions="generated"):
                generate(model)
    finally:
        ours.remove()
    assert calls["n"] == 4
    assert_pristine(model, pristine)


# -- nesting and removal ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def alone(setup):
    """Each steering's logits when it is the only one."""
    model, vector, _ = setup
    results = []
    for index in range(len(STEERINGS)):
        with steering(model, vector, index):
            results.append(logits(model))
    return results


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(STEERINGS)))))
def test_nested_steerings_removed_in_every_order(setup, alone, order):
    model, vector, pristine = setup
    live = [steering(model, vector, index) for index in range(len(STEERINGS))]
    with pytest.warns(icv.StackedSteeringWarning, match="steered 3 times"):  # handles, stacked on purpose
        assert not any(torch.equal(logits(model), a) for a in alone)  # all three act together
    for step, index in enumerate(order):
        live[index].remove()
        remaining = [i for i in order[step + 1 :]]
        assert icv.is_steered(model) == bool(remaining)
        if len(remaining) == 1:
            # What is left acts exactly as it does alone: removal took nothing else with it.
            assert torch.equal(logits(model), alone[remaining[0]])
    assert_pristine(model, pristine)


def test_nested_with_blocks_exited_by_an_exception(setup):
    model, vector, pristine = setup
    with pytest.raises(Boom):
        with steering(model, vector, 0):
            with steering(model, vector, 1):
                with steering(model, vector, 2):
                    raise Boom
    assert_pristine(model, pristine)


def test_remove_twice_and_exit_after_remove(setup):
    model, vector, pristine = setup
    handle = steering(model, vector, 0)
    handle.remove()
    handle.remove()
    assert not handle.active
    assert_pristine(model, pristine)
    with steering(model, vector, 1) as inner:
        inner.remove()
        assert_pristine(model, pristine)
        inner.remove()
    assert_pristine(model, pristine)


def test_removing_one_steering_twice_leaves_the_others(setup, alone):
    model, vector, pristine = setup
    first, second = steering(model, vector, 0), steering(model, vector, 1)
    first.remove()
    first.remove()
    assert icv.is_steered(model)
    assert torch.equal(logits(model), alone[1])
    second.remove()
    assert_pristine(model, pristine)


def test_failure_while_registering_hooks_takes_back_the_ones_made(setup, monkeypatch):
    model, vector, pristine = setup
    target = model.model.layers[2].mlp

    def fail(*_args, **_kwargs):
        raise RuntimeError("cannot register (simulated)")

    monkeypatch.setattr(target, "register_forward_hook", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        icv.steer(model, vector, 0.3, positions="generated")
    monkeypatch.undo()
    assert_pristine(model, pristine)


# -- another model's vector -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(num_layers=4), "num_layers"),
        (dict(hidden_size=16), "hidden_size"),
        (dict(model_type="mistral"), "model_type"),
        (dict(model_name="someone/other-model", strict=True), "model_name"),
    ],
)
def test_a_vector_for_another_model_is_refused_before_any_hook(setup, change, match):
    model, vector, pristine = setup
    layers = change.pop("num_layers", vector.num_layers)
    hidden = change.pop("hidden_size", vector.hidden_size)
    strict = change.pop("strict", False)
    metadata = {**vector.metadata, **change}
    foreign = icv.InContextVector(torch.ones(layers, hidden), metadata, torch.ones(layers))
    with pytest.raises(icv.ModelMismatchError, match=match):
        icv.steer(model, foreign, 0.3, strict=strict)
    assert_pristine(model, pristine)


# -- threads ----------------------------------------------------------------------------------


def test_a_second_thread_is_refused_while_the_first_steers(setup, alone):
    model, vector, pristine = setup
    holding, release, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first_thread():
        try:
            with steering(model, vector, 0):
                holding.set()
                release.wait(30)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=first_thread)
    thread.start()
    assert holding.wait(30)
    before = hooks_left(model)
    with pytest.raises(icv.SteeringError, match="another thread"):
        steering(model, vector, 1)
    assert hooks_left(model) == before  # the refusal registered nothing
    assert torch.equal(logits(model), alone[0])  # and left the first steering as it was
    release.set()
    thread.join(30)
    assert done.is_set() and not errors
    assert_pristine(model, pristine)
    with steering(model, vector, 1):  # free again once the first thread is done
        assert torch.equal(logits(model), alone[1])
    assert_pristine(model, pristine)


def test_threads_racing_to_steer_never_overlap(setup):
    """Four threads try to steer at once, over and over: at any moment one owns the model."""
    steer_module = importlib.import_module("icv.steer")  # icv.steer is the function

    model, vector, pristine = setup
    barrier = threading.Barrier(4)
    overlaps: list[set] = []
    foreign_errors: list[BaseException] = []
    granted = [0]

    def worker():
        barrier.wait(30)
        for _ in range(25):
            try:
                handle = icv.steer(model, vector, 0.3)
            except icv.SteeringError:
                continue
            except BaseException as error:  # pragma: no cover - reported below
                foreign_errors.append(error)
                return
            with steer_module._registry_lock:
                owners = {s._thread for s in steer_module._active.get(model, [])}
                granted[0] += 1
            if owners != {threading.get_ident()}:
                overlaps.append(owners)
            handle.remove()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not foreign_errors and not overlaps
    assert granted[0] > 0
    assert_pristine(model, pristine)


def test_the_same_thread_may_nest(setup, alone):
    model, vector, pristine = setup
    with steering(model, vector, 0), steering(model, vector, 1):
        assert icv.is_steered(model)
    assert_pristine(model, pristine)


# -- extraction that fails half-way -----------------------------------------------------------


@pytest.mark.parametrize("raised", [RuntimeError("CUDA out of memory (simulated)"), KeyboardInterrupt()])
@pytest.mark.parametrize("site", ["block", "mlp", "attn"])
def test_extraction_failing_half_way_leaves_no_hooks(raised, site):
    model = tiny_model("llama")
    pristine = logits(model)
    calls = {"n": 0}

    def fail_on_third_batch(_module, _args, _output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise raised

    ours = model.model.layers[1].register_forward_hook(fail_on_third_batch)
    try:
        with pytest.raises(type(raised)):
            icv.extract(model, ByteTokenizer(), DEMOS * 4, site=site, batch_size=4, progress=False)
    finally:
        ours.remove()
    assert calls["n"] == 3  # two batches went through before the failure
    assert_pristine(model, pristine)
    # And the model still extracts normally afterwards.
    again = icv.extract(model, ByteTokenizer(), DEMOS, site=site)
    assert torch.isfinite(again.directions).all()
    assert_pristine(model, pristine)
