"""The gate of conditional steering: each row decided once, from its prompt, at the prefill.

A forward pre-hook on the top-level model sees every call ``generate`` makes.  At a
generation's first call (its prefill: :class:`icv.positions.PositionTracker` tells it
from a decoding step) the gate reads the prompt *before* the steering touches it: it
runs the model's base (no LM head) on the call's tokens, with this steering switched
off, as far as the deepest layer a condition reads, and keeps per row the mean of the
unit-normalised decoder-layer outputs over the prompt's real tokens (the attention
mask's ones; padding never counts).  Each condition scores it on its direction, each
row's rule decides, and the answer holds for every later call of that generation: a
per-row 0/1 that multiplies the steering's position mask (hooks) or sends rejected rows
to the unsteered slot (:mod:`icv.compiled`).  A rejected row's push is exactly zero, so
it comes out bitwise equal to the unsteered model's.

The reading costs one partial forward pass over the prompt per generation (up to the
condition's layer), the same reading :func:`icv.extract_condition` made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import metadata as meta
from .condition import Condition, Rule, as_rule
from .errors import ArchitectureError, OptionError, SteeringError
from .hooks import HookHandles, output_tensor
from .layers import Architecture, decoder_layers, hidden_size_of
from .models import model_name_of
from .positions import PositionTracker

_EPS = 1e-12


class _Stop(Exception):
    """Raised after the deepest layer read: nothing after it is needed."""


def unit_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(batch, hidden)`` float32: the mean of each row's unit-normalised states where ``mask`` is 1.

    Args:
        hidden: ``(batch, length, hidden)`` activations.
        mask: ``(batch, length)`` 0/1 (the attention mask).
    """
    wide = hidden.float()
    unit = wide / wide.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    keep = mask.to(device=wide.device).bool().unsqueeze(-1)
    # where, not a product: a padded position's state may be NaN (a fully masked softmax row).
    total = torch.where(keep, unit, torch.zeros((), device=wide.device)).sum(dim=1)
    return total / keep.sum(dim=1).clamp_min(1).float()


def unit_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(batch, hidden)`` float32: each row's state at its last real token (the rightmost 1 of ``mask``), at unit length."""
    keep = mask.to(device=hidden.device).long()
    last = keep.shape[1] - 1 - keep.flip(1).argmax(dim=1)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    return picked / picked.norm(dim=-1, keepdim=True).clamp_min(_EPS)


# How a prompt is read at a layer (a condition's ``positions``).
READINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "prompt_mean": unit_mean,
    "prompt_last": unit_last,
}


def _accepts_position_ids(module: nn.Module) -> bool:
    import inspect

    try:
        return "position_ids" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def read_prompt_means(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    layers: Sequence[int],
    **options: Any,
) -> dict[int, torch.Tensor]:
    """Per layer in ``layers``, ``(batch, hidden)`` float32 CPU: each row's mean unit state over its real tokens."""
    states = read_prompt_states(
        model, input_ids, attention_mask, [("prompt_mean", l) for l in layers], **options
    )
    return {layer: states["prompt_mean", layer] for layer in layers}


@torch.no_grad()
def read_prompt_states(
    model: nn.Module,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    readings: Sequence[tuple[str, int]],
    *,
    inputs_embeds: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    architecture: Architecture | None = None,
) -> dict[tuple[str, int], torch.Tensor]:
    """Per ``(reading, layer)`` in ``readings``, ``(batch, hidden)`` float32 CPU: each row's prompt read so.

    ``"prompt_mean"``: the mean of the unit-normalised states over the row's real tokens;
    ``"prompt_last"``: the unit state at its last real token.  Runs the model's base
    (``model.base_model``: no LM head, no cache), stopping after the deepest layer.  Left
    or right padding both work (padding is masked out, and out of the positions through
    ``position_ids``).
    """
    layers = [layer for _, layer in readings]
    tokens = input_ids if input_ids is not None else inputs_embeds
    if tokens is None:
        raise SteeringError("the gate needs the prompt's input_ids (or inputs_embeds) to decide its rows")
    batch, length = int(tokens.shape[0]), int(tokens.shape[1])
    if attention_mask is None or attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, length):
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=tokens.device)
    modules = decoder_layers(model, architecture)
    wanted = sorted(set(layers))
    deepest = wanted[-1]
    states: dict[tuple[str, int], torch.Tensor] = {}
    kinds = {layer: sorted({kind for kind, l in readings if l == layer}) for layer in wanted}

    def reader(layer: int) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            hidden = output_tensor(output)
            for kind in kinds[layer]:
                states[kind, layer] = READINGS[kind](hidden, attention_mask).cpu()
            if layer == deepest:
                raise _Stop

        return hook

    base = getattr(model, "base_model", model)
    base = base if isinstance(base, nn.Module) else model
    kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
    if _accepts_position_ids(base):
        if position_ids is None or tuple(position_ids.shape[-2:]) != (batch, length):
            position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)
        kwargs["position_ids"] = position_ids
    if input_ids is not None:
        kwargs["input_ids"] = input_ids
    else:
        kwargs["inputs_embeds"] = inputs_embeds
    handles = HookHandles()
    try:
        for layer in wanted:
            handles.add(modules[layer].register_forward_hook(reader(layer)))
        with contextlib.suppress(_Stop):
            base(**kwargs)
    finally:
        handles.remove()
    if not any(layer == deepest for _, layer in states):
        raise ArchitectureError(
            "the gate's reading pass did not reach the condition's layer: the architecture's "
            "paths do not match how this model runs"
        )
    return states


def readings_of(conditions: Sequence[Condition]) -> list[tuple[str, int]]:
    """What ``conditions`` read: each one's ``(positions, layer)``, once."""
    return sorted({(c.positions, c.layer) for c in conditions})


def scores_of(
    conditions: Sequence[Condition], states: dict[tuple[str, int], torch.Tensor]
) -> dict[Condition, torch.Tensor]:
    """Each condition's ``(batch,)`` scores: its reading of the prompt on its unit direction."""
    return {c: states[c.positions, c.layer] @ c.direction for c in conditions}


def check_condition_fits(model: nn.Module, condition: Condition, num_layers: int | None = None) -> None:
    """Raise :class:`ModelMismatchError` unless ``condition`` was made on a model of this shape."""
    model_meta = {
        "hidden_size": hidden_size_of(model),
        "num_layers": num_layers if num_layers is not None else len(decoder_layers(model)),
        "model_type": str(getattr(getattr(model, "config", None), "model_type", "")),
        "model_name": model_name_of(model),
    }
    meta.check_same_model(condition.metadata, model_meta, what=f"condition '{condition.name}' and this model")


@dataclass(frozen=True)
class Decision:
    """How a gated steering decided the rows of its latest generation.

    Attributes:
        fired: per batch row, whether it is steered (the rows ``generate`` ran: with
            ``num_return_sequences`` or beams, each prompt's copies).
        scores: per condition name, each row's score (every condition the gate reads is
            scored on every row).
    """

    fired: list[bool]
    scores: dict[str, list[float]]

    @property
    def count(self) -> int:
        """How many rows fired."""
        return sum(self.fired)


class Gate:
    """Decides, at each generation's prefill, which rows a steering acts on.

    Args:
        model: the model (the conditions are checked against it).
        when: one rule for every row, or one per prompt row (``None``: that row always steered).
        num_layers: the model's decoder depth.
        architecture: the layer paths, for a model type the library does not know.
    """

    def __init__(
        self,
        model: nn.Module,
        when: Rule | Sequence[Rule | None],
        num_layers: int,
        architecture: Architecture | None,
    ) -> None:
        if isinstance(when, Rule):
            rules: list[Rule | None] = [when]
        elif isinstance(when, Sequence) and not isinstance(when, str) and len(when) > 0:
            rules = [None if w is None else as_rule(w) for w in when]
            if all(r is None for r in rules):
                raise OptionError("when= names no condition: give at least one row a condition")
        else:
            rules = [as_rule(when)]
        self.rules = rules
        seen: dict[int, Condition] = {}
        for rule in rules:
            for condition in [] if rule is None else rule.conditions:
                seen.setdefault(id(condition), condition)
        self.conditions = list(seen.values())
        for condition in self.conditions:
            check_condition_fits(model, condition, num_layers)
        self.architecture = architecture
        self.calls = PositionTracker("prompt")
        self.deciding = False  # True during the reading pass: the steering's hooks stand aside
        self.decision: Decision | None = None
        self._fired: torch.Tensor | None = None  # (batch,) float 0/1
        self._cast: dict[tuple, torch.Tensor] = {}

    def describe(self) -> str:
        if len(self.rules) == 1:
            return self.rules[0].describe()  # type: ignore[union-attr]  # one rule is never None
        return "[" + ", ".join("always" if r is None else r.describe() for r in self.rules) + "]"

    def observe(
        self, model: nn.Module, args: tuple, kwargs: dict[str, Any], quiet: Callable[[], None] | None = None
    ) -> None:
        """Before each call: at a prefill, read the prompt and decide each row.

        ``quiet`` is called before the reading pass (the compiled engine sends every row to
        its unsteered slot there).
        """
        self.calls.observe(model, args, kwargs)
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        tokens = ids if isinstance(ids, torch.Tensor) else embeds
        if not isinstance(tokens, torch.Tensor) or tokens.dim() < 2:
            return
        batch = int(tokens.shape[0])
        if not self.calls.new_prompt:
            if self._fired is not None and self._fired.shape[0] != batch:
                raise SteeringError(
                    f"the gate decided {self._fired.shape[0]} rows at the prefill, but this call has "
                    f"{batch}: start a new generation"
                )
            return
        if batch % len(self.rules):
            raise SteeringError(
                f"when= gave {len(self.rules)} per-row rules, but the batch has {batch} rows: give one per prompt"
            )
        if quiet is not None:
            quiet()
        self._fired, self._cast = None, {}
        self.deciding = True
        try:
            states = read_prompt_states(
                model,
                ids if isinstance(ids, torch.Tensor) else None,
                kwargs.get("attention_mask"),
                readings_of(self.conditions),
                inputs_embeds=embeds if not isinstance(ids, torch.Tensor) else None,
                position_ids=kwargs.get("position_ids"),
                architecture=self.architecture,
            )
        finally:
            self.deciding = False
        scores = scores_of(self.conditions, states)
        self._fired = self._decide(scores, batch).float()
        self.decision = Decision(
            fired=[bool(f) for f in self._fired.tolist()],
            scores=_named_scores(self.conditions, scores),
        )

    def _decide(self, scores: dict[Condition, torch.Tensor], batch: int) -> torch.Tensor:
        repeats = batch // len(self.rules)
        fired = torch.zeros(batch, dtype=torch.bool)
        for index, rule in enumerate(self.rules):
            rows = slice(index * repeats, (index + 1) * repeats)
            if rule is None:
                fired[rows] = True
            else:
                fired[rows] = rule.evaluate({c: s[rows] for c, s in scores.items()})
        return fired

    @property
    def fired(self) -> torch.Tensor:
        """``(batch,)`` float 0/1 of the current generation (all 0 before any prefill was seen)."""
        if self._fired is None:
            return torch.zeros(self.calls.batch)
        return self._fired

    def mask_for(self, x: torch.Tensor) -> torch.Tensor:
        """The per-row 0/1 as ``(batch, 1, 1)`` on ``x``'s device and dtype."""
        key = (x.device, x.dtype)
        mask = self._cast.get(key)
        if mask is None:
            fired = self.fired
            if fired.shape[0] != x.shape[0]:
                raise SteeringError(
                    f"the gate decided {fired.shape[0]} rows, but an activation has {x.shape[0]}"
                )
            mask = self._cast[key] = fired.to(x.device, x.dtype).view(-1, 1, 1)
        return mask


def _named_scores(
    conditions: list[Condition], scores: dict[Condition, torch.Tensor]
) -> dict[str, list[float]]:
    named: dict[str, list[float]] = {}
    for condition in conditions:
        name, n = condition.name, 2
        while name in named:
            name, n = f"{condition.name}#{n}", n + 1
        named[name] = [float(s) for s in scores[condition].tolist()]
    return named
