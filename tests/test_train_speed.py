"""A smoke test of benchmarks/train_speed.py: it runs on a tiny model and gives positive numbers."""

from __future__ import annotations

import sys
from pathlib import Path

from tiny import DEMOS, ByteTokenizer, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import train_speed  # noqa: E402


def test_train_speed_measures_positive_times():
    figures = train_speed.measure(tiny_model("llama"), ByteTokenizer(), list(DEMOS) * 2, "coefficients", 2)
    assert figures["forward"] > 0 and figures["step"] > 0 and figures["train"] > 0
    assert 1 <= figures["steps"] <= 2


def test_the_baseline_arm_trains_the_same_vector_with_the_old_loss():
    compared = train_speed.against_baseline(
        tiny_model("llama"), ByteTokenizer(), list(DEMOS) * 2, "directions", 3
    )
    old, new = compared["records"]["old"], compared["records"]["new"]
    assert old["steps"] == new["steps"] == 3
    for key in ("train_loss_before", "train_loss_after", "held_out_loss_before", "held_out_loss_after"):
        assert abs(old[key] - new[key]) < 1e-5 * abs(old[key]), key
    assert len(compared["seconds"]["old"]) == len(compared["seconds"]["new"]) == 2


def test_train_speed_times_the_objective_it_is_given(monkeypatch):
    seen = []
    real = train_speed.icv.train

    def spy(*args, **options):
        seen.append(options["objective"])
        return real(*args, **options)

    monkeypatch.setattr(train_speed.icv, "train", spy)
    train_speed.measure(tiny_model("llama"), ByteTokenizer(), list(DEMOS) * 2, "directions", 2, "preference")
    assert seen == ["preference", "preference"]
