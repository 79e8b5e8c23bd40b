"""``icv.evaluate(..., when=)`` through a running ``icv serve`` (``engine="server"``): the gate on the server.

The server is the real one (uvicorn on 127.0.0.1, the transformers engine) serving a tiny
random llama with the vector ``warm`` and the condition ``a`` among its files.  Every answer
and every decision (``fired``, the report's "steered rows") must be the transformers
engine's in this process: accepted rows the steered model's, rejected rows the bare
model's.  A condition the server does not serve is an error that names it.  The vLLM
engine's test is in tests/with_vllm/test_vllm_sweep.py.
"""

from __future__ import annotations

import contextlib
import importlib
import json

import pytest
from serving_server import BackgroundServer, httpx
from tiny import DEMOS, save_tiny_llama

import icv
from icv.cli import main
from icv.errors import EngineError, OptionError
from icv.evaluate import evaluate
from icv.gate import read_prompt_states, readings_of, scores_of
from icv.prompts import paraphrase_prompt
from icv.scorers import FunctionScorer
from icv.serving import ModelShape, VectorLibrary

engines = importlib.import_module("icv.engines")

INPUTS = ["the room was dark", "slow service", "cold soup again", "we waited an hour"]
MATCHING = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa", "aa aaaa", "aaa", "ab aa", "aaaab"]
OTHER = ["zzz yy", "zz zzz", "z z z", "zzzzzz y", "yy zz", "zzz", "zy zz", "zzzzy"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-gated")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return icv.load_model(model_dir)


@pytest.fixture(scope="module")
def vector(loaded):
    model, tok = loaded
    return icv.extract(model, tok, DEMOS, name="warm", progress=False)


@pytest.fixture(scope="module")
def cond(loaded):
    """Condition ``a``, its threshold in the widest gap between the icv arm's prompt scores: a mixed gate."""
    model, tok = loaded
    found = icv.extract_condition(model, tok, MATCHING, OTHER, name="a")
    scores = []
    for text in INPUTS:
        ids = tok(paraphrase_prompt(text), return_tensors="pt").input_ids
        states = read_prompt_states(model, ids, None, readings_of([found]))
        scores.append(float(scores_of([found], states)[found][0]))
    ordered = sorted(scores)
    gap, low = max((b - a, a) for a, b in zip(ordered[:-1], ordered[1:], strict=True))
    assert gap > 1e-3, scores  # far above the float noise between a padded batch and one prompt
    return found.with_threshold(low + gap / 2, ">")


@pytest.fixture(scope="module")
def served(model_dir, vector, cond, tmp_path_factory):
    """A second copy of the model behind ``icv serve``'s app: ``warm`` and the condition ``a`` from files."""
    model, tok = icv.load_model(model_dir)
    folder = tmp_path_factory.mktemp("served-gated")
    vector.save(folder / "warm.safetensors")
    cond.save(folder / "a.safetensors")
    library = VectorLibrary.load([folder], ModelShape.of(model))
    with BackgroundServer(model, tok, library, max_tokens=64) as server:
        yield server


def letters() -> FunctionScorer:
    return FunctionScorer("letters", lambda outputs, s, r: [float(len(set(o)) % 2) for o in outputs])


def kept() -> FunctionScorer:
    return FunctionScorer(
        "kept",
        lambda outputs, sources, r: [
            len(set(o) & set(s)) / 26 for o, s in zip(outputs, sources, strict=True)
        ],
        needs_sources=True,
    )


def sweep(loaded, vector, **options):
    model, tok = loaded
    settings = dict(
        style=letters(),
        content=kept(),
        scorers=[],
        vector=vector,
        strengths=[0.3, 0.6],
        methods=["zero-shot", "icv", "icl+icv"],
        hybrid_strengths=[0.0, 0.4],  # strength 0: sent unsteered, its decision from the 0.4 row's
        max_new_tokens=8,
        batch_size=3,
        progress=False,
    )
    settings.update(options)
    return evaluate(model, tok, DEMOS[:1], INPUTS, **settings)


def steered_column(evaluation):
    """The markdown report's "steered rows" cells, row by row."""
    lines = evaluation.markdown().split("\n")
    column = [cell.strip() for cell in lines[0].split("|")].index("steered rows")
    return [line.split("|")[column].strip() for line in lines[2:]]


def report(evaluation):
    return {(r.method, r.strength): (r.outputs, r.fired) for r in evaluation.results}


def test_a_gated_sweep_through_a_server_gives_the_transformers_engines_answers_and_decisions(
    loaded, vector, cond, served
):
    local = sweep(loaded, vector, when=cond)
    remote = sweep(loaded, vector, when=cond, engine="server", url=served.url)
    assert report(remote) == report(local)
    assert remote.settings["when"] == local.settings["when"] == "a"
    zero = local.result("zero-shot").outputs
    icv_arm = local.result("icv", 0.6)
    assert 0 < icv_arm.steered_rows < len(INPUTS), icv_arm.fired  # the gate is mixed: the test has teeth
    ungated = sweep(loaded, vector, methods=["icv"]).result("icv", 0.6).outputs
    assert ungated != zero
    for i, fired in enumerate(remote.result("icv", 0.6).fired):
        assert remote.result("icv", 0.6).outputs[i] == (ungated[i] if fired else zero[i])
    assert remote.result("zero-shot").fired is None
    # The strength-0 row reports its prompt's decision, as the transformers engine's does.
    assert remote.result("icl+icv", 0.0).fired == local.result("icl+icv", 0.4).fired
    assert steered_column(remote) == steered_column(local)
    assert steered_column(remote)[0] == "" and steered_column(remote)[2] == f"{icv_arm.steered_rows}/4"


def test_a_sweep_of_strength_zero_alone_still_reports_its_decisions(loaded, vector, cond, served):
    options = dict(methods=["icv"], strengths=[0.0], when=cond)
    local = sweep(loaded, vector, **options)
    remote = sweep(loaded, vector, engine="server", url=served.url, **options)
    assert report(remote) == report(local)
    assert (
        remote.result("icv", 0.0).outputs
        == sweep(loaded, vector, methods=["zero-shot"]).result("zero-shot").outputs
    )


def test_a_rule_with_served_names_and_not(loaded, vector, cond, served):
    """``~a`` (and ``a & ~a``) go to the server with the served condition's name."""
    local = sweep(loaded, vector, when=~cond, methods=["icv"])
    remote = sweep(loaded, vector, when=~cond, methods=["icv"], engine="server", url=served.url)
    assert report(remote) == report(local)
    gated = sweep(loaded, vector, when=cond, methods=["icv"])
    assert [not f for f in gated.result("icv", 0.3).fired] == remote.result("icv", 0.3).fired
    never = sweep(loaded, vector, when=cond & ~cond, methods=["icv"], engine="server", url=served.url)
    assert never.result("icv", 0.6).steered_rows == 0


def test_a_condition_the_server_does_not_serve_is_an_error_that_names_it(loaded, vector, cond, served):
    model, tok = loaded
    other = cond.with_threshold(cond.threshold + 0.5)  # the same name, another decision
    with pytest.raises(EngineError, match=r"does not serve the condition 'a'.*another one"):
        sweep(loaded, vector, when=other, engine="server", url=served.url)
    stranger = icv.extract_condition(model, tok, OTHER, MATCHING, name="b")
    with pytest.raises(
        EngineError, match=r"condition 'b' that when= names \(it serves a\).*icv serve --vectors"
    ):
        sweep(loaded, vector, when=cond & stranger, engine="server", url=served.url, mode="add")
    # Refused before anything was uploaded (mode='add' would have uploaded a copy of warm).
    assert [v["name"] for v in httpx.get(f"{served.url}/v1/vectors").json()["data"]] == ["warm"]


def test_the_server_lists_each_condition_with_the_sha256_of_its_file(cond, served):
    from icv.condition import to_bytes

    listed = httpx.get(f"{served.url}/v1/vectors").json()["conditions"]
    assert [(c["name"], c["kind"]) for c in listed] == [("a", "condition")]
    import hashlib

    assert listed[0]["sha256"] == hashlib.sha256(to_bytes(cond)).hexdigest()


def test_eval_command_gates_on_a_server(model_dir, vector, cond, served, tmp_path, capsys):
    inputs = tmp_path / "in.txt"
    inputs.write_text("\n".join(INPUTS) + "\n")
    vector.save(tmp_path / "warm.safetensors")
    cond.save(tmp_path / "a.safetensors")
    base = ["eval", "--model", model_dir, "--vector", tmp_path / "warm.safetensors", "--inputs", inputs]
    base += ["--style", "positive", "--methods", "zero-shot,icv", "--strengths", "0.6", "--no-fluency"]
    base += ["--max-new-tokens", "6", "--when", tmp_path / "a.safetensors", "--quiet"]
    reports = {}
    for engine in ([], ["--engine", "server", "--url", served.url]):
        out = tmp_path / ("server" if engine else "local")
        code = main([str(a) for a in [*base, *engine, "--out", out]])
        assert code == 0, capsys.readouterr().err
        reports[bool(engine)] = json.loads((out / "eval.json").read_text())["results"]
    assert [(r["outputs"], r["fired"]) for r in reports[True]] == [
        (r["outputs"], r["fired"]) for r in reports[False]
    ]
    assert 0 < sum(reports[True][1]["fired"]) < len(INPUTS)


# -- what a request-per-row engine sends and reads back (no engine behind it) ---------------


class RecordingEngine(engines._RowEngine):
    """Serves conditions as ``c0, c1, ...``; steers a gated request when its prompt holds 'x'."""

    name = "recording"

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self.rows: list[engines.Row] = []
        self.served_conditions: list = []

    @contextlib.contextmanager
    def serving(self, vectors, conditions=()):
        self.served_conditions = list(conditions)
        yield [f"v{i}" for i in range(len(vectors))], [f"c{i}" for i in range(len(conditions))]

    def complete(self, rows, positions, max_new_tokens, progress):
        self.rows.extend(rows)
        replies = []
        for row in rows:
            fired = "x" in row.prompt if row.when is not None else None
            text = (
                f"{row.vector}@{row.strength}" if row.vector is not None and fired is not False else "plain"
            )
            replies.append(engines.Reply(text, 3, fired if self.report else None))
        return replies


def test_a_row_engine_sends_the_rule_with_served_names_and_counts_each_rows_decision(vector, cond):
    other = cond.with_threshold(0.0)  # a second condition: its own served name
    engine = RecordingEngine()
    sweeps = [engines.Sweep(["p"]), engines.Sweep(["x1", "p2", "x3"], vector, [0.0, 0.5])]
    answered = engine.answer(
        sweeps, max_new_tokens=4, batch_size=2, progress=False, steer_options={"when": cond & ~other}
    )
    assert engine.served_conditions == [cond, other]
    gated = [r for r in engine.rows if r.when is not None]
    assert {r.when for r in gated} == {"(c0 & ~c1)"}
    assert engines._steering(gated[0], "all")["steering_when"] == "(c0 & ~c1)"
    assert [r.vector for r in engine.rows if r.strength == 0.0] == []  # strength 0: sent unsteered
    assert answered[0][None].fired is None  # an unsteered sweep is not gated
    assert answered[1][0.5].fired == [True, False, True]
    assert answered[1][0.5].answers == ["v0@0.5", "plain", "v0@0.5"]
    assert answered[1][0.0].fired == [True, False, True]  # its prompts' decisions, from the 0.5 rows
    assert answered[1][0.0].answers == ["plain"] * 3


def test_a_sweep_at_strength_zero_alone_asks_for_decisions_it_does_not_answer_with(vector, cond):
    engine = RecordingEngine()
    sweeps = [engines.Sweep(["x1", "p2"], vector, [0.0])]
    answered = engine.answer(
        sweeps, max_new_tokens=4, batch_size=2, progress=False, steer_options={"when": cond}
    )
    assert [(r.vector, r.strength, r.when) for r in engine.rows] == [
        (None, None, None),
        (None, None, None),
        ("v0", 0.0, "c0"),
        ("v0", 0.0, "c0"),
    ]
    assert answered[0][0.0].fired == [True, False] and answered[0][0.0].answers == ["plain", "plain"]


def test_a_gated_reply_without_its_decision_is_an_engine_error(vector, cond):
    with pytest.raises(EngineError, match="without its decision"):
        RecordingEngine(report=False).answer(
            [engines.Sweep(["x"], vector, [0.5])],
            max_new_tokens=4,
            batch_size=1,
            progress=False,
            steer_options={"when": cond},
        )
    with pytest.raises(OptionError, match="when= takes an icv.Condition"):
        RecordingEngine().answer(
            [engines.Sweep(["x"], vector, [0.5])],
            max_new_tokens=4,
            batch_size=1,
            progress=False,
            steer_options={"when": "c0"},
        )
