"""preset="paper": extraction exactly as the reference code, checked against an independent float64 port."""

import pytest
import torch
from paper_reference import clean, paper_steering, paper_vector
from tiny import ByteTokenizer, tiny_model

import icv
from icv.aggregate import pca_shift
from icv.demos import strip_special_characters

# Punctuation, apostrophes, hyphens, quotes and brackets: what the reference's cleaning deletes.
DEMO_SETS = {
    "apostrophes": [
        ("I didn't like it - at all.", "I really liked it, a lot!"),
        ("The room's view was awful...", "The room's view was lovely!"),
        ("Don't go; it's a rip-off.", "Do go: it's well-priced."),
        ("What a waste (of time)?!", "What a treat, truly."),
    ],
    "quotes": [
        ('He said "shut up", the jerk.', 'He said "please stop," kindly.'),
        ("You're an idiot -- seriously?", "You're mistaken, I think."),
        ("[Rant] this #@!% app sucks", "[Note] this app needs work"),
    ],
    "hyphens": [
        ("state-of-the-art? no - second-rate.", "state-of-the-art: yes; first-rate!"),
        ("the x-ray/scan cost $400 + tax", "the x-ray/scan cost a fair price"),
        ("a so-so, half-baked plan...", "a well-thought-out plan."),
        ("e-mail me back ASAP!!!", "e-mail me back when you can."),
        ("it's 50% off = still too much", "it's 50% off = a bargain"),
    ],
}

PROMPT = "Please paraphrase: the waiter's tone - rude!"


def _logits(model, tokenizer, text=PROMPT):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("demo_set", sorted(DEMO_SETS))
def test_paper_preset_matches_the_reference_port(family, demo_set):
    model, tok = tiny_model(family), ByteTokenizer()
    demos = DEMO_SETS[demo_set]
    vector = icv.extract(model, tok, demos, preset="paper")
    reference = paper_vector(model, tok, demos)
    for lam in (0.05, 0.12, 0.4):
        with icv.steer(model, vector, strength=lam):
            ours = _logits(model, tok)
        with paper_steering(model, [reference], [lam]):
            theirs = _logits(model, tok)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
        assert not torch.allclose(theirs, _logits(model, tok), atol=1e-3)  # it does steer


def test_the_default_differs_from_the_reference_on_punctuated_demos():
    # What the preset is for: raw text reads the final "." and keeps every apostrophe.
    model, tok = tiny_model("llama"), ByteTokenizer()
    demos = DEMO_SETS["apostrophes"]
    default = icv.extract(model, tok, demos)
    reference = paper_vector(model, tok, demos)
    with icv.steer(model, default, strength=0.4):
        ours = _logits(model, tok)
    with paper_steering(model, [reference], [0.4]):
        theirs = _logits(model, tok)
    assert (ours - theirs).abs().max() > 1e-2


def test_the_preset_is_recorded_and_survives_a_file(tmp_path):
    model, tok = tiny_model("llama"), ByteTokenizer()
    vector = icv.extract(model, tok, DEMO_SETS["quotes"], preset="paper")
    m = vector.metadata
    assert (m["preset"], m["text_cleaning"], m["pca_sign"], m["method"]) == (
        "paper",
        "reference",
        "svd_flip",
        "pca",
    )
    vector.save(tmp_path / "v.safetensors")
    assert icv.InContextVector.load(tmp_path / "v.safetensors").equal(vector)
    plain = icv.extract(model, tok, DEMO_SETS["quotes"]).metadata
    assert (plain["preset"], plain["text_cleaning"], plain["pca_sign"]) == ("", "none", "mean")


def test_the_preset_refuses_options_that_contradict_it():
    model, tok = tiny_model("llama"), ByteTokenizer()
    with pytest.raises(icv.OptionError, match="preset='paper'.*method='mean'"):
        icv.extract(model, tok, DEMO_SETS["quotes"], preset="paper", method="mean")
    with pytest.raises(icv.OptionError, match="unknown preset"):
        icv.extract(model, tok, DEMO_SETS["quotes"], preset="papr")
    # Restating what the preset does is fine.
    icv.extract(model, tok, DEMO_SETS["quotes"], preset="paper", method="pca", site="block")


def test_cleaning_matches_the_description():
    assert strip_special_characters("I didn't like it - at all.") == "I didnt like it  at all"
    assert strip_special_characters('  "Hi!" (she said) ') == "Hi she said"
    assert strip_special_characters("~!@#$%^&*()_+`-={}[]|\\:;\"'<>,.?/x") == "x"
    for source, target in (d for demos in DEMO_SETS.values() for d in demos):
        assert strip_special_characters(source) == clean(source)
        assert strip_special_characters(target) == clean(target)


def test_a_demo_that_cleans_to_nothing_is_refused():
    with pytest.raises(icv.DemoError, match="empty once punctuation"):
        icv.extract(tiny_model("llama"), ByteTokenizer(), [("?!", "ok"), ("a", "b")], preset="paper")


def test_svd_flip_sign_makes_the_largest_score_positive():
    disagreements = 0
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        shifts = torch.randn(5, 12, generator=generator, dtype=torch.float64) + 0.3
        mean = shifts.mean(dim=0)
        flip = pca_shift(shifts, "svd_flip") - mean
        scores = (shifts - mean) @ flip
        assert scores[scores.abs().argmax()] > 0
        by_mean = pca_shift(shifts, "mean") - mean
        assert torch.dot(by_mean, mean) > 0
        assert torch.allclose(flip.abs(), by_mean.abs(), atol=1e-9)  # the same component, up to sign
        disagreements += int(not torch.allclose(flip, by_mean, atol=1e-9))
    assert 0 < disagreements < 20  # the two rules disagree on some sets, not all


def test_one_demonstration_records_the_mean_it_used():
    model, tok = tiny_model("llama"), ByteTokenizer()
    with pytest.warns(UserWarning, match="one demonstration"):
        vector = icv.extract(model, tok, [("it was bad", "it was good")])
    assert vector.metadata["method"] == "mean"
    assert vector.metadata["pca_sign"] == ""
    mean = icv.extract(model, tok, [("it was bad", "it was good")], method="mean")
    assert torch.equal(vector.directions, mean.directions)


@pytest.mark.real_model
def test_paper_preset_matches_the_reference_port_on_the_real_model(real):
    model, tok = real
    demos = DEMO_SETS["apostrophes"]
    vector = icv.extract(model, tok, demos, preset="paper")
    reference = paper_vector(model, tok, demos)
    for layer in range(vector.num_layers):
        cos = torch.nn.functional.cosine_similarity(
            vector.directions[layer].double(), reference[layer], dim=0
        )
        assert cos > 0.99999, (layer, float(cos))
    with icv.steer(model, vector, strength=0.1):
        ours = _logits(model, tok)
    with paper_steering(model, [reference], [0.1]):
        theirs = _logits(model, tok)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert (ours - _logits(model, tok)).abs().max() > 0.1
