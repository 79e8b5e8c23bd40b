"""Calibration: pick the strength (and optionally the layers) a vector should be used at.

The usable window is narrow on small models: too weak and the style does not
change, too strong and the output drifts from its source or falls into loops.
:func:`calibrate` generates answers for a few held-in inputs at every candidate
strength (one batched sweep), scores them, and keeps the strength with the
highest style success among those whose content preservation and fluency stay
within the floors.  The choice is written into the vector's metadata as its
``recommended_strength``, so ``icv.steer(model, vec)`` uses it.

A vector used on top of its demonstrations in the prompt (ICL + ICV) needs a
different strength from one used in their place: ``calibrate(..., demos=pairs)``
sweeps with the demonstrations written into the prompt, and the metadata records
which form the strength is for (``calibrated_with_demos``: how many demonstrations
were in the prompt, 0 for the zero-shot prompt).  Steering sees only token ids, so
it cannot tell which form a prompt has; what builds the prompt (``icv generate``,
``icv eval``, the recipes) checks with :func:`prompt_form_mismatch`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, NamedTuple

from torch import nn

from .demos import Demo, as_demos, demos_sha256
from .engines import GenerationEngine, Sweep, engine_for
from .errors import OptionError
from .layers import decoder_layers
from .prompts import icl_prompt, paraphrase_prompt
from .scorers import RepetitionScorer, Scorer, SimilarityScorer, score_all, success_rate
from .steer import layer_weights
from .sweep import Prompt, check_inputs, check_strengths
from .vector import InContextVector

# Where each mode injects when the vector was made for the other one (as icv.steer does).
_SITE_FOR_MODE = {"rotate": "mlp", "add": "block"}
# What the fluency floor's perplexity is a multiple of: the unsteered model's outputs, or the
# inputs themselves (for rewriting: an answer as surprising as the text it rewrites is fluent
# enough, where the unsteered answers can be more predictable than either, e.g. repetitive).
PERPLEXITY_BASELINES = ("unsteered", "inputs")
DEFAULT_STRENGTHS = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.12)


@dataclass
class SweepPoint:
    """The scores of one candidate (strength, layers) on the held-in inputs."""

    strength: float
    layers: list[int] | None
    style_success: float
    content: float
    repetition: float
    perplexity: float | None
    passes: bool
    reasons: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)


@dataclass
class CalibrationReport:
    """Every candidate's scores, the unsteered baseline, the floors and the choice."""

    points: list[SweepPoint]
    baseline: SweepPoint
    chosen: SweepPoint
    feasible: bool
    floors: dict[str, float | None]
    style: str
    content: str
    perplexity_baseline: str = "unsteered"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """A table of the sweep, the chosen row marked."""
        lines = [
            "| strength | layers | style success | content | repetition | perplexity | within floors |",
            "|---:|---|---:|---:|---:|---:|---|",
        ]
        for point in [self.baseline, *self.points]:
            mark = " **(chosen)**" if point is self.chosen else ""
            layers = _describe_layers(point.layers)
            ppl = "" if point.perplexity is None else f"{point.perplexity:.1f}"
            verdict = (
                "baseline"
                if point is self.baseline
                else ("yes" if point.passes else ", ".join(point.reasons))
            )
            lines.append(
                f"| {point.strength:g}{mark} | {layers} | {point.style_success:.2f} | {point.content:.2f} | "
                f"{point.repetition:.2f} | {ppl} | {verdict} |"
            )
        return "\n".join(lines)


class Calibration(NamedTuple):
    """``(vector, report)``: the vector with its recommended strength set, and the sweep."""

    vector: InContextVector
    report: CalibrationReport


def calibrate(
    model: nn.Module,
    tokenizer: Any,
    vector: InContextVector,
    inputs: Sequence[str],
    *,
    style: Scorer,
    content: Scorer | None = None,
    fluency: Scorer | None = None,
    references: Sequence[str] | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    layer_ranges: Iterable[Iterable[int]] | None = None,
    min_content: float = 0.65,
    max_repetition: float = 0.2,
    max_perplexity_ratio: float | None = 2.0,
    perplexity_baseline: str = "unsteered",
    prompt: Prompt | None = None,
    demos: Iterable[object] | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    mode: str | None = None,
    site: str | None = None,
    progress: bool | None = None,
    engine: str | GenerationEngine = "transformers",
    url: str | None = None,
    api_key: str | None = None,
) -> Calibration:
    """Sweep strengths on ``inputs`` and return the vector with the best one recommended.

    A candidate (a strength, and a layer set with ``layer_ranges``) must keep the content
    (mean ``content`` score at least ``min_content``) and stay fluent (the share of
    repeated 3-grams at most ``max_repetition``; with a ``fluency`` scorer, perplexity
    within ``max_perplexity_ratio`` times the unsteered outputs', or the inputs').  Among those, the one
    of highest ``style`` success wins; ties go to the smaller strength.  If no candidate
    passes the floors, the smallest strength of the sweep is recommended with a warning,
    and ``report.feasible`` is False.

    Args:
        model: the model the vector steers.
        tokenizer: its tokenizer.
        vector: the vector to calibrate.
        inputs: the texts to rewrite (a calibration set, not the test set).
        style: the scorer whose success rate is maximised (e.g. ``SentimentScorer()``).
        content: content preservation; default MiniLM similarity to the source.
        fluency: an optional scorer (e.g. ``PerplexityScorer()``) whose ratio to the
            unsteered outputs' must stay within ``max_perplexity_ratio``.
        references: human rewrites, one per input, for scorers that need them.
        strengths: the strengths to try.
        layer_ranges: optional candidate layer sets (e.g. ``[range(0, 30), range(5, 25)]``);
            the returned vector then keeps only the chosen layers (other rows zeroed).
        min_content: the content floor (mean ``content`` score).
        max_repetition: the most repeated 3-grams an output may have, as a share.
        max_perplexity_ratio: the fluency floor with a ``fluency`` scorer; ``None``: none.
        perplexity_baseline: what that ratio is taken against: ``"unsteered"`` (the
            unsteered model's outputs on ``inputs``) or ``"inputs"`` (the inputs themselves:
            for rewriting, an answer as fluent as its source passes even where the
            unsteered answers are more predictable, e.g. repetitive).
        prompt: the prompt around each input (a function of the input); default the
            paper's paraphrase prompt.
        demos: calibrate for ICL + ICV: these demonstrations are written into the
            paraphrase prompt before each input (the baseline, strength 0, is then ICL), and
            the vector's ``calibrated_with_demos`` records how many; without them it records
            0 (or, with a ``prompt`` of your own, nothing: its form is unknown).
        max_new_tokens: tokens generated per output.
        batch_size: prompts per generation batch.
        mode: how to inject (``"rotate"`` or ``"add"``); default the vector's; the result
            records it.
        site: where to inject; default the vector's; the result records it.
        progress: show a progress bar; ``None``: when there are more than 4 batches.
        engine: where the answers are generated (:mod:`icv.engines`): ``"transformers"``,
            ``"vllm"`` (every candidate's rows one vLLM batch), ``"server"`` (a running
            ``icv serve`` at ``url``) or an engine object.
        url: the server's address, with ``engine="server"``.
        api_key: the server's API key, with ``engine="server"``.

    Returns:
        ``(vector, report)``: the vector with its recommended strength (and mode, site,
        layers) set, and every candidate's scores.

    Raises:
        OptionError: not a vector or scorer where one belongs, no non-zero strength, an
            empty layer range, both ``demos`` and ``prompt``, or an unknown
            ``perplexity_baseline``.
    """
    if not isinstance(vector, InContextVector):
        raise OptionError("vector must be an icv.InContextVector")
    inputs = check_inputs(inputs)
    if perplexity_baseline not in PERPLEXITY_BASELINES:
        raise OptionError(
            f"unknown perplexity_baseline {perplexity_baseline!r:.40}: choose one of {', '.join(PERPLEXITY_BASELINES)}"
        )
    prompt, with_demos = _prompt_form(prompt, demos)
    candidates = sorted(set(check_strengths(strengths)) - {0.0})
    if not candidates:
        raise OptionError("strengths must include at least one non-zero value")
    if not isinstance(style, Scorer):
        raise OptionError("style must be an icv.scorers.Scorer (e.g. SentimentScorer())")
    content = content if content is not None else SimilarityScorer()
    repetition = RepetitionScorer(3)
    scorers = [style, content, repetition] + ([fluency] if fluency is not None else [])
    mode = mode or vector.metadata["injection_mode"]
    if site is None:
        site = (
            vector.metadata["injection_site"]
            if mode == vector.metadata["injection_mode"]
            else _SITE_FOR_MODE[mode]
        )
    steer_options = {"mode": mode, "site": site}
    num_layers = len(decoder_layers(model))
    layer_sets: list[list[int] | None] = [None]
    if layer_ranges is not None:
        layer_sets = [_layer_list(layers, num_layers) for layers in layer_ranges]
        if not layer_sets:
            raise OptionError("layer_ranges must name at least one set of layers")

    # Every layer set's sweep goes to the engine at once (one batch for vLLM); the unsteered
    # baseline rides in the first sweep as strength 0 (rotation by nothing).
    generator = engine_for(engine, model, tokenizer, url=url, api_key=api_key)
    prompts = [prompt(x) for x in inputs]
    planned = [
        (layers, Sweep(prompts, _keep_layers(vector, layers), candidates if i else [0.0, *candidates]))
        for i, layers in enumerate(layer_sets)
    ]
    answered = generator.answer(
        [sweep for _, sweep in planned],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        steer_options=steer_options,
    )
    points: list[SweepPoint] = []
    baseline: SweepPoint | None = None
    for (layers, sweep), answers in zip(planned, answered, strict=True):
        for s in sweep.strengths:
            done = answers[s]
            scores = score_all(scorers, done.answers, inputs, references)
            point = SweepPoint(
                strength=s,
                layers=layers,
                style_success=success_rate(style, scores[style.name][0]),
                content=scores[content.name][1],
                repetition=scores[repetition.name][1],
                perplexity=scores[fluency.name][1] if fluency is not None else None,
                passes=False,
                examples=done.answers[:3],
            )
            if baseline is None:
                baseline, point.layers = point, None
            else:
                points.append(point)
    assert baseline is not None
    reference = baseline.perplexity
    if fluency is not None and max_perplexity_ratio is not None and perplexity_baseline == "inputs":
        reference = score_all([fluency], inputs, inputs, references)[fluency.name][1]
    floors = {
        "min_content": min_content,
        "max_repetition": max_repetition,
        "max_perplexity": (
            reference * max_perplexity_ratio
            if fluency is not None and max_perplexity_ratio is not None and reference is not None
            else None
        ),
    }
    for point in points:
        point.reasons = _failures(point, floors)
        point.passes = not point.reasons
    passing = [p for p in points if p.passes]
    if passing:
        chosen = max(passing, key=lambda p: (p.style_success, -p.strength))
    else:
        chosen = min(points, key=lambda p: p.strength)
        warnings.warn(
            "calibration: no strength kept content and fluency within the floors; recommending the "
            f"smallest one tried ({chosen.strength:g}). Try smaller strengths, better demonstrations "
            "or looser floors",
            stacklevel=2,
        )
    report = CalibrationReport(
        points=points,
        baseline=baseline,
        chosen=chosen,
        feasible=bool(passing),
        floors=floors,
        style=style.name,
        content=content.name,
        perplexity_baseline=perplexity_baseline,
    )
    result = _keep_layers(vector, chosen.layers).with_metadata(
        recommended_strength=chosen.strength,
        injection_mode=mode,
        injection_site=site,
        calibrated_with_demos=with_demos,
    )
    return Calibration(result, report)


def _prompt_form(prompt: Prompt | None, demos: Iterable[object] | None) -> tuple[Prompt, int | None]:
    """The prompt to calibrate with and how many demonstrations it holds (``None``: unknown)."""
    if demos is None:
        return (prompt, None) if prompt is not None else (paraphrase_prompt, 0)
    if prompt is not None:
        raise OptionError("give demos (written into the paraphrase prompt) or a prompt of your own, not both")
    pairs = as_demos(demos)
    return partial(icl_prompt, pairs), len(pairs)


def prompt_form_mismatch(vector: InContextVector, demos_in_prompt: int) -> str | None:
    """A warning's text when ``vector``'s strength was calibrated for another prompt form, else None.

    ``demos_in_prompt``: how many demonstrations the prompt it is about to steer holds.
    Vectors whose form is unknown (not calibrated, or calibrated with a prompt of one's
    own) never mismatch.
    """
    calibrated = vector.metadata.get("calibrated_with_demos")
    if calibrated is None or vector.recommended_strength is None or calibrated == demos_in_prompt:
        return None
    return (
        f"'{vector.name}' was calibrated with {_demos_phrase(calibrated)} in the prompt and is used with "
        f"{_demos_phrase(demos_in_prompt)}: its recommended strength "
        f"({vector.recommended_strength:g}) may be too {'strong' if demos_in_prompt > calibrated else 'weak'}; "
        "recalibrate for this prompt form or give a strength"
    )


def demos_mismatch(vector: InContextVector, demos: Sequence[Demo]) -> str | None:
    """A warning's text when ``demos`` are not the demonstrations ``vector`` was made from, else None.

    ICL + ICV means the same demonstrations in the prompt and as the vector; the vector's
    ``demos_sha256`` (of the whole set, read with its template) tells whether they are.
    """
    if demos_sha256(list(demos), vector.metadata["prompt_template"]) == vector.metadata["demos_sha256"]:
        return None
    return (
        f"the demonstrations in the prompt are not the ones '{vector.name}' was made from "
        "(ICL + ICV means the same demonstrations in the prompt and as the vector)"
    )


def _demos_phrase(count: int) -> str:
    return "no demonstrations" if count == 0 else f"{count} demonstration{'s' if count != 1 else ''}"


def _describe_layers(layers: list[int] | None) -> str:
    if layers is None:
        return "all"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def _failures(point: SweepPoint, floors: dict[str, float | None]) -> list[str]:
    reasons = []
    if math.isnan(point.content) or point.content < floors["min_content"]:  # type: ignore[operator]
        reasons.append(f"content {point.content:.2f} < {floors['min_content']}")
    if point.repetition > floors["max_repetition"]:  # type: ignore[operator]
        reasons.append(f"repetition {point.repetition:.2f} > {floors['max_repetition']}")
    ceiling = floors["max_perplexity"]
    if ceiling is not None and point.perplexity is not None and not point.perplexity <= ceiling:
        reasons.append(f"perplexity {point.perplexity:.1f} > {ceiling:.1f}")
    if math.isnan(point.style_success):
        reasons.append("style undefined")
    return reasons


def _layer_list(layers: Iterable[int], num_layers: int) -> list[int]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise OptionError("each layer range must be an iterable of layer indices, e.g. range(4, 24)")
    weights = layer_weights(list(layers), num_layers)
    return [i for i in range(num_layers) if float(weights[i]) != 0.0]


def _keep_layers(vector: InContextVector, layers: list[int] | None) -> InContextVector:
    """``vector`` with the rows outside ``layers`` zeroed (a zero row steers nothing), the layers recorded."""
    return vector if layers is None else vector.only_layers(layers)
