"""The probe estimator of ``icv.extract_condition``: a logistic-regression direction per layer.

On synthetic readings the probe separates a set the mean difference cannot (shared noise
along the signal's axis); on a tiny model it is chosen with ``estimator="probe"``, recorded
in the condition's metadata, saved and loaded, reproducible, read by the gate as any
condition is; bad values are icv errors (on the call, on the command line, in a file).
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from steering_reference import hook_count
from tiny import ByteTokenizer, save_tiny_llama, tiny_model

import icv
from icv import condition as condition_file
from icv.cli import main
from icv.condition import Condition
from icv.condition_search import probe_directions

MATCHING = ["aaaa bbb", "aaa aa", "a a a a", "aaaaaa", "aa aaaa", "aaa", "ab aa", "aaaab"]
OTHER = ["zzz yy", "zz zzz", "z z z", "zzzzzz y", "yy zz", "zzz", "zy zz", "zzzzy"]


def noisy_sets(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 2, 4)`` readings of two kinds at 2 "layers": a small signal on axis 0, buried in
    noise that axes 0 and 1 share (so axis 0 minus axis 1 separates; the means' difference,
    along axis 0, does not)."""
    generator = torch.Generator().manual_seed(seed)

    def kind(sign: float) -> torch.Tensor:
        shared = 3.0 * torch.randn(n, 2, generator=generator)
        x = 0.05 * torch.randn(n, 2, 4, generator=generator)
        x[:, :, 0] += shared + sign * 0.5
        x[:, :, 1] += shared
        return x

    return kind(1.0), kind(-1.0)


def accuracy(direction: torch.Tensor, matching: torch.Tensor, other: torch.Tensor) -> float:
    """The best accuracy of a threshold on the scores along ``direction``."""
    scores = torch.cat([matching @ direction, other @ direction])
    truth = torch.cat([torch.ones(len(matching)), torch.zeros(len(other))]).bool()
    best = 0.0
    for threshold in scores.tolist():
        for predicted in (scores > threshold, scores <= threshold):
            best = max(best, float((predicted == truth).float().mean()))
    return best


def test_the_probe_separates_what_the_mean_difference_cannot():
    fit_match, fit_other = noisy_sets(40, seed=0)
    test_match, test_other = noisy_sets(200, seed=1)
    probe = probe_directions(fit_match, fit_other, l2=1e-3)
    mean = fit_match.mean(0) - fit_other.mean(0)
    assert probe.shape == (2, 4) and probe.dtype == torch.float32
    for layer in range(2):
        assert accuracy(probe[layer], test_match[:, layer], test_other[:, layer]) == 1.0
        assert accuracy(mean[layer], test_match[:, layer], test_other[:, layer]) < 0.8
        # It points from other to matching: matching texts score higher.
        assert float((test_match[:, layer] @ probe[layer]).mean()) > float(
            (test_other[:, layer] @ probe[layer]).mean()
        )


def test_the_probe_is_deterministic_and_regularised():
    fit_match, fit_other = noisy_sets(30, seed=2)
    first = probe_directions(fit_match, fit_other, l2=1e-2)
    assert torch.equal(first, probe_directions(fit_match, fit_other, l2=1e-2))
    # More regularisation, smaller weights; a layer whose readings are all equal gets zeros.
    assert float(probe_directions(fit_match, fit_other, l2=10.0).norm()) < float(first.norm())
    flat_match, flat_other = fit_match.clone(), fit_other.clone()
    flat_match[:, 1], flat_other[:, 1] = 0.25, 0.25
    assert torch.count_nonzero(probe_directions(flat_match, flat_other)[1]) == 0


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def probe(model):
    return icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, name="a", estimator="probe", l2=0.1)


def test_extraction_with_the_probe_separates_and_records_it(model, probe):
    assert probe.f1 == 1.0 and probe.estimator == "probe"
    assert probe.metadata["estimator"] == "probe" and probe.metadata["l2"] == 0.1
    mean = icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, name="a")
    assert mean.estimator == "mean" and mean.metadata["l2"] is None
    # Not the mean difference's directions.
    assert not torch.allclose(
        torch.nn.functional.normalize(probe.directions, dim=-1),
        torch.nn.functional.normalize(mean.directions, dim=-1),
        atol=1e-3,
    )


def test_several_strengths_are_chosen_on_the_held_out_part(model, probe):
    """Each strength is searched like a layer; the best held-out (F1, margin) is kept and recorded."""
    many = icv.extract_condition(
        model, ByteTokenizer(), MATCHING, OTHER, name="a", estimator="probe", l2=[10.0, 0.1, 1.0]
    )
    assert many.metadata["l2"] in (10.0, 0.1, 1.0) and many.f1 == 1.0
    alone = {
        value: icv.extract_condition(
            model, ByteTokenizer(), MATCHING, OTHER, name="a", estimator="probe", l2=value
        )
        for value in (10.0, 0.1, 1.0)
    }
    chosen = alone[many.metadata["l2"]]
    assert torch.equal(many.directions, chosen.directions) and many.threshold == chosen.threshold
    assert all(c.f1 <= many.f1 for c in alone.values())
    # The default tries 0.001, 0.01 and 0.1.
    default = icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, estimator="probe")
    assert default.metadata["l2"] in (0.001, 0.01, 0.1)


def test_same_seed_same_file_and_the_file_round_trips(model, probe, tmp_path):
    again = icv.extract_condition(
        model, ByteTokenizer(), MATCHING, OTHER, name="a", estimator="probe", l2=0.1
    )
    # (safetensors writes the header's keys in no fixed order: compare what the file holds)
    assert torch.equal(again.directions, probe.directions) and again.metadata == probe.metadata
    other_seed = icv.extract_condition(
        model, ByteTokenizer(), MATCHING, OTHER, name="a", estimator="probe", l2=0.1, seed=1
    )
    assert not torch.equal(other_seed.directions, probe.directions)
    path = tmp_path / "a.condition.safetensors"
    probe.save(path)
    back = Condition.load(path)
    assert back.estimator == "probe" and back.metadata == probe.metadata
    assert torch.equal(back.directions, probe.directions)
    # with_threshold keeps how the directions were made.
    assert probe.with_threshold(0.0).estimator == "probe"


def test_the_gate_reads_a_probe_condition_as_any_other(model, probe):
    """The steering's decision is the condition's own threshold on the gate's reading."""
    from icv.gate import read_prompt_means

    vec = icv.extract(model, ByteTokenizer(), [("aaa", "zzz"), ("aa a", "zz z")])
    prompts = ["aaaa a", "zz zzzzzz", "aa", "z zz"]
    batch = ByteTokenizer().batch(prompts, side="left")
    means = read_prompt_means(model, batch["input_ids"], batch["attention_mask"], [probe.layer])
    with icv.steer(model, vec, 1.0, when=probe) as steering:
        model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=0)
    scores = means[probe.layer] @ probe.direction
    assert steering.decision.scores["a"] == pytest.approx(scores.tolist(), abs=1e-5)
    assert steering.decision.fired == probe.matches(scores).tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    "options",
    [
        {"estimator": "lda"},
        {"estimator": None},
        {"estimator": "probe", "l2": 0.0},
        {"estimator": "probe", "l2": -1.0},
        {"estimator": "probe", "l2": float("nan")},
        {"estimator": "probe", "l2": float("inf")},
        {"estimator": "probe", "l2": True},
        {"estimator": "probe", "l2": "0.1"},
        {"estimator": "probe", "l2": []},
        {"estimator": "probe", "l2": [0.1, 0.0]},
        {"estimator": "probe", "l2": [0.1] * 17},
    ],
)
def test_bad_estimator_options_are_refused(model, options):
    with pytest.raises(icv.OptionError, match="estimator|l2"):
        icv.extract_condition(model, ByteTokenizer(), MATCHING, OTHER, **options)
    assert hook_count(model) == 0


# -- the file ----------------------------------------------------------------------------------


def edited(data: bytes, key: str, value: str | None) -> bytes:
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    if value is None:
        header["__metadata__"].pop(key, None)
    else:
        header["__metadata__"][key] = value
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("estimator", "lda", "estimator"),
        ("l2", "0", "l2"),
        ("l2", "-0.5", "l2"),
        ("l2", "NaN", "finite"),
        ("l2", '"x"', "JSON|l2"),
    ],
)
def test_bad_estimator_metadata_in_a_file_is_refused(probe, key, value, match):
    with pytest.raises(icv.VectorFileError, match=match):
        condition_file.from_bytes(edited(condition_file.to_bytes(probe), key, value), source="test")


def test_a_file_without_an_estimator_reads_as_the_mean_difference(probe):
    data = edited(edited(condition_file.to_bytes(probe), "estimator", None), "l2", None)
    assert condition_file.from_bytes(data, source="test").estimator == "mean"


# -- the command line ----------------------------------------------------------------------------


def test_icv_condition_takes_the_estimator(tmp_path, capsys):
    save_tiny_llama(tmp_path / "model")
    (tmp_path / "a.txt").write_text("\n".join(MATCHING))
    (tmp_path / "z.txt").write_text("\n".join(OTHER))
    common = ["condition", "--matching", str(tmp_path / "a.txt"), "--other", str(tmp_path / "z.txt")]
    common += ["--model", str(tmp_path / "model"), "--quiet"]
    out = tmp_path / "a.condition.safetensors"
    assert main([*common, "--out", str(out), "--estimator", "probe", "--l2", "0.5"]) == 0
    cond = Condition.load(out)
    assert cond.estimator == "probe" and cond.metadata["l2"] == 0.5
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "b"), "--estimator", "probe", "--l2", "-1"]) == 1
    assert "l2" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "c"), "--estimator", "lda"]) == 2
    assert "invalid choice: 'lda'" in capsys.readouterr().err
