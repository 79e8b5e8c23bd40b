"""What training holds in memory: gradient checkpointing (the model's own, for the run only, the same
result), and logits only at the positions that predict a target (the same loss)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from tiny import ByteTokenizer, tiny_model
from torch import nn

import icv
from icv.checkpointing import checkpointed_layers, gradient_checkpointing
from icv.errors import OptionError
from icv.supervision import IGNORE, batch_of, encode_pairs, logits_to_keep, target_loss

train_module = importlib.import_module("icv.train")

PAIRS = [(f"{word} was bad", "ok") for word in ("food", "room", "staff", "soup", "bed", "car", "view", "tea")]
FAST = dict(level="directions", steps=4, eval_every=2, learning_rate=0.2, progress=False)


def _checkpointing_on(model) -> bool:
    """The model's own checkpointing switch, under its name in the installed transformers."""
    # transformers 5.2x renamed it (is_gradient_checkpointing warns there); the lowest supported
    # version has only the old name.
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def _enable_checkpointing(model) -> None:
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _flags(model):
    """Every checkpointable layer's own attributes: what must be as it was after training."""
    return [
        (m.training, {k: v for k, v in vars(m).items() if "checkpointing" in k})
        for m in checkpointed_layers(model)
    ]


def _layer_calls(model):
    """Counts the first decoder layer's MLP forward passes (a recompute in the backward counts too)."""
    calls = []
    handle = model.model.layers[0].mlp.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_checkpointing_recomputes_and_gives_the_same_vector():
    tok = ByteTokenizer()
    results, counts = {}, {}
    for enabled in (False, True):
        model = tiny_model("llama")
        flags = _flags(model)
        calls, handle = _layer_calls(model)
        results[enabled] = icv.train(model, tok, PAIRS, gradient_checkpointing=enabled, **FAST)
        handle.remove()
        counts[enabled] = len(calls)
        assert _flags(model) == flags and not model.training
        assert not _checkpointing_on(model)
    # One more forward of each layer per training step: the recompute in the backward pass.
    assert counts[True] == counts[False] + FAST["steps"]
    torch.testing.assert_close(results[True].directions, results[False].directions, rtol=1e-6, atol=1e-7)
    assert results[True].metadata["training"] == results[False].metadata["training"]


def test_a_models_own_checkpointing_setting_is_kept():
    tok = ByteTokenizer()
    model = tiny_model("llama")
    _enable_checkpointing(model)
    model.train()
    flags = _flags(model)
    icv.train(model, tok, PAIRS, gradient_checkpointing=True, **FAST)
    assert _flags(model) == flags and _checkpointing_on(model) and model.training


def test_flags_are_restored_when_training_fails(monkeypatch):
    tok = ByteTokenizer()
    model = tiny_model("llama")
    flags = _flags(model)
    calls = []
    real_loss = train_module.target_loss

    def failing(model, batch):
        calls.append(1)
        if len(calls) == 2:
            assert all(m.gradient_checkpointing and m.training for m in checkpointed_layers(model))
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(train_module, "target_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        icv.train(model, tok, PAIRS, gradient_checkpointing=True, **FAST)
    assert _flags(model) == flags and not _checkpointing_on(model)


def test_a_model_that_cannot_checkpoint_is_an_option_error():
    with pytest.raises(OptionError, match="gradient checkpointing"):
        with gradient_checkpointing(nn.Linear(2, 2)):
            pass
    with gradient_checkpointing(nn.Linear(2, 2), enabled=False):
        pass


def _full_loss(model, batch):
    """The loss with every position's logits (the definition)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    wanted = batch.labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), wanted.reshape(-1), ignore_index=IGNORE)


class _NoKeep(nn.Module):
    """A causal LM whose forward takes no ``logits_to_keep``: every position's logits are used."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logits_only_where_targets_are_give_the_same_loss(family):
    tok = ByteTokenizer()
    model = tiny_model(family)
    examples = encode_pairs(
        tok, [icv.Demo(s, t) for s, t in PAIRS[:3] + [("a", "much longer target text")]], 256
    )
    batch = batch_of(examples, 0, torch.device("cpu"))
    width, first = batch.labels.shape[1], min(e.start for e in examples)
    assert logits_to_keep(model, batch.labels) == width - first + 1 < width
    with torch.no_grad():
        want = _full_loss(model, batch)
        torch.testing.assert_close(target_loss(model, batch), want, rtol=1e-6, atol=1e-6)
        assert logits_to_keep(_NoKeep(model), batch.labels) == 0
        torch.testing.assert_close(target_loss(_NoKeep(model), batch), want, rtol=1e-6, atol=1e-6)


def test_train_command_takes_gradient_checkpointing(tmp_path, capsys):
    from tiny import save_tiny_llama

    from icv.cli import main

    model_dir = save_tiny_llama(tmp_path / "model")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS))
    vectors = []
    for flag in ([], ["--gradient-checkpointing"]):
        out = tmp_path / f"v{len(flag)}.safetensors"
        argv = [
            "train",
            "--demos",
            pairs,
            "--out",
            out,
            "--model",
            model_dir,
            "--steps",
            "2",
            "--quiet",
            *flag,
        ]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        vectors.append(icv.InContextVector.load(out))
    torch.testing.assert_close(vectors[1].directions, vectors[0].directions, rtol=1e-6, atol=1e-7)
