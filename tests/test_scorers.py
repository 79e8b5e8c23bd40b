"""Scorers on tiny hand-made inputs whose answers are known."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from tiny import VOCAB, ByteTokenizer, tiny_model

from icv.errors import OptionError, ScorerError
from icv.scorers import (
    BleuScorer,
    FunctionScorer,
    OffensiveScorer,
    PerplexityScorer,
    RepetitionScorer,
    SentimentScorer,
    SimilarityScorer,
    fluency_model_for,
    repeated_ngram_share,
    score_all,
    success_rate,
)


def test_sentiment_counts_positive_outputs():
    scorer = SentimentScorer("positive")
    assert scorer.score(
        ["The food was wonderful and the staff were lovely.", "The food was awful.", "It is a table."]
    ) == [1.0, 0.0, 0.0]
    assert scorer.higher_is_better and scorer.name == "positive"


def test_sentiment_direction_can_be_reversed():
    scorer = SentimentScorer("negative")
    assert scorer.score(["The food was wonderful.", "The food was awful and I hated it."]) == [0.0, 1.0]
    with pytest.raises(OptionError):
        SentimentScorer("happy")


def test_sentiment_threshold_is_configurable():
    text = ["It was okay."]
    compound = SentimentScorer().compound(text)[0]
    assert SentimentScorer(threshold=compound - 0.01).score(text) == [1.0]
    assert SentimentScorer(threshold=compound + 0.01).score(text) == [0.0]


def test_offensive_language_is_flagged():
    pytest.importorskip("profanity_check")
    scorer = OffensiveScorer()
    assert scorer.score(["you are a fucking idiot", "thank you for your help, have a nice day"]) == [1.0, 0.0]
    assert not scorer.higher_is_better
    assert success_rate(scorer, [1.0, 0.0, 0.0, 0.0]) == 0.75


def test_missing_optional_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # makes `import profanity_check` fail
    with pytest.raises(ScorerError, match="alt-profanity-check"):
        OffensiveScorer().score(["hello"])


def test_similarity_of_identical_and_unrelated_sentences():
    scorer = SimilarityScorer()
    same = "The waiter brought our food quickly."
    values = scorer.score(
        [same, "The server brought our meal fast.", "Quantum chromodynamics describes the strong force."],
        sources=[same, same, same],
    )
    assert values[0] == pytest.approx(1.0, abs=1e-5)
    assert values[1] > 0.6
    assert values[2] < 0.2


def test_similarity_needs_aligned_sources():
    scorer = SimilarityScorer()
    with pytest.raises(OptionError, match="needs sources"):
        scorer.score(["a"])
    with pytest.raises(OptionError, match="1 sources for 2 outputs"):
        scorer.score(["a", "b"], sources=["a"])
    against_refs = SimilarityScorer(against="references")
    assert against_refs.score(["a cat"], references=["a cat"])[0] == pytest.approx(1.0, abs=1e-5)


def test_bleu_against_references():
    scorer = BleuScorer()
    outputs = ["the food was great and the staff were kind .", "completely different words here"]
    references = ["the food was great and the staff were kind .", "nothing in common at all , really"]
    values = scorer.score(outputs, references=references)
    assert values[0] == pytest.approx(100.0)
    assert values[1] < 5.0
    corpus = scorer.summary(values, outputs, references=references)
    assert 0.0 < corpus < 100.0
    with pytest.raises(OptionError, match="needs references"):
        scorer.score(outputs)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every next token equally likely
        if getattr(model.lm_head, "bias", None) is not None:
            model.lm_head.bias.zero_()
    scorer = PerplexityScorer(model, ByteTokenizer(), batch_size=2)
    values = scorer.score(["hello there", "a much longer sentence than the first", "", "x"])
    assert values[0] == pytest.approx(VOCAB, rel=1e-4)
    assert values[1] == pytest.approx(VOCAB, rel=1e-4)
    assert math.isnan(values[2])  # empty output: undefined
    assert values[3] == pytest.approx(VOCAB, rel=1e-4)  # BOS + one token
    assert scorer.summary(values, ["hello there"] * 4) == pytest.approx(VOCAB, rel=1e-4)


def test_perplexity_summary_is_the_geometric_mean():
    scorer = PerplexityScorer(tiny_model("llama"), ByteTokenizer())
    assert scorer.summary([2.0, 8.0, math.nan], ["a", "b", ""]) == pytest.approx(4.0)
    with pytest.raises(OptionError):
        PerplexityScorer(tiny_model("llama"), None)


def test_perplexity_batching_does_not_change_values():
    model, tok = tiny_model("llama"), ByteTokenizer()
    texts = ["short", "a somewhat longer text", "mid length"]
    one = PerplexityScorer(model, tok, batch_size=1).score(texts)
    many = PerplexityScorer(model, tok, batch_size=3).score(texts)
    assert one == pytest.approx(many, rel=1e-4)


def test_repetition_share():
    assert repeated_ngram_share("a b c a b c a b c", 3) == pytest.approx(1 - 3 / 7)
    assert repeated_ngram_share("every word here is different", 3) == 0.0
    assert repeated_ngram_share("too short", 3) == 0.0
    scorer = RepetitionScorer(1)
    assert scorer.score(["great great great great"]) == [0.75]
    assert scorer.name == "repetition_1gram" and not scorer.higher_is_better
    with pytest.raises(OptionError):
        RepetitionScorer(0)


def test_function_scorer_and_score_all():
    length = FunctionScorer("length", lambda outputs, sources, references: [len(o) for o in outputs])
    assert length.score(["ab", "abcd"]) == [2.0, 4.0]
    bad = FunctionScorer("bad", lambda outputs, sources, references: [1.0])
    with pytest.raises(ScorerError, match="1 values for 2 outputs"):
        bad.score(["a", "b"])
    results = score_all([length], ["ab", "abcd"])
    assert results == {"length": ([2.0, 4.0], 3.0)}
    with pytest.raises(OptionError, match="unique"):
        score_all([length, length], ["a"])
    with pytest.raises(OptionError, match="not one string"):
        length.score("abc")


def test_fluency_judge_is_never_the_steered_model():
    assert fluency_model_for(tiny_model("llama")) == "gemma3-270m"
    assert fluency_model_for(tiny_model("gemma3_text")) == "smollm2"


@pytest.mark.real_model
def test_gemma_perplexity_prefers_fluent_text():
    scorer = PerplexityScorer()
    fluent, salad = scorer.score(
        [
            "The service was friendly and the food arrived quickly.",
            "food the quickly was arrived service and friendly the",
        ]
    )
    assert 1.0 < fluent < salad
