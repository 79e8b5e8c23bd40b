"""Real steering on the embedded model: a few demos turn negative sentences positive."""

import pytest
import torch

import icv
from icv.generation import complete
from icv.prompts import cut_answer, paraphrase_prompt

pytestmark = pytest.mark.real_model

DEMOS = [
    ("The food was cold and bland.", "The food was warm and delicious."),
    ("The staff were rude to us.", "The staff were friendly to us."),
    ("I hated every minute of it.", "I loved every minute of it."),
    ("The room was dirty and small.", "The room was clean and spacious."),
    ("This is the worst service ever.", "This is the best service ever."),
    ("My order arrived late and broken.", "My order arrived early and perfect."),
]
NEGATIVE = [
    "the waiter ignored us for an hour .",
    "the pizza was soggy and cold .",
    "i will never shop here again .",
    "the manager was rude and unhelpful .",
    "our room smelled awful .",
    "the prices are a total rip off .",
]


@pytest.fixture(scope="module")
def positive(real):
    model, tok = real
    return icv.extract(model, tok, DEMOS, name="positive")


def share_positive(texts):
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return sum(analyzer.polarity_scores(t)["compound"] > 0.05 for t in texts) / len(texts)


def test_steering_turns_most_negative_sentences_positive(real, positive):
    model, tok = real
    prompts = [paraphrase_prompt(s) for s in NEGATIVE]
    both = complete(
        model,
        tok,
        prompts * 2,
        vector=positive,
        strength=[0.0] * len(prompts) + [0.07] * len(prompts),
        max_new_tokens=30,
    )
    plain = [cut_answer(t) for t in both[: len(prompts)]]
    steered = [cut_answer(t) for t in both[len(prompts) :]]
    assert share_positive(plain) <= 0.34, plain
    assert share_positive(steered) >= 0.67, steered


def test_negated_vector_pushes_the_other_way(real, positive):
    model, tok = real
    prompt = tok(paraphrase_prompt("the staff were friendly and the food was great ."), return_tensors="pt")
    good = tok(" wonderful", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        base = model(**prompt).logits[0, -1].log_softmax(-1)[good]
        with icv.steer(model, positive, strength=0.07):
            up = model(**prompt).logits[0, -1].log_softmax(-1)[good]
        with icv.steer(model, -positive, strength=0.07):
            down = model(**prompt).logits[0, -1].log_softmax(-1)[good]
    assert down < base < up


def test_save_load_round_trip_steers_identically(real, positive, tmp_path):
    model, tok = real
    path = tmp_path / "positive.safetensors"
    positive.save(path)
    loaded = icv.InContextVector.load(path)
    assert loaded.equal(positive)
    ids = tok(paraphrase_prompt("the soup was cold ."), return_tensors="pt")
    with torch.no_grad():
        with icv.steer(model, positive, strength=0.07):
            a = model(**ids).logits
        with icv.steer(model, loaded, strength=0.07):
            b = model(**ids).logits
    assert torch.equal(a, b)


def test_default_strength_visibly_steers(real, positive):
    model, tok = real
    ids = tok(paraphrase_prompt("the soup was cold ."), return_tensors="pt")
    with torch.no_grad():
        base = model(**ids).logits
        with icv.steer(model, positive):
            default = model(**ids).logits
    assert not torch.allclose(base, default)
