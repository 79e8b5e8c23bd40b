"""Gradient checkpointing for training a vector: the model's own, switched on for the run only.

A backward pass to a vector injected at every layer keeps every layer's activations; for a
large model and long pairs that, not the vector, is the memory.  Hugging Face decoder layers
(``transformers.modeling_layers.GradientCheckpointingLayer``) can recompute their forward
pass in the backward instead.  They do so when their ``gradient_checkpointing`` flag is set
and the layer itself is in training mode; :func:`gradient_checkpointing` sets both on the
layers alone (``layer.training``, not ``layer.train()``: dropout and the rest of the model
stay in eval mode) with the non-reentrant checkpoint (no input hook needed, and forward hooks
inside a layer, the vector's among them, run again in the recompute with the same values),
and puts every flag back as it found it, whatever happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import OptionError

_FUNC = "_gradient_checkpointing_func"
_MISSING = object()


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The model's modules that can checkpoint themselves (Hugging Face decoder layers)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block the model's layers recompute their activations in the backward pass.

    Args:
        model: a transformers model whose decoder layers support gradient checkpointing.
        enabled: ``False``: do nothing (the block runs as it would).

    Raises:
        OptionError: the model has no layer that can checkpoint itself.
    """
    if not enabled:
        yield
        return
    layers = checkpointed_layers(model)
    if not layers:
        raise OptionError(
            f"{type(model).__name__} has no layers that support gradient checkpointing (transformers' "
            "GradientCheckpointingLayer): train without gradient_checkpointing"
        )
    # Each layer's own attributes as they were (absent: the class default is read).
    saved = [
        (m, m.training, {k: m.__dict__.get(k, _MISSING) for k in ("gradient_checkpointing", _FUNC)})
        for m in layers
    ]
    try:
        for layer in layers:
            setattr(layer, "gradient_checkpointing", True)  # noqa: B010 (nn.Module types it as a Tensor | Module)
            setattr(layer, _FUNC, partial(checkpoint, use_reentrant=False))
            layer.training = True  # the layer's own flag only: its submodules keep theirs
        yield
    finally:
        for layer, training, attributes in saved:
            layer.training = training
            for key, value in attributes.items():
                if value is _MISSING:
                    layer.__dict__.pop(key, None)
                else:
                    setattr(layer, key, value)
