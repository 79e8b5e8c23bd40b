"""ICL + ICV: the demonstrations in the prompt and as the vector, in evaluation and calibration."""

from __future__ import annotations

import importlib
import json
import warnings

import pytest
from evaluation_fakes import DEMOS, INPUTS, DecodingTokenizer, overlap, vowels

import icv
from icv.errors import OptionError
from icv.evaluate import evaluate
from icv.generation import complete
from icv.prompts import cut_answer
from icv.storage import load_vector

calibration = importlib.import_module("icv.calibrate")  # icv.calibrate is the function
sweeps = importlib.import_module("icv.sweep")
# The ICL prompt written out by hand (not by icv.prompts), so a change of the hybrid's prompt shows.
HEAD = "Please paraphrase the following sentence.\n"
SHOTS = [
    ' Original: "bad day"; Paraphrased: "good day"\n',
    ' Original: "i hate it"; Paraphrased: "i love it"\n',
]


@pytest.fixture
def tok():
    return DecodingTokenizer()


def by_hand(text: str, shots: int = 2) -> str:
    return HEAD + "".join(SHOTS[:shots]) + f' Original: "{text}"; Paraphrased: "'


def hybrid_report(model, tok, **options):
    options = {
        "style": vowels(),
        "content": overlap(),
        "scorers": [],
        "max_new_tokens": 6,
        "batch_size": 6,
        **options,
    }
    return evaluate(model, tok, DEMOS, INPUTS, **options)


def test_the_hybrid_steers_the_icl_prompt(llama, tok):
    vector = icv.extract(llama, tok, DEMOS)
    # Additive steering: on this tiny model a rotation barely moves a prompt this long.
    report = hybrid_report(
        llama, tok, vector=vector, methods=["icl", "icl+icv"], hybrid_strengths=[0.0, 0.5], mode="add"
    )
    assert [r.label for r in report.results] == ["icl", "icl+icv @ 0", "icl+icv @ 0.5"]
    icl = report.result("icl")
    # Strength 0 steers nothing: the hybrid's prompt is then exactly ICL's.
    assert report.result("icl+icv", 0.0).outputs == icl.outputs
    assert report.result("icl+icv", 0.5).prompt_tokens == icl.prompt_tokens
    # At 0.5 it is the hand-written ICL prompt generated under icv.steer.
    with icv.steer(llama, vector, 0.5, mode="add"):
        expected = complete(llama, tok, [by_hand(x) for x in INPUTS], max_new_tokens=6, batch_size=6)
    steered = report.result("icl+icv", 0.5).outputs
    assert steered == [cut_answer(text) for text in expected]
    assert steered != icl.outputs  # the steering is applied
    assert report.settings["hybrid_strengths"] == [0.0, 0.5] and report.settings["hybrid_prompt_demos"] == 2


def test_prompt_demos_writes_only_the_first_ones_into_the_prompt(llama, tok):
    vector = icv.extract(llama, tok, DEMOS)
    one = hybrid_report(
        llama, tok, vector=vector, methods=["icl+icv"], hybrid_strengths=[0.5], prompt_demos=1
    )
    with icv.steer(llama, vector, 0.5):
        expected = complete(llama, tok, [by_hand(x, shots=1) for x in INPUTS], max_new_tokens=6, batch_size=6)
    assert one.result("icl+icv", 0.5).outputs == [cut_answer(text) for text in expected]
    assert one.result("icl+icv", 0.5).prompt_tokens == sum(len(by_hand(x, 1)) + 1 for x in INPUTS) / 3
    zero = hybrid_report(
        llama, tok, vector=vector, methods=["icv", "icl+icv"], strengths=[0.5], prompt_demos=0
    )
    assert zero.result("icl+icv", 0.5).outputs == zero.result("icv", 0.5).outputs  # no demos: ICV's prompt


def test_the_report_has_the_arm_in_json_markdown_and_plot(llama, tok, tmp_path):
    report = hybrid_report(llama, tok, methods=["zero-shot", "icl", "icv", "icl+icv"], strengths=[0.1, 0.3])
    labels = [r.label for r in report.results]
    assert labels == ["zero-shot", "icl", "icv @ 0.1", "icv @ 0.3", "icl+icv @ 0.1", "icl+icv @ 0.3"]
    paths = report.save(tmp_path, stem="run")
    data = json.loads(paths["json"].read_text())
    assert [row["method"] for row in data["results"]][-2:] == ["icl+icv", "icl+icv"]
    assert set(data["results"][-1]) == set(data["results"][0])  # one more arm, the same fields
    lines = paths["markdown"].read_text().splitlines()
    assert len(lines) == 2 + len(labels)
    hybrid_row = next(line for line in lines if line.startswith("| icl+icv | 0.3 |"))
    assert hybrid_row.count("|") == lines[0].count("|")  # the same columns, prompt tokens included
    assert f"| {report.result('icl').prompt_tokens:.1f} |" in hybrid_row
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_recommended_strength_joins_the_arm_it_was_calibrated_for(llama, tok):
    vector = icv.extract(llama, tok, DEMOS)
    for with_demos, marked, other in ((2, "icl+icv", "icv"), (0, "icv", "icl+icv"), (None, "icv", "icl+icv")):
        calibrated = vector.with_metadata(recommended_strength=0.06, calibrated_with_demos=with_demos)
        report = hybrid_report(
            llama, tok, vector=calibrated, methods=["icv", "icl+icv"], max_new_tokens=2, batch_size=16
        )
        strengths = {m: [r.strength for r in report.results if r.method == m] for m in ("icv", "icl+icv")}
        assert strengths[marked] == [0.03, 0.05, 0.06, 0.07, 0.09]
        assert strengths[other] == [0.03, 0.05, 0.07, 0.09]
        table = report.markdown()
        assert f"| {marked} | 0.06 (recommended) |" in table and table.count("(recommended)") == 1


def test_bad_hybrid_options(llama, tok):
    for bad in (3, -1, True, 1.0):
        with pytest.raises(OptionError, match="prompt_demos"):
            hybrid_report(llama, tok, methods=["icl+icv"], prompt_demos=bad)
    with pytest.raises(OptionError, match="demos are needed"):
        evaluate(
            llama,
            tok,
            None,
            INPUTS,
            style=vowels(),
            vector=icv.extract(llama, tok, DEMOS),
            methods=["icl+icv"],
        )
    with pytest.raises(OptionError, match="repeat"):
        hybrid_report(llama, tok, methods=["icl+icv"], hybrid_strengths=[0.1, 0.1])


# -- calibration for the hybrid's prompt -----------------------------------------------


def test_calibration_with_demos_sweeps_the_icl_prompt_and_records_the_form(llama, tok, monkeypatch):
    seen = []
    real = sweeps.steered_answers

    def spy(model, tokenizer, vector, inputs, strengths, *, prompt, **options):
        seen.append([prompt(x) for x in inputs])
        return real(model, tokenizer, vector, inputs, strengths, prompt=prompt, **options)

    monkeypatch.setattr(sweeps, "steered_answers", spy)
    vector = icv.extract(llama, tok, DEMOS)
    options = {
        "style": vowels(),
        "content": overlap(),
        "strengths": [0.1],
        "min_content": 0.0,
        "max_new_tokens": 3,
    }
    hybrid = icv.calibrate(llama, tok, vector, INPUTS, demos=DEMOS, **options).vector
    assert seen[-1] == [by_hand(x) for x in INPUTS]
    assert hybrid.metadata["calibrated_with_demos"] == 2 and hybrid.recommended_strength == 0.1
    alone = icv.calibrate(llama, tok, vector, INPUTS, **options).vector
    assert alone.metadata["calibrated_with_demos"] == 0
    own = icv.calibrate(llama, tok, vector, INPUTS, prompt=lambda x: x, **options).vector
    assert own.metadata["calibrated_with_demos"] is None  # a prompt of one's own: form unknown
    with pytest.raises(OptionError, match="not both"):
        icv.calibrate(llama, tok, vector, INPUTS, demos=DEMOS, prompt=lambda x: x, **options)


def test_prompt_form_mismatch_is_said_only_when_known_and_different(llama, tok):
    vector = icv.extract(llama, tok, DEMOS, name="pos")
    mismatch = calibration.prompt_form_mismatch
    assert mismatch(vector, 8) is None  # never calibrated
    assert mismatch(vector.with_metadata(recommended_strength=0.05, calibrated_with_demos=None), 8) is None
    zero_shot = vector.with_metadata(recommended_strength=0.05, calibrated_with_demos=0)
    assert mismatch(zero_shot, 0) is None
    text = mismatch(zero_shot, 8)
    assert (
        "'pos' was calibrated with no demonstrations in the prompt and is used with 8 demonstrations" in text
    )
    assert "too strong" in text
    with_one = vector.with_metadata(recommended_strength=0.03, calibrated_with_demos=1)
    assert "with 1 demonstration in the prompt" in mismatch(with_one, 0) and "too weak" in mismatch(
        with_one, 0
    )


def test_the_form_survives_saving_and_agreeing_sums(llama, tok, tmp_path):
    vector = icv.extract(llama, tok, DEMOS).with_metadata(recommended_strength=0.05, calibrated_with_demos=4)
    vector.save(tmp_path / "v.safetensors")
    assert load_vector(tmp_path / "v.safetensors").metadata["calibrated_with_demos"] == 4
    other = icv.extract(llama, tok, [("no", "yes"), ("bad", "good")]).with_metadata(recommended_strength=0.05)
    assert (vector + vector).metadata["calibrated_with_demos"] == 4
    assert (vector + other).metadata["calibrated_with_demos"] is None  # the parts disagree: unknown
    with pytest.raises(OptionError, match="calibrated_with_demos"):
        vector.with_metadata(calibrated_with_demos=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known key: no "unknown metadata" warning on load
        load_vector(tmp_path / "v.safetensors")
