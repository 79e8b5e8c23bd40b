"""Bounded work in the engine: chunked prefill and work on the model in slices, on tiny models.

Chunked prefill must not change a token: every request's greedy tokens equal
``icv.steer`` + ``model.generate`` for it alone, steered or not, with each of the
positions options, however many chunks its prompt takes.  And it must bound what a
decoding row waits: between two chunks of a long prompt, every decoding row takes
a step; between two slices of an extraction, too.
"""

from __future__ import annotations

import threading

import pytest
import torch
from steering_reference import hook_count
from test_serving_engine import GREEDY, Listener, alone, steering_of, wait_idle
from tiny import DEMOS, char_tokenizer, tiny_model

import icv
from icv.errors import OptionError, RequestError
from icv.extract import batches_of, extract_steps, run_to_end
from icv.layers import decoder_layers
from icv.serving.batch import DecodeBatch
from icv.serving.engine import BatchingPolicy, Engine, Finished
from icv.serving.prefill import ChunkedPrefill, attention_span, chunk_columns, chunk_plan
from icv.serving.sampling import SamplingParams
from icv.serving.steering import RowSteering

LONG = "the food was cold and the waiter was rude, so we left before dessert and went home. " * 2


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def vectors(model, tok):
    positive = icv.extract(model, tok, DEMOS, name="positive", progress=False)
    negative = icv.extract(model, tok, [(t, s) for s, t in DEMOS], name="negative", progress=False)
    return {
        "rotate": positive * 1.5,
        "other": negative * 2.0,
        "add": positive.with_metadata(injection_mode="add", injection_site="block") * 0.8,
    }


CASES = [
    (LONG, None),
    (LONG, ("rotate", "all")),
    (LONG, ("rotate", "prompt")),
    (LONG, ("rotate", "generated")),
    (LONG[:97], ("add", "all")),
    ("so slow", ("other", "generated")),
]


@pytest.mark.parametrize("chunk, by_attention", [(5, True), (37, True), (37, False), (10_000, True)])
def test_chunked_prefill_gives_each_request_what_it_gets_alone(model, tok, vectors, chunk, by_attention):
    """Prompts of 7 to 170 tokens in chunks of 1 to 6 columns (the group's six rows share the budget)."""
    requests = [(prompt, steering_of(vectors, case)) for prompt, case in CASES]
    expected = [alone(model, tok, prompt, steering) for prompt, steering in requests]
    policy = BatchingPolicy(prefill_chunk=chunk, chunk_by_attention=by_attention)
    engine = Engine(model, tok, policy=policy, start=False)
    listeners = []
    for prompt, steering in requests:
        listeners.append(Listener())
        engine.submit(tok(prompt)["input_ids"], GREEDY, steering, listeners[-1])
    try:
        engine.start()
        results = [listener.result() for listener in listeners]
    finally:
        engine.close()
    width = max(len(tok(prompt)["input_ids"]) for prompt, _ in CASES)
    plan = chunk_plan(width, len(CASES), chunk, attention_span(model) if by_attention else None)
    assert engine.stats.prefills == 1 and engine.stats.prefill_chunks == len(plan)
    if not by_attention:
        assert plan == [chunk // len(CASES)] * (width // (chunk // len(CASES))) + [
            width % (chunk // len(CASES))
        ]
    for (prompt, case), want, (finished, _) in zip(CASES, expected, results, strict=True):
        assert isinstance(finished, Finished), finished
        assert list(finished.token_ids) == want, (prompt[:20], case, chunk)
    unsteered = alone(model, tok, LONG, None)
    assert all(want != unsteered for want in expected[1:4])  # each positions option changes the text
    assert not icv.is_steered(model) and hook_count(model) == 0


def test_rows_decode_between_the_chunks_of_a_long_prompt(model, tok, vectors, monkeypatch):
    """A running stream takes a step between every two chunks, and both requests stay exact."""
    log: list[str] = []
    real_advance, real_step = ChunkedPrefill.advance, DecodeBatch.step

    def advance(self):
        log.append(f"chunk{self.width}")
        return real_advance(self)

    def step(self, tokens):
        log.append("step")
        return real_step(self, tokens)

    monkeypatch.setattr(ChunkedPrefill, "advance", advance)
    monkeypatch.setattr(DecodeBatch, "step", step)
    running = RowSteering(vectors["rotate"], "generated")
    arriving = RowSteering(vectors["other"], "all")
    want_running = alone(model, tok, "the room", running, new=80)
    want_arriving = alone(model, tok, LONG, arriving, new=4)
    engine = Engine(model, tok, policy=BatchingPolicy(prefill_chunk=16, gather_ms=0))
    try:
        first, second = Listener(), Listener()
        endless = SamplingParams(max_tokens=80, temperature=0.0, ignore_eos=True)
        engine.submit(tok("the room")["input_ids"], endless, running, first)
        first.first()  # decoding
        short = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        engine.submit(tok(LONG)["input_ids"], short, arriving, second)
        results = [first.result(), second.result()]
        wait_idle(engine)
    finally:
        engine.close()
    assert [list(r[0].token_ids) for r in results] == [want_running, want_arriving]
    width = len(tok(LONG)["input_ids"])
    chunks = [i for i, entry in enumerate(log) if entry == f"chunk{width}"]
    assert len(chunks) == len(chunk_plan(width, 1, 16, attention_span(model))) >= 10
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert "step" in log[before:after], log[before : after + 1]  # the stream never waits two chunks


def test_the_group_with_fewest_tokens_left_goes_first(model, tok, monkeypatch):
    """A short prompt arriving during a long one's prefill starts before the long one ends."""
    engine = Engine(model, tok, policy=BatchingPolicy(prefill_chunk=8, gather_ms=0))
    order: list[int] = []
    real_advance = ChunkedPrefill.advance

    def advance(self):
        order.append(self.width)
        if len(order) == 2:  # the long prompt is under way: a short one arrives
            engine.submit(tok("hi")["input_ids"], GREEDY, None, short)
        return real_advance(self)

    monkeypatch.setattr(ChunkedPrefill, "advance", advance)
    short, long = Listener(), Listener()
    try:
        engine.submit(tok(LONG)["input_ids"], GREEDY, None, long)
        results = [short.result(), long.result()]
    finally:
        engine.close()
    short_width = len(tok("hi")["input_ids"])
    assert order[2] == short_width and order.count(short_width) == 1  # taken at once, in one chunk
    assert [list(r[0].token_ids) for r in results] == [
        alone(model, tok, "hi", None),
        alone(model, tok, LONG, None),
    ]


def test_a_chunk_is_the_widest_whose_weights_and_attention_fit_the_budget():
    """Columns x after `done` cost rows * x * (1 + (done + x) / span) tokens' worth: at most the budget."""

    def cost(done, rows, x, span):
        return rows * x * (1 + (done + x) / span)

    for done in (0, 1, 100, 3_000, 50_000):
        for rows, budget, span in ((1, 256, 3073.0), (3, 256, 3073.0), (1, 64, 145.0), (6, 37, 145.0)):
            x = chunk_columns(done, rows, budget, span)
            assert x == 1 or cost(done, rows, x, span) <= budget + 1e-6, (done, rows, budget)
            assert cost(done, rows, x + 1, span) > budget, (done, rows, budget)  # the widest that fits
    assert chunk_columns(0, 1, 256, None) == 256 and chunk_columns(10_000, 3, 256, None) == 85
    assert chunk_columns(50_000, 16, 8, 100.0) == 1  # always progress


def test_the_plan_narrows_as_the_context_grows_and_covers_the_prompt():
    plan = chunk_plan(4000, 1, 256, 3073.0)
    assert sum(plan) == 4000 and plan[0] == 237 and plan[-2] == 111  # SmolLM2-135M's span
    assert all(a >= b for a, b in zip(plan[:-1], plan[1:-1], strict=False))
    assert chunk_plan(600, 1, 256, None) == [256, 256, 88]


def test_the_attention_span_is_a_layers_weights_over_its_attention_per_token(model):
    config = model.config
    layer = decoder_layers(model)[0]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    weights = sum(p.numel() for p in layer.parameters())
    assert attention_span(model) == weights / (2 * config.num_attention_heads * head_dim)
    assert attention_span(torch.nn.Linear(2, 2)) is None  # no config: chunks bounded in tokens alone


def test_a_prompt_that_ends_with_its_first_token_never_joins_the_running_rows(model, tok, monkeypatch):
    """Its cache is not copied into the running batch (padding the running rows to its width) only to be cut."""
    joins: list[int] = []
    real_extend = DecodeBatch.extend
    monkeypatch.setattr(
        DecodeBatch, "extend", lambda self, other: joins.append(other.width) or real_extend(self, other)
    )
    engine = Engine(model, tok, policy=BatchingPolicy(prefill_chunk=16, gather_ms=0))
    try:
        running, short = Listener(), Listener()
        endless = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
        engine.submit(tok("the room")["input_ids"], endless, None, running)
        running.first()
        one = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
        engine.submit(tok(LONG)["input_ids"], one, None, short)
        results = [running.result(), short.result()]
        wait_idle(engine)
    finally:
        engine.close()
    assert [list(r[0].token_ids) for r in results] == [
        alone(model, tok, "the room", None, new=60),
        alone(model, tok, LONG, None, new=1),
    ]
    assert joins == [] and engine.stats.finished == 2 and engine.stats.joins == 0


# -- work on the model in slices ---------------------------------------------------------------------


def test_sliced_work_lets_rows_decode_between_slices(model, tok, monkeypatch):
    log: list[str] = []
    real_step = DecodeBatch.step
    monkeypatch.setattr(
        DecodeBatch, "step", lambda self, tokens: log.append("step") or real_step(self, tokens)
    )

    def work(served):
        for i in range(5):
            log.append(f"slice{i}")
            assert hook_count(served) == 0  # the decode steering's hooks are off during a slice
            yield
        return "made"

    engine = Engine(model, tok)
    try:
        row = Listener()
        params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
        engine.submit(
            tok("the room")["input_ids"],
            params,
            RowSteering(icv.extract(model, tok, DEMOS, progress=False)),
            row,
        )
        row.first()
        task = engine.run_in_slices(work)
        assert task.future.result(timeout=60) == "made"
        row.result()
        wait_idle(engine)
    finally:
        engine.close()
    slices = [i for i, entry in enumerate(log) if entry.startswith("slice")]
    assert len(slices) == 5 and engine.stats.tasks == 1 and engine.stats.slices == 6  # the 6th ends it
    for before, after in zip(slices, slices[1:], strict=False):
        assert "step" in log[before:after]


def test_cancelled_sliced_work_stops_at_the_next_slice_and_closes(model, tok):
    ran, closed = threading.Event(), threading.Event()

    def endless(_served):
        try:
            while True:
                ran.set()
                yield
        finally:
            closed.set()

    engine = Engine(model, tok)
    try:
        task = engine.run_in_slices(endless)
        assert ran.wait(30)
        task.cancel()
        with pytest.raises(RequestError) as caught:
            task.future.result(timeout=30)
        assert caught.value.status == 499 and closed.wait(10)
        wait_idle(engine)
        assert engine.stats.tasks_cancelled == 1
    finally:
        engine.close()


def test_sliced_extraction_is_extract_with_the_same_batch_bound(model, tok):
    pairs = [(s * 3, t * 2) for s, t in DEMOS] * 3
    steps = extract_steps(model, tok, pairs, name="v", max_batch_tokens=100, progress=False)
    count = 0
    while True:
        try:
            next(steps)
            count += 1
        except StopIteration as done:
            vector = done.value
            break
    assert vector.equal(icv.extract(model, tok, pairs, name="v", max_batch_tokens=100, progress=False))
    assert vector.equal(run_to_end(extract_steps(model, tok, pairs, name="v", max_batch_tokens=100)))
    lengths = sorted((len(tok(text)["input_ids"]) for pair in pairs for text in pair), reverse=True)
    assert count == len(batches_of(lengths, range(len(lengths)), 16, 100)) > 3
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "lengths, size, budget, want",
    [
        ([5, 4, 3, 2], 16, None, [[0, 1, 2, 3]]),
        ([5, 4, 3, 2], 2, None, [[0, 1], [2, 3]]),
        ([5, 4, 3, 2], 16, 10, [[0, 1], [2, 3]]),
        ([50, 4, 3], 16, 10, [[0], [1, 2]]),  # a text over the budget goes alone
        ([5, 5, 5], 16, 4, [[0], [1], [2]]),
    ],
)
def test_batches_are_cut_by_count_and_by_padded_tokens(lengths, size, budget, want):
    assert batches_of(lengths, range(len(lengths)), size, budget) == want


def test_a_bad_batch_bound_is_refused(model, tok):
    with pytest.raises(OptionError, match="max_batch_tokens"):
        icv.extract(model, tok, DEMOS, max_batch_tokens=0)
