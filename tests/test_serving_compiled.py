"""The transformers engine with compiled decode steps (``icv serve --compile``), on tiny models.

Most tests compile with Dynamo's ``CompileCounter`` backend: the forward is traced
into graphs exactly as for inductor (the same guards, the same recompilations), then
run without generating code, so a test takes seconds and counts the graphs.  One
test starts ``icv serve --compile`` itself, compiled by inductor.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from serving_server import free_port, interrupt, start_icv_serve, wait_until_healthy
from steering_reference import hook_count
from test_serving_engine import CASES, GREEDY, NEW, alone, steering_of
from tiny import DEMOS, char_tokenizer, tiny_model
from torch._dynamo.testing import CompileCounter

import icv
from icv.errors import RequestError
from icv.extract import extract_steps
from icv.serving.compiled import COMMON_INJECTIONS, Compilation
from icv.serving.engine import BatchingPolicy, Engine, Failed, Finished
from icv.serving.sampling import SamplingParams
from icv.serving.steering import RowSteering


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
        "attn": positive.with_metadata(injection_site="attn") * 1.5,
    }


def send(engine: Engine, tok, prompt: str, steering: RowSteering | None, params=GREEDY) -> queue.Queue:
    events: queue.Queue = queue.Queue()
    engine.submit(tok(prompt)["input_ids"], params, steering, events.put)
    return events


def tokens_of(events: queue.Queue, timeout: float = 120.0) -> list[int]:
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, Failed):
            raise AssertionError(f"the request failed: {event.error}")
        if isinstance(event, Finished):
            return list(event.token_ids)


@contextmanager
def counted_engine(
    model, tok, policy: BatchingPolicy | None = None
) -> Iterator[tuple[Engine, CompileCounter]]:
    """A compiled engine on ``model``, warmed up, with the counter of the graphs it made; closed after."""
    counter = CompileCounter()
    torch._dynamo.reset()  # each engine counts its own graphs
    engine = Engine(model, tok, policy=policy, compilation=Compilation(backend=counter))
    try:
        engine.warm_up(timeout=120)
        yield engine, counter
    finally:
        engine.close()
        torch._dynamo.reset()


@pytest.fixture
def counted(model, tok):
    with counted_engine(model, tok) as made:
        yield made


def test_warm_up_makes_a_graph_for_one_row_and_one_for_several(counted):
    _engine, counter = counted
    assert counter.frame_count == 2


def test_a_mixed_batch_with_joins_and_leaves_matches_alone_and_compiles_nothing_new(model, tok, vectors):
    """Eight steerings and none, rows joining a running batch and leaving it: alone's tokens, no graph."""
    want = [alone(model, tok, prompt, steering_of(vectors, case)) for prompt, case in CASES]
    with counted_engine(model, tok) as (engine, counter):
        made = counter.frame_count
        first = [send(engine, tok, prompt, steering_of(vectors, case)) for prompt, case in CASES[:3]]
        time.sleep(0.05)  # the others join rows already decoding
        rest = [send(engine, tok, prompt, steering_of(vectors, case)) for prompt, case in CASES[3:]]
        got = [tokens_of(events) for events in first + rest]
        # A short request leaves a batch whose other row goes on alone.
        prompt, case = CASES[4]
        short = send(
            engine,
            tok,
            "quick",
            RowSteering(vectors["rotate"] * 0.5),
            SamplingParams(max_tokens=2, ignore_eos=True),
        )
        longer = send(engine, tok, prompt, steering_of(vectors, case))
        tokens_of(short)
        assert tokens_of(longer) == want[4]
        assert got == want
        assert counter.frame_count == made, "a new steering, batch width or row count compiled a graph"


@pytest.fixture(scope="module")
def extracted(model, tok):
    """The bare model's vector of ``DEMOS`` (made before any engine prepares the model)."""
    return icv.extract(model, tok, DEMOS, name="positive", progress=False)


@pytest.mark.parametrize("family", ["gpt2", "falcon", "gemma2", "opt"])
def test_other_families_compiled_give_alone_tokens(family, tok):
    """Four rows, three steerings of two injections: alone's tokens, and no graph after the warm-up.

    OPT's ``fc2`` sees the batch flattened: its hook reads per-token slots, not the batch size.
    """
    model = tiny_model(family)
    vector = icv.extract(model, tok, DEMOS, progress=False) * 1.5
    added = vector.with_metadata(injection_mode="add", injection_site="block") * 0.5
    requests = [
        ("hello there", RowSteering(vector)),
        ("the food was", None),
        ("abc", RowSteering(added)),
        ("xyz xyz", RowSteering(vector * 0.3)),
    ]
    want = [alone(model, tok, prompt, steering) for prompt, steering in requests]
    with counted_engine(model, tok) as (engine, counter):
        made = counter.frame_count
        sent = [send(engine, tok, prompt, steering) for prompt, steering in requests]
        assert [tokens_of(events) for events in sent] == want
        assert counter.frame_count == made


def test_a_batch_as_large_as_the_engine_allows_compiles_nothing_new(model, tok, vectors):
    """The steering buffers are sized for ``max_batch`` up front: 20 rows reuse the warm-up's graph.

    The idle engine gathers for up to 3 s, so the 20 requests start as one batch however slowly
    a loaded machine submits them.
    """
    with counted_engine(model, tok, BatchingPolicy(max_batch=20, gather_ms=3000)) as (engine, counter):
        made = counter.frame_count
        steerings = [RowSteering(vectors["rotate"] * (row / 10)) for row in range(20)]
        sent = [
            send(engine, tok, f"row {row}", steerings[row], SamplingParams(max_tokens=3, ignore_eos=True))
            for row in range(20)
        ]
        for events in sent:
            tokens_of(events)
        assert engine.stats.peak_batch == 20
        assert counter.frame_count == made


def test_an_extraction_between_steps_runs_eager_and_leaves_the_graphs_alone(
    extracted, counted, model, tok, vectors
):
    engine, counter = counted
    made = counter.frame_count
    want = extracted
    running = send(engine, tok, "i think the food", RowSteering(vectors["rotate"]))
    task = engine.run_in_slices(lambda served: extract_steps(served, tok, DEMOS, name="positive"))
    got = task.future.result(timeout=120)
    tokens_of(running)
    assert torch.equal(got.directions, want.directions)
    assert counter.frame_count == made


def test_a_vector_whose_injection_was_not_prepared_is_refused_with_400(counted, tok, vectors):
    engine, _counter = counted
    received = engine.stats.requests
    with pytest.raises(RequestError) as refused:
        send(engine, tok, "hello", RowSteering(vectors["attn"]))
    assert refused.value.status == 400 and refused.value.code == "injection_not_compiled"
    assert "rotate@attn" in str(refused.value) and "add@block, rotate@mlp" in str(refused.value)
    assert engine.stats.requests == received  # nothing was queued


def test_a_prepared_injection_beyond_the_common_two_steers_compiled(model, tok, vectors):
    steering = RowSteering(vectors["attn"])
    want = alone(model, tok, "hello there", steering)
    compilation = Compilation(backend=CompileCounter()).with_injections({("rotate", "attn")})
    assert compilation.injections == COMMON_INJECTIONS | {("rotate", "attn")}
    engine = Engine(model, tok, compilation=compilation)
    try:
        assert tokens_of(send(engine, tok, "hello there", steering)) == want
    finally:
        engine.close()
        torch._dynamo.reset()


def test_closing_a_compiled_engine_leaves_the_model_as_it_was(tok):
    model = tiny_model("llama")
    own_forward = model.forward  # an instance attribute of its own, as accelerate's hooks set one
    model.forward = own_forward
    before = hook_count(model), {name for name, _ in model.named_buffers()}
    engine = Engine(model, tok, compilation=Compilation(backend="eager"))
    assert hook_count(model) > before[0] and engine.compiled
    assert engine.compiled_injections == ["add@block", "rotate@mlp"]
    engine.warm_up(timeout=120)
    engine.close()
    assert (hook_count(model), {name for name, _ in model.named_buffers()}) == before
    assert model.__dict__["forward"] is own_forward
    assert not icv.is_steered(model)
    icv.prepare_for_compile(model).remove()  # the preparation is gone: it can be made again


def test_an_engine_never_started_removes_its_preparation_on_close(tok):
    model = tiny_model("llama")
    engine = Engine(model, tok, compilation=Compilation(backend="eager"), start=False)
    with pytest.raises(icv.ICVError, match="start the engine"):
        engine.warm_up()
    engine.close()
    assert hook_count(model) == 0 and "forward" not in model.__dict__


def test_compilation_settings_are_checked():
    with pytest.raises(ValueError, match="at least one injection"):
        Compilation(injections=frozenset())
    with pytest.raises(icv.OptionError):
        Compilation(injections=frozenset({("rotate", "elsewhere")}))


def test_an_uncompiled_engine_has_nothing_to_warm_up(model, tok):
    engine = Engine(model, tok)
    try:
        assert not engine.compiled and engine.compiled_injections == [] and engine.warm_up() == 0.0
    finally:
        engine.close()


# -- icv serve --compile ----------------------------------------------------------------------------


# Inductor compiles the tiny model in about a minute on 2 cores; a loaded machine is slower.
STARTUP_SECONDS = 600


def test_icv_serve_compile_serves_eager_tokens_and_refuses_what_it_did_not_prepare(tmp_path, vectors):
    """``icv serve --compile`` as a user runs it, compiled by inductor: steered text as eager gives it."""
    httpx = pytest.importorskip("httpx", reason="the serving tests need httpx (the 'test' extra)")
    pytest.importorskip("uvicorn", reason="the serving tests need the 'serve' extra")
    model, tok = tiny_model("llama"), char_tokenizer()
    folder, files = tmp_path / "model", tmp_path / "vectors"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    files.mkdir()
    vectors["rotate"].save(files / "positive.safetensors")
    vectors["rotate"].with_metadata(injection_site="block").save(files / "positive_block.safetensors")
    want = {
        name: tok.decode(alone(model, tok, "the room was", steering), skip_special_tokens=True)
        for name, steering in (
            ("positive", RowSteering(vectors["rotate"])),
            ("positive_block", RowSteering(vectors["rotate"].with_metadata(injection_site="block"))),
        )
    }
    port = free_port()
    log = tmp_path / "serve.log"
    process = start_icv_serve(
        ["--model", str(folder), "--vectors", str(files), "--port", str(port), "--compile"], log
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, url, log, STARTUP_SECONDS)
        health = httpx.get(f"{url}/health", timeout=60).json()
        assert health["compiled_injections"] == ["add@block", "rotate@block", "rotate@mlp"]
        for name, text in want.items():
            body = {
                "prompt": "the room was",
                "max_tokens": NEW,
                "temperature": 0,
                "ignore_eos": True,
                "steering": [{"vector": name, "strength": 1.0}],
            }
            response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["text"] == text
        attn = tmp_path / "attn.safetensors"
        vectors["attn"].save(attn)
        uploaded = httpx.post(
            f"{url}/v1/vectors/upload",
            params={"name": "attn", "filename": "attn.safetensors"},
            content=attn.read_bytes(),
            headers={"content-type": "application/octet-stream"},
            timeout=60,
        )
        assert uploaded.status_code == 201, uploaded.text
        body["steering"] = [{"vector": "attn", "strength": 1.0}]
        refused = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "injection_not_compiled"
    finally:
        interrupt(process)
    output = log.read_text()
    assert process.returncode == 0, output
    assert output.index("compiling the decode step") < output.index("serving on")
