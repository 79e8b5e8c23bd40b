"""Training: fit an in-context vector to its pairs by gradient steps, and keep the file format.

Extraction reads a vector in one pass; training then fits it to what the pairs ask for:
the targets given the zero-shot prompt (teacher forcing, the prompt :func:`icv.evaluate`
steers), with an L2 term that holds it near where it started, on a training part of the
pairs, stopped early on a held-out part; or (``objective="distillation"``, :mod:`icv.distill`)
the unsteered model's own in-context distribution on those targets; or
(``objective="preference"``, :mod:`icv.preference`) each target preferred over its source
copied out unchanged, which does not reward copying where the rewrites are minimal edits.  The model is only
read: its parameters get no gradient, their ``requires_grad`` and the model's train/eval
mode are restored, and the hooks come off whatever happens (an error, Ctrl-C).

The result is an ordinary :class:`icv.InContextVector` (directions, layer scales, shifts)
that recommends the strength it was trained at, so ``icv.steer(model, trained)`` applies
exactly what training fitted; arithmetic, files, both serving engines, the compiled path
and GGUF export take it unchanged.  ``metadata["training"]`` records what was done.
"""

from __future__ import annotations

import math
import numbers
import random
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpointing import gradient_checkpointing as checkpointing
from .demos import as_demos, demos_sha256
from .distill import (
    TEACHER_DEMOS,
    TOP_K,
    SoftExample,
    distillation_loss,
    mean_distillation_loss,
    soft_targets,
    teacher_examples,
)
from .errors import OptionError, SteeringError
from .extract import extract, max_context, model_device, pad_token_id
from .layers import Architecture, decoder_layers, site_modules
from .options import checked_options
from .preference import (
    BETA,
    PreferenceExample,
    mean_preference_loss,
    preference_examples,
    preference_loss,
    rejected_examples,
)
from .prompts import paraphrase_prompt
from .steer import check_vector_fits, is_steered, steer
from .strength import planned_strength
from .supervision import batch_of, encode_pairs, mean_loss, target_loss
from .trainable import LEVELS, TrainableRows, TrainingHooks
from .vector import InContextVector

OBJECTIVES = ("teacher", "distillation", "preference")
# Per level: (steps, learning rate, L2 weight).  Factors near 1 move by tenths; offsets are
# in units of a unit direction row, so they take smaller steps and a firmer hold.  The
# coefficients' 40 steps at 0.1: on the 8 hand-written Yelp demos the held-out loss was best
# at step 35 (1.397), lower than 60 steps at 0.05 reached (1.426, still falling slowly);
# docs/benchmarks.md section 11.1.
LEVEL_DEFAULTS: dict[str, tuple[int, float, float]] = {
    "coefficients": (40, 0.1, 0.01),
    "directions": (120, 0.01, 0.1),
}
# The prompt form training fits the vector for, recorded with the pairs' fingerprint.
PROMPT_FORM = paraphrase_prompt("{text}")


@checked_options
def train(
    model: nn.Module,
    tokenizer: Any,
    demos: Iterable[object],
    *,
    init: InContextVector | None = None,
    level: str = "coefficients",
    objective: str = "teacher",
    strength: float | None = None,
    steps: int | None = None,
    learning_rate: float | None = None,
    regularization: float | None = None,
    beta: float = BETA,
    held_out: float = 0.25,
    eval_every: int = 5,
    patience: int = 3,
    batch_size: int = 8,
    seed: int = 0,
    injection_mode: str = "rotate",
    max_tokens: int | None = None,
    name: str | None = None,
    progress: bool | None = None,
    architecture: Architecture | None = None,
    gradient_checkpointing: bool = False,
) -> InContextVector:
    """Fit an in-context vector to ``demos`` by gradient steps; the model is left as it was.

    Args:
        model: the transformers causal LM the vector steers (only read: no parameter changes).
        tokenizer: its tokenizer.
        demos: ``(source, target)`` pairs, :class:`icv.Demo` objects, mappings or a file's path.
        init: the vector to start from (its mode, site and layers are kept); ``None``: the
            vector :func:`icv.extract` reads from the training part of the pairs.
        level: what is fitted: ``"coefficients"`` (one factor per layer on the vector's
            directions: few parameters, safe with 8 pairs) or ``"directions"`` (a free
            offset per layer's direction: for 32 pairs or more).
        objective: ``"teacher"``: the cross-entropy of each target given the zero-shot
            paraphrase prompt (teacher forcing); ``"distillation"``: KL from the unsteered
            model's own in-context distribution on each target (up to 8 training pairs,
            never the pair itself, as demonstrations in the ICL arm's prompt) to the steered
            model's given the zero-shot prompt; ``"preference"``: the teacher's cross-entropy
            plus a DPO term that prefers each target over its source copied out unchanged
            (for rewrites that are minimal edits of their sources, where teacher forcing
            rewards copying).  Each plus ``regularization`` times the mean squared change
            from the start.
        strength: the strength training injects at, recorded as the result's recommended
            strength; ``None``: ``init``'s recommended strength for its mode and site, else
            the library's default for the model's depth.
        steps: the most optimizer steps (default: 40 for coefficients, 120 for directions).
        learning_rate: Adam's step size (default: 0.1 for coefficients, 0.01 for directions).
        regularization: the weight of the L2 term (default: 0.01 for coefficients, 0.1 for
            directions); 0 turns it off.
        beta: the preference objective's DPO temperature (on summed log-probabilities);
            unused by the others.
        held_out: the share of pairs kept out of training to stop early on (at least one
            when there are two pairs or more; 0: no early stopping, all ``steps`` run).
        eval_every: steps between held-out evaluations.
        patience: stop after this many evaluations without a better held-out loss; the
            result is the state with the best held-out loss seen.
        batch_size: pairs per step (and per evaluation pass).
        seed: decides the held-out split and the batches' order: the same seed, pairs and
            model give the same vector, byte for byte.
        injection_mode: with no ``init``, how the extracted start is applied (``"rotate"``
            or ``"add"``).
        max_tokens: the longest prompt + target a pair may have (default: the model's context).
        name: the result's name (default: the start's).
        progress: show a progress bar; ``None``: when there are more than 20 steps.
        architecture: the layer paths for a model type the library does not know.
        gradient_checkpointing: recompute each decoder layer's activations in the backward
            pass (the model's own Hugging Face checkpointing, on for the training steps
            only, its flags restored after): memory bounded by one layer's activations
            for a large model, at about one more forward pass per step; the same result.

    Returns:
        The trained vector, recommending the strength it was trained at, with
        ``metadata["training"]``: objective, level, steps, the pairs' count and fingerprint,
        the held-out loss before and after.

    Raises:
        DemoError: no pairs, a pair that is not two non-empty texts, or one longer than the
            model takes; for distillation, fewer than two training pairs.
        ModelMismatchError: ``init`` was made for another model.
        OptionError: an unknown level or objective, an option out of its range, or
            ``gradient_checkpointing`` for a model whose layers cannot checkpoint.
        SteeringError: the model is steered while training starts.
    """
    pairs = as_demos(demos)
    if level not in LEVELS:
        raise OptionError(f"unknown level '{level}': choose one of {', '.join(LEVELS)}")
    if objective not in OBJECTIVES:
        raise OptionError(f"unknown objective '{objective}': choose one of {', '.join(OBJECTIVES)}")
    default_steps, default_lr, default_reg = LEVEL_DEFAULTS[level]
    steps = _count(default_steps if steps is None else steps, "steps")
    eval_every = _count(eval_every, "eval_every")
    patience = _count(patience, "patience")
    batch_size = _count(batch_size, "batch_size")
    lr = _number(default_lr if learning_rate is None else learning_rate, "learning_rate", positive=True)
    reg = _number(default_reg if regularization is None else regularization, "regularization")
    beta = _number(beta, "beta", positive=True)
    share = _number(held_out, "held_out")
    if not share < 1:
        raise OptionError(f"held_out must be a share below 1, got {held_out!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise OptionError(f"seed must be an integer, got {seed!r:.40}")
    if is_steered(model):
        raise SteeringError(
            "the model is steered: training would fit the vector on top of that steering; remove it "
            "first (handle.remove(), or icv.unsteer(model))"
        )
    limit = max_context(model, tokenizer) if max_tokens is None else _count(max_tokens, "max_tokens")
    examples = encode_pairs(tokenizer, pairs, limit)
    fit, held = _split(len(pairs), share, int(seed))
    if init is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="one demonstration")
            init = extract(
                model,
                tokenizer,
                [pairs[i] for i in fit],
                injection_mode=injection_mode,
                progress=False,
                architecture=architecture,
            )
    elif not isinstance(init, InContextVector):
        raise OptionError(f"init must be an icv.InContextVector or None, got {type(init).__name__}")
    num_layers = len(decoder_layers(model, architecture))
    check_vector_fits(model, init, num_layers)
    meta = init.metadata
    mode, site = meta["injection_mode"], meta["injection_site"]
    if strength is None:
        strength = planned_strength(init, mode, site).value
    s = _number(strength, "strength", positive=True)
    covered = sorted(range(num_layers) if init.layers is None else init.layers)
    mask = torch.zeros(num_layers, dtype=torch.bool)
    mask[covered] = True
    device = model_device(model)
    rows = TrainableRows(init.directions, level, mask, device)
    scale = (init.layer_scales if mode == "add" else torch.ones(num_layers)).to(device)
    pad = pad_token_id(tokenizer)
    fit_examples = [examples[i] for i in fit]

    def deltas() -> torch.Tensor:
        # What steer applies at strength s: layer_deltas (weights 1 on the covered layers).
        return s * rows.rows() * scale[:, None]

    teachers = None
    if objective == "distillation":
        teachers = teacher_examples(tokenizer, pairs, examples, fit, int(seed), limit)
    rejected = rejected_examples(tokenizer, pairs, limit) if objective == "preference" else None
    soft: list[SoftExample] = []
    preferred: list[PreferenceExample] = []

    def batch_loss(chosen: Sequence[int]) -> torch.Tensor:
        if objective == "distillation":
            return distillation_loss(model, [soft[fit[i]] for i in chosen], pad, device)
        if objective == "preference":
            return preference_loss(model, [preferred[fit[i]] for i in chosen], pad, device, beta)
        return target_loss(model, batch_of([fit_examples[i] for i in chosen], pad, device))

    def measure(indices: Sequence[int]) -> float:
        if objective == "distillation":
            return mean_distillation_loss(model, [soft[i] for i in indices], pad, device, batch_size)
        if objective == "preference":
            items = [preferred[i] for i in indices]
            return mean_preference_loss(model, items, pad, device, batch_size, beta)
        return mean_loss(model, [examples[i] for i in indices], pad, device, batch_size)

    saved = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    hooks: TrainingHooks | None = None
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        model.eval()
        # The teacher and the preference's reference are the unsteered model: no hooks are on
        # it yet (and is_steered said none were).
        if teachers is not None:
            soft = soft_targets(model, examples, teachers, pad, device, batch_size)
        if rejected is not None:
            preferred = preference_examples(model, examples, rejected, pad, device, batch_size)
        hooks = TrainingHooks(site_modules(model, site, architecture), covered, mode)
        with checkpointing(model, bool(gradient_checkpointing)):
            result = _fit(
                hooks,
                rows,
                deltas,
                batch_loss,
                measure,
                fit,
                held,
                steps=steps,
                lr=lr,
                reg=reg,
                eval_every=eval_every,
                patience=patience,
                batch_size=batch_size,
                rng=random.Random(int(seed)),
                progress=steps > 20 if progress is None else bool(progress),
            )
    finally:
        if hooks is not None:
            hooks.remove()
        for p, requires in saved:
            p.requires_grad_(requires)
        model.train(was_training)
    trained_rows = rows.rows().detach().cpu()
    factors = rows.factors().cpu()
    shifts = init.shifts
    if shifts is not None:
        shifts = shifts * factors[:, None] if level == "coefficients" else None
    training = {
        "objective": objective,
        "level": level,
        "steps": result["steps"],
        "best_step": result["best_step"],
        "pairs": len(pairs),
        "held_out_pairs": len(held),
        "pairs_sha256": demos_sha256(pairs, PROMPT_FORM),
        "strength": s,
        "learning_rate": lr,
        "regularization": reg,
        "seed": int(seed),
        "start": init.name,
        "train_loss_before": result["train_before"],
        "train_loss_after": result["train_after"],
        "held_out_loss_before": None,
        "held_out_loss_after": None,
    }
    if objective == "distillation":
        training.update(teacher_demos=TEACHER_DEMOS, teacher_top_k=TOP_K)
    if objective == "preference":
        training.update(beta=beta)
    vector = InContextVector(
        trained_rows,
        {
            **meta,
            "name": name or init.name,
            "method": "trained",
            "recommended_strength": s,
            "calibrated_with_demos": 0,
            "training": training,
        },
        init.layer_scales,
        shifts,
    )
    if held:
        # Measured through icv.steer itself: the figures are what steering with the file gives.
        with steer(model, init, s):
            before = measure(held)
        with steer(model, vector):
            after = measure(held)
        vector = vector.with_metadata(
            training={**training, "held_out_loss_before": before, "held_out_loss_after": after}
        )
    return vector


def _fit(
    hooks: TrainingHooks,
    rows: TrainableRows,
    deltas: Any,
    batch_loss: Callable[[Sequence[int]], torch.Tensor],
    measure: Callable[[Sequence[int]], float],
    fit: Sequence[int],
    held: Sequence[int],
    *,
    steps: int,
    lr: float,
    reg: float,
    eval_every: int,
    patience: int,
    batch_size: int,
    rng: random.Random,
    progress: bool,
) -> dict[str, Any]:
    """The optimisation loop; leaves ``rows`` at the state of the best held-out loss.

    ``batch_loss`` takes positions in ``fit``; ``measure`` takes pair indices (``fit``'s or
    ``held``'s own values) and gives the objective's mean without gradients.
    """
    optimizer = torch.optim.Adam(rows.parameters(), lr=lr)

    def evaluate(indices: Sequence[int]) -> float:
        with torch.no_grad():
            hooks.deltas = deltas()
        return measure(indices)

    train_before = evaluate(fit)
    best = evaluate(held) if held else math.inf
    best_state = rows.weight.detach().clone()
    best_step, since_best, taken = 0, 0, 0
    order: list[int] = []
    bar = tqdm(total=steps, desc="icv: training", unit="step", disable=not progress)
    try:
        with torch.enable_grad():
            for step in range(1, steps + 1):
                if len(order) < min(batch_size, len(fit)):
                    epoch = list(range(len(fit)))
                    rng.shuffle(epoch)
                    order += epoch
                chosen, order = order[:batch_size], order[batch_size:]
                optimizer.zero_grad(set_to_none=True)
                hooks.deltas = deltas()
                loss = batch_loss(chosen)
                total = loss + reg * rows.penalty() if reg else loss
                total.backward()
                optimizer.step()
                hooks.deltas = None  # drop the graph
                taken = step
                bar.update(1)
                if held and (step % eval_every == 0 or step == steps):
                    current = evaluate(held)
                    bar.set_postfix(held_out=f"{current:.3f}")
                    if current < best:
                        best, best_step, since_best = current, step, 0
                        best_state = rows.weight.detach().clone()
                    else:
                        since_best += 1
                        if since_best >= patience:
                            break
    finally:
        bar.close()
        hooks.deltas = None
    with torch.no_grad():
        if held:
            rows.weight.copy_(best_state)
        else:
            best_step = taken
    return {
        "steps": taken,
        "best_step": best_step,
        "train_before": train_before,
        "train_after": evaluate(fit),
    }


def _split(count: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) pair indices: a seeded shuffle; at least one on each side when
    there are two pairs or more and ``share`` is above 0."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    held = 0 if count < 2 or share <= 0 else min(count - 1, max(1, round(count * share)))
    return sorted(order[held:]), sorted(order[:held])


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise OptionError(f"{what} must be a positive integer, got {value!r:.40}")
    return int(value)


def _number(value: object, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise OptionError(f"{what} must be a finite number, got {value!r:.40}")
    number = float(value)
    if number < 0 or (positive and number == 0):
        raise OptionError(f"{what} must be {'above' if positive else 'at least'} 0, got {number:g}")
    return number
