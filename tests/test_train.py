"""icv.train: trained vectors lower their objective, stay in the file format, leave the model as it was."""

from __future__ import annotations

import importlib
import math
import warnings

import pytest
import torch
from tiny import ByteTokenizer, tiny_model

import icv
from icv import distill, inject, preference, supervision
from icv.errors import DemoError, ModelMismatchError, OptionError, SteeringError
from icv.extract import model_device
from icv.prompts import icl_prompt
from icv.supervision import Example, encode_pairs, mean_loss
from icv.trainable import TrainableRows, add, rotate

train_module = importlib.import_module("icv.train")

# Every target is the same answer: a vector can learn it, and held-out sources test whether it did.
PAIRS = [(f"{word} was bad", "ok") for word in ("food", "room", "staff", "soup", "bed", "car", "view", "tea")]
FAST = dict(steps=12, eval_every=3, patience=4, learning_rate=0.2, progress=False)


@pytest.fixture
def tok():
    return ByteTokenizer()


def _held_out_loss(model, tok, vector, pairs, strength=None):
    examples = encode_pairs(tok, [icv.Demo(s, t) for s, t in pairs], 256)
    with icv.steer(model, vector, strength):
        return mean_loss(model, examples, 0, model_device(model), 8)


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def _no_hooks(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules()
    )


@pytest.mark.parametrize("level", ["coefficients", "directions"])
def test_trained_vector_lowers_the_held_out_loss(tok, level):
    model = tiny_model("llama")
    vec = icv.train(model, tok, PAIRS, level=level, **FAST)
    record = vec.metadata["training"]
    assert record["level"] == level and record["objective"] == "teacher"
    assert record["pairs"] == 8 and record["held_out_pairs"] == 2
    assert record["held_out_loss_after"] < record["held_out_loss_before"]
    # Measured independently, through icv.steer, on pairs training never saw.
    unseen = [("the bread was stale", "ok"), ("music too loud", "ok")]
    start = icv.extract(model, tok, [PAIRS[i] for i in range(8)], progress=False)
    assert _held_out_loss(model, tok, vec, unseen) < _held_out_loss(
        model, tok, start, unseen, record["strength"]
    )


def test_steer_applies_what_training_measured(tok):
    """The held-out loss recorded is the loss under icv.steer(model, vec) with no strength: the
    recommended strength is the trained one, and no DefaultStrengthWarning is raised."""
    model = tiny_model("llama")
    vec = icv.train(model, tok, PAIRS, level="directions", **FAST)
    assert vec.recommended_strength == vec.metadata["training"]["strength"]
    held = [p for p in PAIRS if p not in _fit_pairs(vec)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = _held_out_loss(model, tok, vec, held)
    assert loss == pytest.approx(vec.metadata["training"]["held_out_loss_after"], rel=1e-6)


def _fit_pairs(vec):
    fit, _ = train_module._split(len(PAIRS), 0.25, vec.metadata["training"]["seed"])
    return [PAIRS[i] for i in fit]


@pytest.mark.parametrize("mode", ["rotate", "add"])
def test_differentiable_injections_match_icv_inject(mode):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    d = torch.randn(16) * 0.3
    if mode == "rotate":
        expected = inject.rotate(x.clone(), d, inject.away_directions(d))
        got = rotate(x, d)
    else:
        expected, got = inject.add(x, d), add(x, d)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    zero = torch.zeros(16)
    torch.testing.assert_close(rotate(x, zero), x)


def test_coefficients_change_nothing_but_the_row_sizes(tok):
    model = tiny_model("llama")
    start = icv.extract(model, tok, PAIRS, progress=False, recommended_strength=0.3)
    vec = icv.train(model, tok, PAIRS, init=start, level="coefficients", **FAST)
    factors = vec.directions.norm(dim=-1) / start.directions.norm(dim=-1)
    assert not torch.allclose(factors, torch.ones_like(factors))  # it did train
    torch.testing.assert_close(vec.directions, start.directions * factors[:, None], rtol=1e-5, atol=1e-6)
    assert torch.equal(vec.layer_scales, start.layer_scales)
    torch.testing.assert_close(vec.shifts, start.shifts * factors[:, None], rtol=1e-5, atol=1e-5)
    changed = {k for k, v in vec.metadata.items() if start.metadata.get(k) != v}
    assert changed == {"method", "training", "calibrated_with_demos"}
    assert vec.recommended_strength == 0.3


def test_directions_level_keeps_uncovered_layers_zero(tok):
    model = tiny_model("llama")
    start = icv.extract(model, tok, PAIRS, progress=False).only_layers([1])
    vec = icv.train(model, tok, PAIRS, init=start, level="directions", **FAST)
    assert vec.layers == [1]
    assert torch.equal(vec.directions[[0, 2]], torch.zeros(2, vec.hidden_size))
    assert not torch.equal(vec.directions[1], start.directions[1])
    assert vec.shifts is None  # a fitted direction has no shift at its own size


def test_same_seed_same_file_bytes(tok, tmp_path):
    files = []
    for run in range(2):
        vec = icv.train(tiny_model("llama"), tok, PAIRS, level="directions", seed=3, **FAST)
        path = tmp_path / f"run{run}.safetensors"
        vec.save(path)
        files.append(path.read_bytes())
    assert files[0] == files[1]
    other = icv.train(tiny_model("llama"), tok, PAIRS, level="directions", seed=4, **FAST)
    assert other.metadata["training"]["seed"] == 4
    assert not torch.equal(
        other.directions, icv.InContextVector.load(tmp_path / "run0.safetensors").directions
    )


def test_trained_file_round_trips_and_exports_to_gguf(tok, tmp_path):
    model = tiny_model("llama")
    vec = icv.train(model, tok, PAIRS, level="directions", injection_mode="add", **FAST)
    path = tmp_path / "trained.safetensors"
    vec.save(path)
    back = icv.InContextVector.load(path)
    assert back.equal(vec)
    assert back.metadata["training"] == vec.metadata["training"]
    folder = vec.save_pretrained(tmp_path / "hub")
    assert icv.InContextVector.from_pretrained(folder).equal(vec)
    card = (folder / "README.md").read_text()
    assert f"| training | directions by teacher, {vec.metadata['training']['steps']} steps on 8 pairs" in card
    icv.export_gguf(vec, tmp_path / "trained.gguf")
    imported = icv.import_gguf(tmp_path / "trained.gguf", model=model)
    # GGUF stores the pushes at the recommended strength (llama.cpp has no layer 0 row for some
    # exporters; compare the layers both carry).
    pushes = vec.directions * vec.layer_scales[:, None] * vec.recommended_strength
    got = imported.directions * imported.layer_scales[:, None] * imported.recommended_strength
    covered = got.norm(dim=-1) > 0
    torch.testing.assert_close(got[covered], pushes[covered], rtol=1e-5, atol=1e-6)
    # Arithmetic: a sum is not "trained", so its record is dropped.
    assert (vec + vec).metadata["training"] is None


def test_model_is_bitwise_unchanged_after_training(tok):
    model = tiny_model("llama")
    model.lm_head.weight.requires_grad_(False)  # a mix, restored as it was
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _snapshot(model)
    model.train()
    icv.train(model, tok, PAIRS, level="directions", **FAST)
    assert model.training  # mode restored
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _no_hooks(model) and not icv.is_steered(model)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_model_is_left_clean_when_training_is_interrupted(tok, monkeypatch, error):
    model = tiny_model("llama")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _snapshot(model)
    calls = []
    real_loss = train_module.target_loss

    def failing(model, batch):
        calls.append(1)
        if len(calls) == 2:  # inside the loop, with the hooks on and gradients flowing
            raise error("stop")
        return real_loss(model, batch)

    monkeypatch.setattr(train_module, "target_loss", failing)
    with pytest.raises(error):
        icv.train(model, tok, PAIRS, level="coefficients", **FAST)
    assert _no_hooks(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_bad_input_raises_icv_errors(tok):
    model = tiny_model("llama")
    with pytest.raises(DemoError, match="no demonstrations"):
        icv.train(model, tok, [], progress=False)
    with pytest.raises(DemoError, match="pair 1: prompt and target are"):
        icv.train(model, tok, [("a", "b"), ("x" * 300, "y")], progress=False)
    with pytest.raises(DemoError, match="max_tokens"):
        icv.train(model, tok, PAIRS, max_tokens=10, progress=False)
    other = tiny_model("gpt2")
    foreign = icv.extract(other, tok, PAIRS, progress=False)
    with pytest.raises(ModelMismatchError):
        icv.train(model, tok, PAIRS, init=foreign, progress=False)
    with pytest.raises(OptionError, match="unknown level"):
        icv.train(model, tok, PAIRS, level="weights")
    with pytest.raises(OptionError, match="unknown objective"):
        icv.train(model, tok, PAIRS, objective="rl")
    for bad in (dict(steps=0), dict(learning_rate=-1.0), dict(held_out=1.0), dict(seed=1.5)):
        with pytest.raises(OptionError):
            icv.train(model, tok, PAIRS, **bad)
    with pytest.raises(icv.UnknownOptionError):
        icv.train(model, tok, PAIRS, epochs=3)
    start = icv.extract(model, tok, PAIRS, progress=False)
    with icv.steer(model, start, 0.1), pytest.raises(SteeringError, match="steered"):
        icv.train(model, tok, PAIRS, progress=False)
    assert _no_hooks(model)


def test_one_pair_trains_without_early_stopping(tok):
    model = tiny_model("llama")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vec = icv.train(model, tok, PAIRS[:1], level="coefficients", steps=3, progress=False)
    record = vec.metadata["training"]
    assert record["held_out_pairs"] == 0 and record["held_out_loss_after"] is None
    assert record["steps"] == 3 and record["train_loss_after"] < record["train_loss_before"]


def test_progress_bar_shows_and_is_silenced(tok, capsys):
    model = tiny_model("llama")
    icv.train(model, tok, PAIRS, steps=2, progress=True)
    assert "icv: training" in capsys.readouterr().err
    icv.train(model, tok, PAIRS, steps=2, progress=False)
    assert "icv: training" not in capsys.readouterr().err


def test_trainable_rows_penalty_is_zero_at_the_start():
    base = torch.randn(3, 8)
    for level in ("coefficients", "directions"):
        rows = TrainableRows(base, level, torch.tensor([True, False, True]))
        assert float(rows.penalty().detach()) == 0.0
        assert torch.equal(rows.rows(), base)


def test_training_record_must_be_plain_values(tok):
    vec = icv.extract(tiny_model("llama"), tok, PAIRS, progress=False)
    for bad in ({}, {"steps": [1, 2]}, {"loss": float("nan")}, {"ok": True}):
        with pytest.raises(OptionError, match="training"):
            vec.with_metadata(training=bad)
    assert vec.with_metadata(training={"steps": 3, "level": "directions"}).metadata["training"]["steps"] == 3


# -- distillation: the unsteered model's own in-context distribution as the target ------------

DISTILL = dict(FAST, objective="distillation")


@pytest.mark.parametrize("level", ["coefficients", "directions"])
def test_distillation_lowers_its_objective_on_held_out_pairs(tok, level):
    model = tiny_model("llama")
    vec = icv.train(model, tok, PAIRS, level=level, **DISTILL)
    record = vec.metadata["training"]
    assert record["objective"] == "distillation" and record["level"] == level
    assert (record["teacher_demos"], record["teacher_top_k"]) == (distill.TEACHER_DEMOS, distill.TOP_K)
    assert record["held_out_loss_after"] < record["held_out_loss_before"]
    assert record["train_loss_after"] < record["train_loss_before"]
    # Measured again outside training, through icv.steer, on the held-out pairs' own teachers.
    _, held = train_module._split(len(PAIRS), 0.25, 0)
    soft = _soft_targets(model, tok, held)
    with icv.steer(model, vec):
        after = distill.mean_distillation_loss(model, soft, 0, model_device(model), 8)
    assert after == pytest.approx(record["held_out_loss_after"], rel=1e-5)


def _soft_targets(model, tok, indices):
    pairs = [icv.Demo(s, t) for s, t in PAIRS]
    students = encode_pairs(tok, pairs, 256)
    fit, _ = train_module._split(len(PAIRS), 0.25, 0)
    teachers = distill.teacher_examples(tok, pairs, students, fit, 0, 256)
    soft = distill.soft_targets(model, students, teachers, 0, model_device(model), 8)
    return [soft[i] for i in indices]


def test_distillation_teacher_is_the_unsteered_model_with_training_pairs_in_the_prompt(tok, monkeypatch):
    model = tiny_model("llama")
    seen = []
    real = train_module.soft_targets

    def spy(model, students, teachers, *args):
        seen.append((teachers, real(model, students, teachers, *args)))
        return seen[-1][1]

    monkeypatch.setattr(train_module, "soft_targets", spy)
    # A start at a strength that changes the model's output a lot: if the teacher were steered,
    # its targets would differ from the plain model's.
    start = icv.extract(model, tok, PAIRS, progress=False, recommended_strength=0.9)
    icv.train(model, tok, PAIRS, init=start, level="directions", **DISTILL)
    ((teachers, soft),) = seen
    fit, held = train_module._split(len(PAIRS), 0.25, 0)
    for query, (teacher, target) in enumerate(zip(teachers, soft, strict=True)):
        # The in-context prompt of icv's ICL arm, with training pairs other than the query.
        chosen = distill.teacher_demos(distill.TEACHER_DEMOS, query, fit, 0)
        assert query not in chosen and not set(chosen) & set(held) and chosen
        demos = [icv.Demo(*PAIRS[i]) for i in chosen]
        # The context (256 bytes) takes only some of them: the first m, m >= 1.
        prompt = list(teacher.ids[: teacher.start])
        assert any(
            prompt == tok(icl_prompt(demos[:m], PAIRS[query][0]))["input_ids"]
            for m in range(1, len(demos) + 1)
        )
        # Same target tokens as the student's zero-shot example.
        assert teacher.ids[teacher.start :] == target.example.ids[target.example.start :]
        # The plain model's logits on that prompt, computed here without any hook.
        with torch.no_grad():
            logits = model(torch.tensor([teacher.ids])).logits[0, teacher.start - 1 : -1].float()
        top = torch.log_softmax(logits, -1).topk(distill.TOP_K)
        torch.testing.assert_close(target.logp, top.values, rtol=1e-5, atol=1e-5)
    assert _no_hooks(model) and not icv.is_steered(model)


def test_distillation_needs_two_training_pairs(tok):
    model = tiny_model("llama")
    with pytest.raises(DemoError, match="at least two training pairs"):
        icv.train(model, tok, PAIRS[:2], objective="distillation", progress=False)
    with pytest.raises(OptionError, match="unknown objective 'teacher_forcing'"):
        icv.train(model, tok, PAIRS, objective="teacher_forcing", progress=False)
    assert _no_hooks(model)


def test_distillation_coarsened_kl_is_zero_at_the_teacher_and_positive_elsewhere():
    torch.manual_seed(0)
    logits = torch.randn(3, 40)
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(5)

    class Fixed(torch.nn.Module):
        def __init__(self, values):
            super().__init__()
            self.values = values

        def forward(self, input_ids, attention_mask=None):
            class Out:
                pass

            out = Out()
            out.logits = self.values.expand(input_ids.shape[0], -1, -1)
            return out

    example = distill.SoftExample(Example((1, 2, 3, 4), 1), top.indices, top.values)
    padded = torch.cat([logits, torch.zeros(1, 40)])[None]  # position t predicts token t + 1
    same = distill.distillation_loss(Fixed(padded), [example], 0, torch.device("cpu"))
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    other = distill.distillation_loss(Fixed(padded.flip(-1)), [example], 0, torch.device("cpu"))
    assert float(other) > 0.1


def test_model_is_bitwise_unchanged_after_distillation(tok):
    model = tiny_model("llama")
    model.lm_head.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = _snapshot(model)
    icv.train(model, tok, PAIRS, level="coefficients", **DISTILL)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _no_hooks(model) and not icv.is_steered(model)


# -- preference: each target preferred over its source copied out unchanged -------------------

PREFER = dict(FAST, objective="preference")


@pytest.mark.parametrize("level", ["coefficients", "directions"])
def test_preference_lowers_its_objective_on_held_out_pairs(tok, level):
    model = tiny_model("llama")
    before = _snapshot(model)
    vec = icv.train(model, tok, PAIRS, level=level, beta=0.5, **PREFER)
    record = vec.metadata["training"]
    assert (record["objective"], record["level"], record["beta"]) == ("preference", level, 0.5)
    assert record["held_out_loss_after"] < record["held_out_loss_before"]
    assert record["train_loss_after"] < record["train_loss_before"]
    # Measured again outside training, through icv.steer, with the plain model as the reference.
    _, held = train_module._split(len(PAIRS), 0.25, 0)
    items = _preference_items(model, tok, held)
    with icv.steer(model, vec):
        after = preference.mean_preference_loss(model, items, 0, model_device(model), 8, 0.5)
    assert after == pytest.approx(record["held_out_loss_after"], rel=1e-5)
    assert all(torch.equal(before[k], v) for k, v in _snapshot(model).items())
    assert _no_hooks(model) and not icv.is_steered(model)


def _preference_items(model, tok, indices):
    pairs = [icv.Demo(*PAIRS[i]) for i in indices]
    chosen = encode_pairs(tok, pairs, 256)
    rejected = preference.rejected_examples(tok, pairs, 256)
    return preference.preference_examples(model, chosen, rejected, 0, model_device(model), 8)


def test_preference_rejects_the_source_and_its_reference_is_the_plain_model(tok):
    model = tiny_model("llama")
    (item,) = _preference_items(model, tok, [0])
    source, target = PAIRS[0]
    assert item.chosen.ids[: item.chosen.start] == item.rejected.ids[: item.rejected.start]
    assert item.chosen.ids[item.chosen.start :] == tuple(
        tok(f'{target}"', add_special_tokens=False)["input_ids"]
    )
    assert item.rejected.ids[item.rejected.start :] == tuple(
        tok(f'{source}"', add_special_tokens=False)["input_ids"]
    )
    device = model_device(model)
    with torch.no_grad():
        logp = supervision.target_logprobs(
            model, supervision.batch_of([item.chosen, item.rejected], 0, device)
        )
    assert item.reference == pytest.approx(float(logp[0] - logp[1]), rel=1e-6)
    # Unsteered, the margin is zero: the DPO term is log 2, and the rest is the target's cross-entropy.
    with torch.no_grad():
        loss = preference.preference_loss(model, [item], 0, device, 0.1)
        teacher = supervision.target_loss(model, supervision.batch_of([item.chosen], 0, device))
    assert float(loss) == pytest.approx(math.log(2) + float(teacher), rel=1e-5)


def test_preference_term_is_carried_by_what_the_answers_do_not_share(tok):
    """Where the target is its source, the DPO term stays log 2 however the model is steered:
    it rewards nothing that copying gives."""
    model = tiny_model("llama")
    device = model_device(model)
    pairs = [icv.Demo("the soup was cold", "the soup was cold")]
    (example,) = encode_pairs(tok, pairs, 256)
    (item,) = preference.preference_examples(
        model, [example], preference.rejected_examples(tok, pairs, 256), 0, device, 8
    )
    start = icv.extract(model, tok, PAIRS, progress=False)
    with icv.steer(model, start, 0.5), torch.no_grad():
        loss = preference.preference_loss(model, [item], 0, device, 0.1)
        teacher = supervision.target_loss(model, supervision.batch_of([example], 0, device))
    assert float(loss) == pytest.approx(math.log(2) + float(teacher), rel=1e-5)


def test_preference_beta_is_checked(tok):
    model = tiny_model("llama")
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(OptionError, match="beta"):
            icv.train(model, tok, PAIRS, beta=bad, **PREFER)
    assert _no_hooks(model)
