"""ClassifierScorer: any Hugging Face text-classification model as a style scorer (a tiny random BERT, saved)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import char_tokenizer, save_tiny_llama
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from icv.cli import main
from icv.errors import OptionError, ScorerError
from icv.scorers import ClassifierScorer

LABELS = {0: "informal", 1: "formal", 2: "neutral"}


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=128,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


TEXTS = ["Dear Sir, I write to inform you.", "hey what's up lol", "ok", "The meeting is at noon."]


def reference(folder, texts):
    """The label probabilities by the model itself, one text at a time (no padding)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return [torch.softmax(model(**tok(t, return_tensors="pt")).logits[0], -1) for t in texts]


def test_the_probability_is_the_models_own_for_the_label(classifier_folder):
    scorer = ClassifierScorer(classifier_folder, "formal", batch_size=3)
    want = [float(p[1]) for p in reference(classifier_folder, TEXTS)]
    assert scorer.probability(TEXTS) == pytest.approx(want, abs=1e-5)


def test_an_output_counts_when_the_label_is_the_top_one(classifier_folder):
    probs = reference(classifier_folder, TEXTS)
    for label, index in (("formal", 1), ("informal", 0), ("neutral", 2)):
        values = ClassifierScorer(classifier_folder, label).score(TEXTS)
        assert values == [float(int(p.argmax()) == index) for p in probs]
    # Every text has exactly one top label.
    by_label = [ClassifierScorer(classifier_folder, label).score(TEXTS) for label in LABELS.values()]
    assert [sum(column) for column in zip(*by_label, strict=True)] == [1.0] * len(TEXTS)


def test_with_a_threshold_the_labels_probability_decides(classifier_folder):
    probs = [float(p[1]) for p in reference(classifier_folder, TEXTS)]
    cut = sorted(probs)[1]
    values = ClassifierScorer(classifier_folder, "formal", threshold=cut).score(TEXTS)
    assert values == [float(p > cut) for p in probs]
    assert sum(values) == 2


def test_an_empty_output_is_not_in_the_style(classifier_folder):
    scorer = ClassifierScorer(classifier_folder, "formal", threshold=0.0)
    assert scorer.score(["", "Dear Sir"])[0] == 0.0
    assert math.isnan(scorer.probability([" "])[0])


def test_an_unknown_label_names_the_models_labels(classifier_folder):
    with pytest.raises(OptionError, match="formal, informal, neutral"):
        ClassifierScorer(classifier_folder, "Formal").score(TEXTS)


def test_a_missing_model_is_a_scorer_error(tmp_path):
    with pytest.raises(ScorerError, match="cannot load the classifier"):
        ClassifierScorer(tmp_path / "absent", "formal").score(TEXTS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_length": True}, "max_length"),
    ],
)
def test_bad_options_are_refused(classifier_folder, options, message):
    with pytest.raises(OptionError, match=message):
        ClassifierScorer(classifier_folder, "formal", **options)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--style", "formal English"], "the built-in styles are"),
        (["--style-model", "x"], "--style-model and --style-label go together"),
        (["--style-model", "x", "--style-label", "y", "--judge-url", "http://h/v1"], "not both"),
        (["--style", "formal", "--judge-url", "http://h/v1"], "--judge-url and --judge-model go together"),
        (["--style", "positive", "--style-threshold", "0.5"], "--style-threshold is for --style-model"),
        ([], "--style is needed"),
    ],
)
def test_icv_eval_says_which_style_options_go_together(tmp_path, capsys, extra, message):
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the food was cold\n")
    code = main(["eval", "--inputs", str(inputs), "--methods", "zero-shot", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_icv_eval_scores_the_style_with_the_classifier(classifier_folder, tmp_path, capsys):
    import json

    from tiny import DEMOS

    folder = tmp_path / "model"
    save_tiny_llama(folder)
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in DEMOS))
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the food was cold\ni hated it\n")
    out = tmp_path / "report"
    argv = ["eval", "--model", folder, "--demos", demos, "--inputs", inputs, "--methods", "zero-shot"]
    options = ["--style-model", classifier_folder, "--style-label", "formal", "--no-fluency"]
    code = main([str(a) for a in [*argv, *options, "--max-new-tokens", "4", "--out", out, "--quiet"]])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    (result,) = report["results"]
    want = ClassifierScorer(classifier_folder, "formal").score(result["outputs"])
    assert report["style"] == "formal"
    assert result["style_success"] == pytest.approx(sum(want) / len(want))


def test_icv_calibrate_scores_the_style_with_the_classifier(classifier_folder, tmp_path, capsys):
    import json

    from tiny import DEMOS

    import icv

    folder = tmp_path / "model"
    save_tiny_llama(folder)
    model, tok = icv.load_model(folder)
    vector = tmp_path / "warm.safetensors"
    icv.extract(model, tok, DEMOS, progress=False).save(vector)
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("the food was cold\ni hated it\n")
    report = tmp_path / "calibration.json"
    argv = ["calibrate", vector, "--model", folder, "--inputs", inputs, "--strengths", "0.3"]
    options = [
        "--style-model",
        classifier_folder,
        "--style-label",
        "formal",
        "--no-fluency",
        "--min-content",
        "0",
    ]
    code = main([str(a) for a in [*argv, *options, "--max-new-tokens", "4", "--report", report, "--quiet"]])
    assert code == 0, capsys.readouterr().err
    got = json.loads(report.read_text())
    _, want = icv.calibrate(
        model,
        tok,
        icv.InContextVector.load(vector),
        ["the food was cold", "i hated it"],
        style=ClassifierScorer(classifier_folder, "formal"),
        strengths=[0.3],
        min_content=0.0,
        max_perplexity_ratio=None,
        max_new_tokens=4,
        progress=False,
    )
    assert got["style"] == "formal"
    assert [p["style_success"] for p in got["points"]] == [p.style_success for p in want.points]
    assert got["baseline"]["style_success"] == want.baseline.style_success
