"""Extracting a condition: directions from two sets of texts, then CAST's grid search.

Every text is read as a generation's prompt would be (:mod:`icv.gate`): tokenized with
the tokenizer's special tokens, and at every decoder layer the mean of the
unit-normalised states over its tokens.  Each set is shuffled (``seed``) and split: the
first part gives each layer's direction, ``unit(mean(matching) - mean(other))`` (or, with
``estimator="probe"``, the weights of an L2-regularised logistic regression fitted on that
part's readings); on the held-out part every layer, threshold (the midpoints between neighbouring held-out
scores) and comparison (``>``, ``<``) is tried, and the best F1 (matching = positive)
wins, ties going to the widest margin.  The F1 and the confusion counts reported are
those of the held-out part the choice was made on (CAST's grid search does the same;
judge a condition on fresh texts before trusting it in front of traffic).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .capture import pad_batch, tokenize
from .condition import ESTIMATORS, POSITIONS, Condition
from .errors import DemoError, OptionError
from .extract import max_context, model_device, pad_token_id
from .gate import read_prompt_states
from .layers import Architecture, decoder_layers
from .models import model_name_of
from .options import checked_options

# The probe's L-BFGS iterations (it converges in far fewer on readings of a few hundred texts).
_PROBE_STEPS = 500
# Beyond this the probe's weights underflow towards zero: nothing is learnt.
_MAX_L2 = 1e6
_MAX_L2_VALUES = 16
# The probe's default strengths, each tried (held-out F1 chooses): on the detox condition
# 1e-3 carried best to fresh sentences and the held-out part chose it (docs/results.md).
DEFAULT_L2 = (1e-3, 1e-2, 1e-1)


@checked_options
def extract_condition(
    model: nn.Module,
    tokenizer: Any,
    matching: Sequence[str],
    other: Sequence[str],
    *,
    name: str = "condition",
    held_out: float = 0.5,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    positions: str = "prompt_mean",
    estimator: str = "mean",
    l2: float | Sequence[float] = DEFAULT_L2,
    batch_size: int = 16,
    architecture: Architecture | None = None,
) -> Condition:
    """A condition that tells prompts like ``matching`` from prompts like ``other``.

    Present the texts the way prompts will reach the steered model (the same chat
    template, if generation uses one): the gate reads the very tokens ``generate`` gets.

    Args:
        model: the transformers causal LM (the one that will be steered).
        tokenizer: its tokenizer.
        matching: texts the condition should match (at least 2).
        other: texts it should not match (at least 2).
        name: the condition's name (its metadata; a rule's decision reports scores by it).
        held_out: the share of each set kept out of the directions, on which the layer,
            threshold and comparison are chosen (between 0 and 1, at least one text each).
        seed: how the sets are shuffled before the split.
        layers: the layers the search may choose from (default: all).
        positions: how each prompt is read: ``"prompt_mean"`` (the mean of its tokens' unit
            states, CAST's reading) or ``"prompt_last"`` (its last token's unit state, which
            sees the whole prompt; better where prompts share a long fixed instruction).
        estimator: how each layer's direction is found from the fit part: ``"mean"`` (the
            difference of the two sets' mean readings, CAST's) or ``"probe"`` (the weights
            of an L2-regularised logistic regression on the readings, a linear probe;
            :func:`probe_directions`).  Either way the layer, threshold and comparison are
            then chosen on the held-out part, and the gate reads the condition the same way.
        l2: the probe's regularisation strength (positive; only with ``estimator="probe"``),
            or a list of strengths: each is fitted and searched like the layers, and the one
            whose best held-out (F1, margin) is highest is kept (recorded as ``l2``; on a tie
            the strongest).  Default: 0.001, 0.01 and 0.1.
        batch_size: texts per forward pass.
        architecture: where the decoder layers are, for a model type the library does not know.

    Returns:
        The condition, with the held-out F1, confusion counts and each layer's best F1
        in its metadata (:attr:`icv.Condition.f1`, ``.confusion``, ``.layer_f1``).

    Raises:
        DemoError: a set with fewer than 2 texts, or a text that is not a non-empty string.
        OptionError: ``held_out`` outside (0, 1), a bad layer or batch size, an unknown
            ``positions`` or ``estimator``, an ``l2`` that is not a positive number.
    """
    matching, other = _texts(matching, "matching"), _texts(other, "other")
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)) or not 0.0 < held_out < 1.0:
        raise OptionError(f"held_out must be a share between 0 and 1, got {held_out!r:.40}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r:.40}")
    if positions not in POSITIONS:
        raise OptionError(f"unknown positions {positions!r:.30}: choose one of {', '.join(POSITIONS)}")
    if estimator not in ESTIMATORS:
        raise OptionError(f"unknown estimator {estimator!r:.30}: choose one of {', '.join(ESTIMATORS)}")
    strengths = _strengths(l2)
    num_layers = len(decoder_layers(model, architecture))
    allowed = _layers(layers, num_layers)
    rng = random.Random(seed)
    splits = [_split(texts, held_out, rng) for texts in (matching, other)]
    texts = [t for fit, test in splits for t in (*fit, *test)]
    means = _read(
        model, tokenizer, texts, num_layers, batch_size, architecture, positions
    )  # (texts, layers, hidden)
    counts = [(len(fit), len(test)) for fit, test in splits]
    parts, start = [], 0
    for fit_count, test_count in counts:
        parts.append(
            (means[start : start + fit_count], means[start + fit_count : start + fit_count + test_count])
        )
        start += fit_count + test_count
    (fit_match, test_match), (fit_other, test_other) = parts
    test = torch.cat([test_match, test_other])  # (held-out texts, layers, hidden)
    truth = torch.cat(
        [torch.ones(len(test_match), dtype=torch.bool), torch.zeros(len(test_other), dtype=torch.bool)]
    )
    # Each candidate's directions are searched on the held-out part; the best (F1, margin) wins.
    candidates: list[tuple[float | None, torch.Tensor]]
    if estimator == "probe":
        candidates = [(value, probe_directions(fit_match, fit_other, l2=value)) for value in strengths]
    else:
        candidates = [(None, fit_match.mean(0) - fit_other.mean(0))]  # (layers, hidden)
    found: tuple[tuple[float, float, int, float, str], list[float], float | None, torch.Tensor] | None = None
    for strength, shift in candidates:
        searched = _search(shift, test, truth, allowed, num_layers)
        if searched is not None and (found is None or searched[0][:2] > found[0][:2]):
            found = (*searched, strength, shift)
    if found is None:
        raise OptionError("the matching and other texts read the same at every allowed layer: no condition")
    best, layer_f1, chosen_l2, shift = found
    norms = shift.norm(dim=-1, keepdim=True)
    directions = torch.where(norms > 0, shift / norms.clamp_min(1e-12), torch.zeros_like(shift))
    scores = torch.einsum("nlh,lh->nl", test, directions)
    f1, _margin, layer, threshold, comparison = best
    predicted = scores[:, layer] > threshold if comparison == ">" else scores[:, layer] < threshold
    confusion = _confusion(predicted, truth)
    metadata = {
        "name": name,
        "model_name": model_name_of(model),
        "model_type": str(getattr(getattr(model, "config", None), "model_type", "")),
        "layer": layer,
        "threshold": threshold,
        "comparison": comparison,
        "f1": f1,
        "confusion": confusion,
        "layer_f1": layer_f1,
        "num_matching": len(matching),
        "num_other": len(other),
        "positions": positions,
        "estimator": estimator,
        "l2": chosen_l2,
    }
    return Condition(directions, metadata)


def _search(
    shift: torch.Tensor, test: torch.Tensor, truth: torch.Tensor, allowed: list[int], num_layers: int
) -> tuple[tuple[float, float, int, float, str], list[float]] | None:
    """CAST's grid on the held-out readings: the best (F1, margin, layer, threshold, comparison)
    of ``shift``'s directions, and each layer's best F1; ``None`` when every allowed layer's is zero."""
    norms = shift.norm(dim=-1, keepdim=True)
    directions = torch.where(norms > 0, shift / norms.clamp_min(1e-12), torch.zeros_like(shift))
    scores = torch.einsum("nlh,lh->nl", test, directions)
    best: tuple[float, float, int, float, str] | None = None
    layer_f1 = [0.0] * num_layers
    for layer in allowed:
        if float(norms[layer]) == 0.0:
            continue
        f1, margin, threshold, comparison = _best_split(scores[:, layer], truth)
        layer_f1[layer] = f1
        if best is None or (f1, margin) > (best[0], best[1]):
            best = (f1, margin, layer, threshold, comparison)
    return None if best is None else (best, layer_f1)


def _strengths(l2: object) -> list[float]:
    """``l2`` as a list of strengths to try, or :class:`OptionError`."""
    given = list(l2) if isinstance(l2, Sequence) and not isinstance(l2, str) else [l2]
    values = [v for v in given if not isinstance(v, bool) and isinstance(v, (int, float))]
    if (
        not 1 <= len(given) <= _MAX_L2_VALUES
        or len(values) != len(given)
        or not all(math.isfinite(v) and 0.0 < v <= _MAX_L2 for v in values)
    ):
        raise OptionError(
            f"l2 must be a positive number up to {_MAX_L2:g}, or a list of 1 to {_MAX_L2_VALUES} such "
            f"numbers, got {l2!r:.60}"
        )
    # Strongest first: on a tie the more regularised probe is kept.
    return sorted({float(v) for v in values}, reverse=True)


def probe_directions(matching: torch.Tensor, other: torch.Tensor, *, l2: float = 1e-2) -> torch.Tensor:
    """``(layers, hidden)``: per layer, the weights of an L2-regularised logistic regression.

    The linear probe of probing work: at each layer, ``sigmoid(w . x + b)`` fitted to tell
    ``matching`` (1) from ``other`` (0), each class weighted to half the loss (unequal sets
    do not tilt it), with ``l2 / 2 * |w|^2`` added.  The features are centred and scaled
    per layer so that their rows' mean squared norm is 1: the same ``l2`` means the same
    thing at every layer and on every model.  The scaling is one number per layer, so ``w``
    points the same way in the readings' own space.  Full-batch L-BFGS in float64 from
    zero weights: the objective is strictly convex, so the answer is unique and the same
    inputs give the same weights.

    Args:
        matching: ``(n1, layers, hidden)`` readings of the matching texts.
        other: ``(n0, layers, hidden)`` readings of the other texts.
        l2: the regularisation strength (positive).

    Returns:
        The weights, float32 (a layer whose readings are all equal gets zeros).
    """
    x = torch.cat([matching, other]).double().transpose(0, 1)  # (layers, n, hidden)
    positive = torch.cat([torch.ones(len(matching)), torch.zeros(len(other))]).double()
    weight = torch.where(positive > 0, 0.5 / len(matching), 0.5 / len(other))
    sign = 2 * positive - 1
    centred = x - x.mean(dim=1, keepdim=True)
    scale = centred.pow(2).sum(-1).mean(-1).sqrt()  # (layers,)
    z = torch.where(scale[:, None, None] > 0, centred / scale.clamp_min(1e-300)[:, None, None], 0.0)
    w = torch.zeros(x.shape[0], x.shape[2], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(x.shape[0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=_PROBE_STEPS,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        logits = torch.einsum("lnh,lh->ln", z, w) + b[:, None]
        value = (weight * nn.functional.softplus(-sign * logits)).sum() + l2 / 2 * w.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return w.detach().float()


def _texts(texts: object, what: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise DemoError(f"{what} must be a list of texts, not {type(texts).__name__}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DemoError(f"{what} text {bad[0]} is not a non-empty string")
    if len(texts) < 2:
        raise DemoError(f"{what} needs at least 2 texts (one to fit, one held out), got {len(texts)}")
    return list(texts)


def _layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    chosen = []
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_layers <= index < num_layers:
            raise OptionError(f"layer {index!r:.20} is out of range for a model with {num_layers} layers")
        chosen.append(index % num_layers)
    if not chosen:
        raise OptionError("layers must name at least one layer")
    return sorted(set(chosen))


def _split(texts: list[str], held_out: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """(fit, held out): shuffled, at least one text in each."""
    shuffled = list(texts)
    rng.shuffle(shuffled)
    test = min(max(1, round(len(shuffled) * held_out)), len(shuffled) - 1)
    return shuffled[: len(shuffled) - test], shuffled[len(shuffled) - test :]


def _read(
    model: nn.Module,
    tokenizer: Any,
    texts: list[str],
    num_layers: int,
    batch_size: int,
    architecture: Architecture | None,
    positions: str,
) -> torch.Tensor:
    """``(texts, layers, hidden)`` unit states, read as the gate reads a prompt."""
    ids = tokenize(tokenizer, texts, max_context(model, tokenizer))
    device, pad = model_device(model), pad_token_id(tokenizer)
    rows = []
    for start in range(0, len(ids), batch_size):
        batch = pad_batch(ids[start : start + batch_size], pad, "left", device)
        states = read_prompt_states(
            model,
            batch.input_ids,
            batch.attention_mask,
            [(positions, layer) for layer in range(num_layers)],
            position_ids=batch.position_ids,
            architecture=architecture,
        )
        rows.append(torch.stack([states[positions, layer] for layer in range(num_layers)], dim=1))
    return torch.cat(rows)


def _best_split(scores: torch.Tensor, truth: torch.Tensor) -> tuple[float, float, float, str]:
    """(F1, margin, threshold, comparison) of the best threshold on one layer's scores."""
    ordered = torch.sort(scores.double()).values
    gaps = ordered[1:] - ordered[:-1]
    # Midpoints between neighbours, and one step beyond each end.
    spread = float(ordered[-1] - ordered[0]) or 1.0
    candidates = torch.cat([ordered[:1] - spread, (ordered[1:] + ordered[:-1]) / 2, ordered[-1:] + spread])
    margins = torch.cat([torch.tensor([spread]), gaps / 2, torch.tensor([spread])])
    best = (-1.0, 0.0, 0.0, ">")
    for comparison in (">", "<"):
        predicted = scores.double()[None, :] > candidates[:, None]
        if comparison == "<":
            predicted = scores.double()[None, :] < candidates[:, None]
        tp = (predicted & truth).sum(1).double()
        fp = (predicted & ~truth).sum(1).double()
        fn = (~predicted & truth).sum(1).double()
        f1 = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))
        for i in range(len(candidates)):
            key = (float(f1[i]), float(margins[i]))
            if key > (best[0], best[1]):
                best = (key[0], key[1], float(candidates[i]), comparison)
    return best


def _confusion(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, int]:
    return {
        "tp": int((predicted & truth).sum()),
        "fp": int((predicted & ~truth).sum()),
        "tn": int((~predicted & ~truth).sum()),
        "fn": int((~predicted & truth).sum()),
    }
