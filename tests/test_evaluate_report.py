"""Every number of the evaluation report, exactly: known answers, known scorers, every arm.

Generation is replaced by hand-written answers per arm and strength (the harness's
generation is tested in test_evaluate.py), and the scorers are plain functions of those
answers, so each column (style success, content, fluency, empty rate, prompt tokens) of
each arm has a value written out below; the JSON file, the markdown table and the plotted
points must carry the same numbers.  A new arm in ``icv.evaluate.METHODS`` fails
``test_every_arm_has_expected_numbers`` until its answers and figures are added here.
"""

from __future__ import annotations

import importlib
import json

import pytest
from tiny import ByteTokenizer, tiny_model

import icv
from icv.prompts import icl_prompt, paraphrase_prompt
from icv.scorers import FunctionScorer
from icv.sweep import Completions

# The module (``icv.evaluate`` is also the package's name for the function).
harness = importlib.import_module("icv.evaluate")
sweeps = importlib.import_module("icv.sweep")

DEMOS = [("bad day", "good day"), ("i hate it", "i love it")]
INPUTS = ["the food was cold", "slow service", "meh"]
IN_PROMPT = 1  # demonstrations written into the icl+icv prompt (icl writes both)

# (arm, strength) -> one answer per input.
ANSWERS: dict[tuple[str, float | None], list[str]] = {
    ("zero-shot", None): ["the food was cold", "", "meh"],
    ("icl", None): ["the food was good", "good service here", "  "],
    ("icv", 0.1): ["good food", "slow service", "meh good"],
    ("icv", 0.3): ["good good good good", "good", "good"],
    ("icl+icv", 0.2): ["the good food", "slow good service", ""],
    ("icl+icv", 0.4): ["good", "", ""],
    ("trained", 0.5): ["good food here", "good service", "meh"],
}

# Worked out by hand from ANSWERS with the three scorers below:
# style = share of answers with "good"; content = mean share of the source's words kept;
# words = mean number of words (the fluency column); empty = share of blank answers.
EXPECTED: dict[tuple[str, float | None], dict[str, float]] = {
    ("zero-shot", None): dict(style=0 / 3, content=(4 / 4 + 0 / 2 + 1 / 1) / 3, words=5 / 3, empty=1 / 3),
    ("icl", None): dict(style=2 / 3, content=(3 / 4 + 1 / 2 + 0 / 1) / 3, words=7 / 3, empty=1 / 3),
    ("icv", 0.1): dict(style=2 / 3, content=(1 / 4 + 2 / 2 + 1 / 1) / 3, words=6 / 3, empty=0 / 3),
    ("icv", 0.3): dict(style=3 / 3, content=0.0, words=6 / 3, empty=0 / 3),
    ("icl+icv", 0.2): dict(style=2 / 3, content=(2 / 4 + 2 / 2 + 0 / 1) / 3, words=6 / 3, empty=1 / 3),
    ("icl+icv", 0.4): dict(style=1 / 3, content=0.0, words=1 / 3, empty=2 / 3),
    ("trained", 0.5): dict(style=2 / 3, content=(1 / 4 + 1 / 2 + 1 / 1) / 3, words=6 / 3, empty=0 / 3),
}
TRAINED_NAME = "trained-here"  # the trained arm's vector, told from the icv arm's by its name


def _prompt_tokens(prompt) -> float:
    # ByteTokenizer: one token per byte of the prompt, plus BOS.
    return sum(len(prompt(x).encode("utf-8")) + 1 for x in INPUTS) / len(INPUTS)


PROMPTS = {
    "zero-shot": paraphrase_prompt,
    "icl": lambda x: icl_prompt(harness.as_demos(DEMOS), x),
    "icv": paraphrase_prompt,
    "icl+icv": lambda x: icl_prompt(harness.as_demos(DEMOS)[:IN_PROMPT], x),
    "trained": paraphrase_prompt,
}


def _arm_of(prompt: str) -> str:
    demos = prompt.count(DEMOS[0][1]) + prompt.count(DEMOS[1][1])
    return {0: "zero-shot", IN_PROMPT: "icl+icv", len(DEMOS): "icl"}[demos]


def _completions(answers: list[str]) -> Completions:
    return Completions(answers=list(answers), raw=list(answers), seconds=0.5)


@pytest.fixture
def fixed_answers(monkeypatch):
    """The harness's generation replaced by ANSWERS, looked up from each prompt and strength."""

    def generate(model, tokenizer, prompts, **_):
        arm = _arm_of(prompts[0])
        assert [paraphrase_prompt(x) if arm == "zero-shot" else PROMPTS[arm](x) for x in INPUTS] == prompts
        return _completions(ANSWERS[(arm, None)])

    def steered(model, tokenizer, vector, inputs, strengths, *, prompt, **_):
        if vector.metadata.get("name") == TRAINED_NAME:
            assert [prompt(x) for x in inputs] == [paraphrase_prompt(x) for x in INPUTS]
            return {s: _completions(ANSWERS[("trained", s)]) for s in strengths}
        arm = "icv" if _arm_of(prompt(inputs[0])) == "zero-shot" else "icl+icv"
        return {s: _completions(ANSWERS[(arm, s)]) for s in strengths}

    monkeypatch.setattr(sweeps, "generate_answers", generate)  # the transformers engine's
    monkeypatch.setattr(sweeps, "steered_answers", steered)


def _scorers():
    style = FunctionScorer("good", lambda outputs, s, r: [float("good" in o.split()) for o in outputs])
    content = FunctionScorer(
        "kept",
        lambda outputs, sources, r: [
            len(set(o.split()) & set(s.split())) / len(s.split())
            for o, s in zip(outputs, sources, strict=True)
        ],
        needs_sources=True,
    )
    words = FunctionScorer("words", lambda outputs, s, r: [float(len(o.split())) for o in outputs])
    return style, content, words


@pytest.fixture
def report(fixed_answers):
    style, content, words = _scorers()
    model = tiny_model("llama")
    trained = icv.extract(model, ByteTokenizer(), DEMOS, name=TRAINED_NAME)
    return harness.evaluate(
        model,
        ByteTokenizer(),
        DEMOS,
        INPUTS,
        style=style,
        content=content,
        scorers=[words],
        methods=harness.METHODS,
        strengths=[0.1, 0.3],
        hybrid_strengths=[0.2, 0.4],
        prompt_demos=IN_PROMPT,
        trained=trained,
        trained_strengths=[0.5],
        max_new_tokens=4,
    )


def test_every_arm_has_expected_numbers():
    assert sorted({arm for arm, _ in EXPECTED}) == sorted(harness.METHODS)


def _row(report, arm, strength):
    return next(r for r in report.results if (r.method, r.strength) == (arm, strength))


def test_the_arms_are_reported_in_order(report):
    assert [(r.method, r.strength) for r in report.results] == list(EXPECTED)


@pytest.mark.parametrize("arm, strength", list(EXPECTED))
def test_each_column_of_each_arm_is_exact(report, arm, strength):
    got, want = _row(report, arm, strength), EXPECTED[(arm, strength)]
    assert got.outputs == ANSWERS[(arm, strength)]
    assert got.style_success == pytest.approx(want["style"], abs=1e-12)
    assert got.content == pytest.approx(want["content"], abs=1e-12)
    assert got.scores["words"] == pytest.approx(want["words"], abs=1e-12)
    assert got.scores["good"] == pytest.approx(want["style"], abs=1e-12)
    assert got.scores["kept"] == pytest.approx(want["content"], abs=1e-12)
    assert got.empty == pytest.approx(want["empty"], abs=1e-12)
    assert got.prompt_tokens == pytest.approx(_prompt_tokens(PROMPTS[arm]), abs=1e-12)
    assert got.seconds == 0.5


def test_a_lower_is_better_style_counts_the_answers_without_it(fixed_answers):
    _, content, _ = _scorers()
    style = FunctionScorer(
        "bad", lambda outputs, s, r: [float("good" not in o.split()) for o in outputs], higher_is_better=False
    )
    report = harness.evaluate(
        tiny_model("llama"),
        ByteTokenizer(),
        DEMOS,
        INPUTS,
        style=style,
        content=content,
        scorers=[],
        methods=["zero-shot", "icl"],
        max_new_tokens=4,
    )
    for arm in ("zero-shot", "icl"):
        assert _row(report, arm, None).style_success == pytest.approx(
            EXPECTED[(arm, None)]["style"], abs=1e-12
        )


def test_json_markdown_and_plot_carry_the_same_numbers(report, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (drawn.append(self), save(self, *a, **k))[1])
    paths = report.save(tmp_path, stem="run")

    rows = json.loads(paths["json"].read_text())["results"]
    assert [(r["method"], r["strength"]) for r in rows] == list(EXPECTED)
    for row in rows:
        want = EXPECTED[(row["method"], row["strength"])]
        assert row["style_success"] == pytest.approx(want["style"], abs=1e-12)
        assert row["content"] == pytest.approx(want["content"], abs=1e-12)
        assert row["scores"]["words"] == pytest.approx(want["words"], abs=1e-12)
        assert row["empty"] == pytest.approx(want["empty"], abs=1e-12)
        assert row["prompt_tokens"] == pytest.approx(_prompt_tokens(PROMPTS[row["method"]]), abs=1e-12)
        assert row["outputs"] == ANSWERS[(row["method"], row["strength"])]

    lines = paths["markdown"].read_text().strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "method",
        "strength",
        "style success (good)",
        "content (kept)",
        "words",
        "empty",
        "prompt tokens",
        "seconds",
    ]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    expected_table = [
        [
            harness._trained_label(report.settings) if arm == "trained" else arm,
            "" if strength is None else f"{strength:g}",
            f"{want['style']:.3g}",
            f"{want['content']:.3g}",
            f"{want['words']:.3g}",
            f"{want['empty']:.3g}",
            f"{_prompt_tokens(PROMPTS[arm]):.1f}",
            "0.5",
        ]
        for (arm, strength), want in EXPECTED.items()
    ]
    assert table == expected_table

    (figure,) = drawn
    plotted = {line.get_label(): line.get_xydata().tolist() for line in figure.axes[0].get_lines()}

    def points(arm):
        return [[want["content"], want["style"]] for (a, _), want in EXPECTED.items() if a == arm]

    expected_points = {
        "zero-shot": points("zero-shot"),
        "ICL (demos in prompt)": points("icl"),
        "ICV (strength sweep)": points("icv"),
        "ICL + ICV (demos in prompt, strength sweep)": points("icl+icv"),
        "trained vector (icv.train)": points("trained"),
    }
    assert sorted(plotted) == sorted(expected_points)
    for label, xy in expected_points.items():
        assert sum(plotted[label], []) == pytest.approx(sum(xy, []), abs=1e-12), label
