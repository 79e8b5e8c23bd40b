"""The serving engine on tiny models: batched rows give what each request gives alone.

Every comparison is against ``icv.steer`` + ``model.generate`` for the request alone
(greedy, float32, token for token): rows prefilled together, rows joining rows that
are already decoding, rows leaving early, rows with different vectors, injection
modes, positions and none.  Also the pieces: text streaming with stop strings,
sampling, cancellation, refusals and failures.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
import torch
from steering_reference import hook_count
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.errors import RequestError, SteeringError
from icv.serving.batch import DecodeBatch
from icv.serving.engine import BatchingPolicy, Engine, Failed, Finished, TextDelta
from icv.serving.sampling import SamplingParams, next_tokens, nucleus, row_generator
from icv.serving.steering import RowSteering, active_in
from icv.serving.text import TextStream

NEW = 8
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)  # random weights may emit EOS


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vectors(model, tok):
    flipped = [(target, source) for source, target in DEMOS]
    positive = icv.extract(model, tok, DEMOS, name="positive", progress=False)
    negative = icv.extract(model, tok, flipped, name="negative", progress=False)
    return {
        "rotate": positive * 1.5,
        "other": negative * 2.0,
        "add": positive.with_metadata(injection_mode="add", injection_site="block") * 0.8,
    }


def alone(model, tok, prompt, steering: RowSteering | None, new=NEW) -> list[int]:
    """What ``icv.steer`` + ``model.generate`` give for one prompt (the reference)."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    kwargs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    if steering is None:
        out = model.generate(**kwargs)
    else:
        with icv.steer(model, steering.vector, 1.0, positions=steering.positions):
            out = model.generate(**kwargs)
    return out[0, ids.shape[1] :].tolist()


class Listener:
    """A sink that keeps a request's events (the engine calls it from its worker thread)."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self._seen: list = []

    def __call__(self, event) -> None:
        self.events.put(event)

    def first(self, timeout: float = 60.0):
        """Wait for the first event (kept for :meth:`result`)."""
        if not self._seen:
            self._seen.append(self.events.get(timeout=timeout))
        return self._seen[0]

    def result(self, timeout: float = 60.0):
        """(Finished or Failed, the streamed text before it)."""
        pieces = []
        while True:
            event = self._seen.pop(0) if self._seen else self.events.get(timeout=timeout)
            if isinstance(event, TextDelta):
                pieces.append(event.text)
            else:
                return event, "".join(pieces)


def wait_idle(engine: Engine, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not engine.idle:
        assert time.monotonic() < deadline, "the engine did not become idle"
        time.sleep(0.005)


def run_together(engine, tok, requests, *, start: bool = False):
    """Submits every request, then (``start``) starts the engine and waits for them all."""
    listeners = []
    for prompt, steering in requests:
        listener = Listener()
        engine.submit(tok(prompt)["input_ids"], GREEDY, steering, listener)
        listeners.append(listener)
    if start:
        engine.start()
    return [listener.result() for listener in listeners]


CASES = [
    ("the room was", None),
    ("i think the food", ("rotate", "all")),
    ("service", ("rotate", "generated")),
    ("the room was", ("rotate", "prompt")),
    ("so slow and rude", ("other", "all")),
    ("the room was", ("add", "all")),
    ("hello there, friend", ("add", "generated")),
    ("a", ("other", "generated")),
]


def steering_of(vectors, case):
    return None if case is None else RowSteering(vectors[case[0]], case[1])


def test_a_mixed_batch_gives_each_request_what_it_gets_alone(model, tok, vectors):
    requests = [(prompt, steering_of(vectors, case)) for prompt, case in CASES]
    expected = [alone(model, tok, prompt, steering) for prompt, steering in requests]
    engine = Engine(model, tok, start=False)  # everything queued first: one prefill, one batch
    try:
        results = run_together(engine, tok, requests, start=True)
    finally:
        engine.close()
    assert engine.stats.prefills == 1 and engine.stats.peak_batch == len(CASES)
    for (prompt, case), want, (finished, text) in zip(CASES, expected, results, strict=True):
        assert isinstance(finished, Finished), finished
        assert list(finished.token_ids) == want, (prompt, case)
        assert text == finished.text == tok.decode(want, skip_special_tokens=True)
    # The comparison has teeth: every steered request differs from the same prompt unsteered.
    unsteered = {prompt: alone(model, tok, prompt, None) for prompt, _ in CASES}
    for (prompt, case), want in zip(CASES, expected, strict=True):
        if case is not None:
            assert want != unsteered[prompt], (prompt, case)
    assert not icv.is_steered(model) and hook_count(model) == 0


def test_rows_joining_and_leaving_a_running_batch_match_alone(model, tok, vectors):
    first = [("the room was", ("rotate", "all"), 14), ("i think", None, 4)]
    later = [("service was slow", ("add", "generated"), 6), ("so", ("other", "prompt"), 9)]
    expected = [alone(model, tok, p, steering_of(vectors, c), n) for p, c, n in first + later]
    engine = Engine(model, tok, policy=BatchingPolicy(gather_ms=0))

    def send(requests):
        listeners = []
        for prompt, case, n in requests:
            listeners.append(Listener())
            engine.submit(
                tok(prompt)["input_ids"],
                SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True),
                steering_of(vectors, case),
                listeners[-1],
            )
        return listeners

    try:
        listeners = send(first)
        listeners[0].first()  # the first rows are decoding: the later ones join them
        listeners += send(later)
        results = [listener.result() for listener in listeners]
    finally:
        engine.close()
    for want, (finished, _) in zip(expected, results, strict=True):
        assert list(finished.token_ids) == want
    assert engine.stats.joins >= 1, engine.stats
    assert not icv.is_steered(model)


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2"])
def test_decode_batch_joins_and_drops_rows_exactly_in_other_families(family, tok):
    model = tiny_model(family)
    prompts = ["the room was", "i think the food was a bit cold and bland", "service"]
    want = [
        alone(model, tok, p, None, 12) for p in prompts
    ]  # gemma3_text: the long row passes its window of 16
    batch, logits = DecodeBatch.prefill(
        model, [tok(p)["input_ids"] for p in prompts[:2]], 0, torch.device("cpu")
    )
    got, rows = [[], [], []], [0, 1]
    for row, token in zip(rows, logits.argmax(-1).tolist(), strict=True):
        got[row].append(token)
    for step in range(1, 30):
        if step == 3:  # a third row joins late
            joining, first = DecodeBatch.prefill(
                model, [tok(prompts[2])["input_ids"]], 0, torch.device("cpu")
            )
            batch.extend(joining)
            got[2].append(int(first.argmax(-1)))
            rows.append(2)
        limits = {0: 12, 1: 5, 2: 12}  # the long row leaves early
        keep = [i for i, row in enumerate(rows) if len(got[row]) < limits[row]]
        if len(keep) < len(rows):
            batch.keep(keep)
            rows = [rows[i] for i in keep]
        if not rows:
            break
        for row, token in zip(rows, batch.step([got[r][-1] for r in rows]).argmax(-1).tolist(), strict=True):
            got[row].append(token)
    assert got == [want[0], want[1][:5], want[2]]


def test_padding_columns_are_cut_when_the_longest_row_leaves(model, tok):
    batch, _ = DecodeBatch.prefill(model, [[5, 6], [5, 6, 7, 8, 9, 10]], 0, torch.device("cpu"))
    assert batch.width == 6
    batch.keep([0])
    assert batch.width == 2 and batch.mask.tolist() == [[1, 1]]
    assert all(layer.keys.shape[-2] == 2 for layer in batch.cache.layers)


def test_positions_decide_the_phases_a_row_is_steered_in(vectors):
    v = vectors["rotate"]
    assert [active_in(RowSteering(v, p), "prompt") for p in ("all", "prompt", "generated")] == [
        True,
        True,
        False,
    ]
    assert [active_in(RowSteering(v, p), "generated") for p in ("all", "prompt", "generated")] == [
        True,
        False,
        True,
    ]
    assert not active_in(None, "prompt")


# -- text and sampling ----------------------------------------------------------------


def test_streamed_pieces_add_up_and_a_stop_string_never_reaches_the_client():
    text = "Hello world. STOP here"
    stream = TextStream(lambda ids: text[: len(ids)], stop=("STOP",))
    pieces = [stream.update(list(range(n))) for n in range(1, len(text) + 1)]
    assert stream.stopped
    assert "".join(pieces) + stream.finish() == "Hello world. " == stream.text
    # "S", "ST", "STO" were held back while they could still become "STOP".
    assert all("S" not in piece for piece in pieces)


def test_a_held_back_prefix_that_does_not_become_a_stop_is_sent():
    text = "aST b"
    stream = TextStream(lambda ids: text[: len(ids)], stop=("STOP",))
    pieces = [stream.update(list(range(n))) for n in range(1, len(text) + 1)]
    assert pieces == ["a", "", "", "ST ", "b"] and not stream.stopped


def test_an_incomplete_character_waits_for_its_next_token():
    decoded = ["caf", "caf\ufffd", "café"]
    stream = TextStream(lambda ids: decoded[len(ids) - 1])
    assert [stream.update([0] * n) for n in (1, 2, 3)] == ["caf", "", "é"]


def test_nucleus_keeps_the_smallest_set_of_enough_mass():
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    assert (nucleus(probs, 0.7) > 0).tolist() == [False, True, True, False]
    assert (nucleus(probs, 0.1) > 0).tolist() == [False, True, False, False]  # the top token always stays
    assert torch.equal(nucleus(probs, 0.7)[1:3], probs[1:3])
    assert torch.equal(nucleus(probs, 1.0), probs)


def test_sampling_is_greedy_at_temperature_zero_and_seeded_per_request():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    greedy = SamplingParams(temperature=0.0)
    seeded = SamplingParams(temperature=1.0, seed=7)
    assert next_tokens(logits, [greedy] * 3, [None] * 3) == logits.argmax(-1).tolist()
    draws = [next_tokens(logits[:1], [seeded], [row_generator(seeded)]) for _ in range(2)]
    assert draws[0] == draws[1]
    # A seeded row draws the same whatever shares the batch.
    mixed = next_tokens(logits[[1, 0]], [greedy, seeded], [None, row_generator(seeded)])
    assert mixed[1] == draws[0][0]


def test_seeded_sampling_through_the_engine_is_reproducible(model, tok):
    params = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.95, seed=3, ignore_eos=True)
    engine = Engine(model, tok)
    try:
        results = []
        for _ in range(2):
            listener = Listener()
            engine.submit(tok("the room")["input_ids"], params, None, listener)
            results.append(listener.result()[0].token_ids)
    finally:
        engine.close()
    assert results[0] == results[1] and len(results[0]) == 8


def test_stop_strings_and_end_of_sequence_finish_a_row(model, tok):
    engine = Engine(model, tok)
    try:
        listener = Listener()
        engine.submit(tok("the room was")["input_ids"], GREEDY, None, listener)
        full, _ = listener.result()
        stop = full.text[3:5]  # a string the unsteered greedy text is known to contain
        listener = Listener()
        stopping = SamplingParams(max_tokens=NEW, temperature=0.0, stop=(stop,), ignore_eos=True)
        engine.submit(tok("the room was")["input_ids"], stopping, None, listener)
        stopped, streamed = listener.result()
        engine._eos = frozenset({full.token_ids[2]})  # pretend the third token ends the sequence
        listener = Listener()
        engine.submit(
            tok("the room was")["input_ids"], SamplingParams(max_tokens=NEW, temperature=0.0), None, listener
        )
        ended, _ = listener.result()
    finally:
        engine.close()
    assert full.reason == "length" and len(full.token_ids) == NEW
    assert stopped.reason == "stop" and stopped.text == streamed == full.text[: full.text.index(stop)]
    assert ended.reason == "stop" and ended.token_ids == full.token_ids[:3]


# -- cancellation, refusals, failures ----------------------------------------------------


def test_a_cancelled_request_leaves_the_batch_and_no_hook(model, tok, vectors):
    engine = Engine(model, tok, max_tokens=500)
    try:
        long_one = Listener()
        endless = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        job = engine.submit(tok("the room")["input_ids"], endless, RowSteering(vectors["rotate"]), long_one)
        long_one.first()  # it is decoding
        job.cancel()
        other = Listener()
        engine.submit(tok("x")["input_ids"], SamplingParams(max_tokens=2, temperature=0.0), None, other)
        assert isinstance(other.result()[0], Finished)
        wait_idle(engine)
        assert engine.stats.cancelled == 1
    finally:
        engine.close()
    assert not icv.is_steered(model) and hook_count(model) == 0


@pytest.mark.parametrize(
    "ids, params, code",
    [
        ([], GREEDY, "empty_prompt"),
        ([5] * 250, GREEDY, "context_length_exceeded"),  # the tiny model's context is 256
        ([5], SamplingParams(max_tokens=0), "invalid_max_tokens"),
        ([5], SamplingParams(max_tokens=2000), "invalid_max_tokens"),
        ([5, 1000], GREEDY, "invalid_token"),
    ],
)
def test_requests_the_engine_cannot_serve_are_refused_at_once(model, tok, ids, params, code):
    engine = Engine(model, tok, start=False)
    with pytest.raises(RequestError) as caught:
        engine.submit(ids, params, None, Listener())
    assert caught.value.code == code and caught.value.status == 400
    assert engine.idle


def test_a_vector_of_another_model_is_refused(model, tok):
    other = icv.extract(tiny_model("qwen2"), tok, DEMOS, progress=False)
    engine = Engine(model, tok, start=False)
    with pytest.raises(RequestError, match="different models") as caught:
        engine.submit([5], GREEDY, RowSteering(other), Listener())
    assert caught.value.code == "vector_mismatch"


def test_a_full_queue_refuses_with_503(model, tok):
    engine = Engine(model, tok, policy=BatchingPolicy(max_queue=2), start=False)
    engine.submit([5], GREEDY, None, Listener())
    engine.submit([5], GREEDY, None, Listener())
    with pytest.raises(RequestError) as caught:
        engine.submit([5], GREEDY, None, Listener())
    assert caught.value.status == 503 and caught.value.code == "server_busy"


def test_a_failing_step_fails_its_rows_and_the_engine_keeps_serving(model, tok, vectors, monkeypatch):
    engine = Engine(model, tok)
    real_step = DecodeBatch.step
    calls = {"n": 0}

    def broken_once(self, tokens):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return real_step(self, tokens)

    monkeypatch.setattr(DecodeBatch, "step", broken_once)
    try:
        victim = Listener()
        engine.submit(tok("the room")["input_ids"], GREEDY, RowSteering(vectors["rotate"]), victim)
        failed, _ = victim.result()
        survivor = Listener()
        engine.submit(tok("the room")["input_ids"], GREEDY, None, survivor)
        finished, _ = survivor.result()
    finally:
        engine.close()
    assert isinstance(failed, Failed) and failed.error.status == 500 and "simulated" in failed.error.message
    assert isinstance(finished, Finished) and engine.stats.failed == 1
    assert not icv.is_steered(model)


def test_closing_fails_waiting_requests_with_503_and_refuses_new_ones(model, tok):
    engine = Engine(model, tok, start=False)
    waiting = Listener()
    engine.submit([5, 6], GREEDY, None, waiting)
    engine.close()
    event, _ = waiting.result()
    assert isinstance(event, Failed) and event.error.status == 503
    with pytest.raises(RequestError) as caught:
        engine.submit([5], GREEDY, None, Listener())
    assert caught.value.status == 503


def test_an_engine_refuses_a_model_steered_by_someone_else(model, tok, vectors):
    with icv.steer(model, vectors["rotate"]):
        with pytest.raises(SteeringError, match="already steered"):
            Engine(model, tok, start=False)


# -- work on the model itself: run_exclusive ----------------------------------------------


def test_exclusive_work_runs_on_the_worker_between_steps_with_no_hook(model, tok, vectors):
    """Extraction while a steered row decodes: the row's tokens and the vector are both what they are alone."""
    steering = RowSteering(vectors["rotate"], "generated")
    want_tokens = alone(model, tok, "the room", steering, new=60)
    want_vector = icv.extract(model, tok, DEMOS, name="made", progress=False)
    engine = Engine(model, tok)
    seen = {}

    def work(served):
        seen.update(thread=threading.current_thread().name, hooks=hook_count(served))
        return icv.extract(served, tok, DEMOS, name="made", progress=False)

    try:
        row = Listener()
        params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
        engine.submit(tok("the room")["input_ids"], params, steering, row)
        row.first()  # decoding, with the decode steering's hooks held on the model
        made = engine.run_exclusive(work).result(timeout=60)
        finished, _ = row.result()
        with pytest.raises(ZeroDivisionError):
            engine.run_exclusive(lambda _model: 1 / 0).result(timeout=60)
        wait_idle(engine)
        assert engine.stats.tasks == 2
    finally:
        engine.close()
    assert seen == {"thread": "icv-engine", "hooks": 0}
    assert made.equal(want_vector)
    assert list(finished.token_ids) == want_tokens
    assert hook_count(model) == 0


def test_exclusive_work_waiting_at_close_fails_with_503(model, tok):
    engine = Engine(model, tok, start=False)
    waiting = engine.run_exclusive(lambda _model: "never")
    engine.close()
    assert isinstance(waiting.exception(timeout=10), RequestError) and waiting.exception().status == 503
    with pytest.raises(RequestError) as caught:
        engine.run_exclusive(lambda _model: "never")
    assert caught.value.status == 503
