"""A smoke test of the speed benchmarks: their functions run on tiny models and give positive numbers.

No time or ratio is asserted (the figures are measured by ``make bench`` on the real model and
reported in docs/benchmarks.md); what a benchmark computes beyond being positive is checked only
where a test below says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny import DEMOS, ByteTokenizer, char_tokenizer, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import compiled_speed  # noqa: E402
import extraction_memory  # noqa: E402
import extraction_speed  # noqa: E402
import generation_speed  # noqa: E402
import harness  # noqa: E402
import icv_vs_icl  # noqa: E402
import load_time  # noqa: E402
import run  # noqa: E402
import serving_compiled  # noqa: E402
import serving_load  # noqa: E402
import serving_pause  # noqa: E402

import icv  # noqa: E402
from icv.aggregate import unit_rows  # noqa: E402
from icv.serving.prefill import attention_span, chunk_plan  # noqa: E402


def test_round_orders_put_every_arm_in_every_slot_equally():
    orders = harness.round_orders(["a", "b", "c"], 6)
    assert all(sorted(order) == ["a", "b", "c"] for order in orders)
    for slot in range(3):
        firsts = [order[slot] for order in orders]
        assert sorted(firsts) == ["a", "a", "b", "b", "c", "c"]


def test_alternate_drops_warmup_and_times_every_arm_each_round():
    calls: list[str] = []
    arms = {name: (lambda n=name: calls.append(n)) for name in ("a", "b")}
    times = harness.alternate(arms, rounds=3, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert calls.count("a") == calls.count("b") == 5


def test_speed_ratio_is_baseline_time_over_arm_time_per_round():
    times = {"steered": [2.0, 1.0, 4.0], "plain": [1.0, 1.0, 2.0]}
    ratio = harness.speed_ratio(times, "steered", "plain")
    assert (ratio.median, ratio.low, ratio.high, ratio.n) == (0.5, 0.5, 1.0, 3)


def test_generation_overhead_runs_every_mode_and_leaves_the_model_unsteered():
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    vector = icv.extract(model, tokenizer, DEMOS, progress=False)
    inputs = generation_speed.prompt_batch(tokenizer, ["the food was cold", "so slow"], torch.device("cpu"))
    result = generation_speed.generation_overhead(
        model, tokenizer, inputs, vector, new_tokens=2, rounds=1, warmup=0
    )
    assert set(result["ratios"]) == set(generation_speed.MODES)
    assert all(r.median > 0 for r in result["ratios"].values()) and result["tokens_per_s"] > 0
    assert not icv.is_steered(model)
    assert "rotate@mlp" in generation_speed.table([{"model": "m", "batch": 2, "new_tokens": 2, **result}])


def test_compiled_overhead_times_three_arms_without_tracing_again():
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    vector = icv.extract(model, tokenizer, DEMOS, progress=False)
    inputs = generation_speed.prompt_batch(tokenizer, ["the food was cold", "so slow"], torch.device("cpu"))
    torch._dynamo.reset()
    result = compiled_speed.compiled_overhead(
        model, tokenizer, inputs, vector, new_tokens=2, rounds=2, backend="eager"
    )
    assert set(result["ratios"]) == {"compiled + steered / compiled", "compiled / eager"}
    assert all(r.median > 0 for r in result["ratios"].values())
    before, after = result["frames"]
    assert before > 0 and after == before  # each round steers with a new strength
    assert not icv.is_steered(model)
    assert "compiled + steered" in compiled_speed.table(
        [{"model": "m", "batch": 2, "new_tokens": 2, **result}]
    )


def test_serving_compiled_times_four_arms_and_compiles_nothing_while_serving():
    result = serving_compiled.measure(
        lambda: (tiny_model("llama"), char_tokenizer()), requests=4, tokens=4, rounds=1, backend="eager"
    )
    assert set(result.times) == {"eager steered", "eager unsteered", "compiled steered", "compiled unsteered"}
    assert all(t > 0 for times in result.times.values() for t in times)
    assert result.graphs_after_rounds == result.graphs_after_warm_up
    assert result.same_tokens == 4  # traced without code generation: the eager engine's tokens
    assert "compiled / eager, steered" in serving_compiled.report(result)


def test_the_papers_extraction_baseline_computes_the_same_shifts():
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    paper = extraction_speed.paper_extract(model, tokenizer, DEMOS, method="mean")
    per_layer = paper.view(model.config.num_hidden_layers + 1, -1)[1:]
    vector = icv.extract(model, tokenizer, DEMOS, method="mean", progress=False)
    # hidden_states' last entry is after the final norm; every other layer must agree.
    torch.testing.assert_close(unit_rows(per_layer)[:-1], vector.directions[:-1], atol=1e-4, rtol=1e-4)


def test_extraction_cost_compares_three_arms():
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    result = extraction_speed.extraction_cost(model, tokenizer, DEMOS[:2], batch_size=4, rounds=1, warmup=0)
    assert set(result["seconds"]) == {"extract", "plain", "paper"}
    assert result["vs_plain"].n == result["vs_paper"].n == 1
    assert "speed-up" in extraction_speed.table({"model": "m", **result})


def test_memory_run_keeps_the_vector_small_and_hidden_states_growing_with_tokens():
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    short = extraction_memory.run_once(model, tokenizer, list(DEMOS), "hidden_states")
    longer = extraction_memory.run_once(
        model, tokenizer, extraction_memory.stretched(DEMOS, 2), "hidden_states"
    )
    vector = extraction_memory.run_once(model, tokenizer, extraction_memory.stretched(DEMOS, 2), "extract")
    assert longer["tokens"] > short["tokens"] and longer["kept_bytes"] > short["kept_bytes"]
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert vector["kept_bytes"] == (layers * hidden + layers) * 4
    with pytest.raises(ValueError):
        extraction_memory.run_once(model, tokenizer, list(DEMOS), "nonsense")


def test_memory_worker_measures_in_a_fresh_process():
    result = extraction_memory.measure_in_subprocess("tiny", [list(d) for d in DEMOS[:2]], "extract")
    assert result["method"] == "extract" and result["texts"] == 4 and result["added_kib"] >= 0
    assert "peak added" in extraction_memory.table([{"repeat": 1, **result}])


def test_icv_vs_icl_counts_longer_prompts_for_icl():
    model, tokenizer = tiny_model("llama"), ByteTokenizer()
    result = icv_vs_icl.icv_vs_icl(
        model, tokenizer, list(DEMOS), ["the room was dirty"], ks=(1, 2), new_tokens=2, rounds=1, warmup=0
    )
    tokens = result["prompt_tokens"]
    assert tokens["icv"] < tokens["icl1"] < tokens["icl2"]
    assert set(result["ratios"]["icl2"]) == set(icv_vs_icl.MEASURES)
    assert not icv.is_steered(model)
    assert "ICL, k = 2" in icv_vs_icl.table({"model": "m", **result})


def test_load_times_converts_once_then_reads_the_cache(tmp_path):
    from tokenizers import Tokenizer, models as tok_models
    from transformers import PreTrainedTokenizerFast

    tiny_model("llama").save_pretrained(tmp_path)
    backend = Tokenizer(tok_models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path)
    result = load_time.load_times(str(tmp_path), later=1)
    assert len(result["later_all"]) == 1 and result["first_s"] > 0 and result["fraction"] > 0
    assert "later / first" in load_time.table(result)


def test_run_writes_the_document_with_its_command(tmp_path):
    out = tmp_path / "bench.md"
    run.main(["--quick", "--only", "extraction", "--out", str(out)])
    text = out.read_text()
    assert "python benchmarks/run.py --quick --only extraction" in text
    assert "## 2. Extraction cost" in text and "## 1." not in text


def test_serving_load_runs_both_arms_and_checks_every_answer():
    pytest.importorskip("uvicorn", reason="needs the 'serve' extra")
    result = serving_load.measure("tiny", clients=3, per_client=1, new_tokens=2, rounds=1, load_requests=6)
    assert result["ratio"].n == 1 and result["ratio"].median > 0
    assert result["load"]["answered"] == 6 and result["load"]["wrong"] == 0
    assert 0 < result["load"]["p50"] <= result["load"]["p95"]
    assert "Load test" in serving_load.table(result)


def test_serving_payloads_mix_steerings_and_leave_every_nth_unsteered():
    bodies = serving_load.payloads(["a", "b"], 6, 4, 3)
    steered = ["steering" in b for b in bodies]
    assert steered == [False, True, True, False, True, True]
    assert all(b["ignore_eos"] and b["max_tokens"] == 4 for b in bodies)
    assert not any("steering" in b for b in serving_load.unsteered(bodies))


def test_serving_pause_measures_every_arm_and_the_costs():
    result = serving_pause.measure("tiny", prompt_tokens=60, pairs=4, chunk=16, rounds=1, stream_tokens=100)
    assert set(result["results"]) == {
        f"{w}/{a}" for w in ("prompt", "extraction") for a in ("bounded", "unbounded")
    } | {"prompt/tokens"}
    assert all(trial["pause"][0] > 0 for trial in result["results"].values())
    costs = result["costs"]
    model, _ = serving_pause.tiny_served_model()
    narrowing = chunk_plan(60, 1, 16, attention_span(model))
    assert costs["chunks/bounded"] == [len(narrowing)] and narrowing[-2] < narrowing[0] <= 16
    assert costs["chunks/tokens"] == [-(-60 // 16)] and costs["slices/bounded"][0] >= 2
    text = serving_pause.table(result)
    assert "a 60-token prompt, chunks of 16 tokens" in text and "one extraction slice" in text
    assert "longest chunk + longest step, CPU (s)" in text


def test_the_longest_gap_is_the_one_that_overlaps_the_work():
    arrivals = [0.0, 0.1, 0.2, 1.5, 1.6, 3.0]
    assert serving_pause.longest_gap(arrivals, start=0.15, end=1.55) == pytest.approx(1.3)
    assert serving_pause.longest_gap(arrivals, start=1.55, end=1.58) == pytest.approx(0.1)


def test_serving_safety_refuses_the_hostile_uploads_and_isolates_the_broken_row():
    import serving_safety

    text = serving_safety.report()
    assert text.count("| 400 |") == 2
    assert "400 `steering_overflow`; good rows identical to alone: 4/4" in text


def test_serve_gate_overhead_times_both_arms_and_checks_each_answer_against_its_decision():
    pytest.importorskip("uvicorn", reason="needs the 'serve' extra")
    import serve_gate_overhead

    result = serve_gate_overhead.measure("tiny", rows=3, tokens=2, rounds=1)
    assert result["ratio"].n == 1 and result["ratio"].median > 0
    assert result["wrong"] == 0 and 0 <= result["fired"] <= 3
    assert "median gated / ungated" in serve_gate_overhead.report(result)
