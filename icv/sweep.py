"""Steered completions for many strengths at once: what evaluation and calibration share.

Every (strength, input) pair becomes one row; rows go through generation in
batches with one strength per row (``icv.steer`` accepts a sequence), so a sweep
costs what the same number of plain rows costs, and the prompt is cut once.
Each batch is timed and its time shared out over its rows, so every strength
gets its own generation time even when batches mix strengths.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from .errors import OptionError
from .generation import complete
from .prompts import cut_answer, paraphrase_prompt
from .vector import InContextVector

Prompt = Callable[[str], str]

# The paraphrase prompt's answer ends at the closing quote (or the line): stopping
# each row there gives the same cut answers and saves most of the decoding.
ANSWER_STOPS = ('"', "\n")


def _stops(tokenizer: Any, stop_strings: Sequence[str] | None) -> list[str] | None:
    # generate() matches stop strings through the tokenizer's vocabulary; a tokenizer
    # without one (a test stand-in) just decodes to the end, with the same cut answer.
    if not stop_strings or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return None
    return list(stop_strings)


@dataclass
class Completions:
    """Answers (cut from the completions) for one setting, and the time they took."""

    answers: list[str]
    raw: list[str]
    seconds: float
    # With conditional steering (when=): per row, whether the gate steered it.
    fired: list[bool] | None = None


def check_strengths(strengths: Sequence[float]) -> list[float]:
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, Sequence) or not strengths:
        raise OptionError("strengths must be a non-empty list of numbers")
    values = []
    for s in strengths:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s or abs(s) == float("inf"):
            raise OptionError(f"every strength must be a finite number, got {s!r}")
        values.append(float(s))
    if len(set(values)) != len(values):
        raise OptionError(f"strengths repeat a value: {values}")
    return values


def check_inputs(inputs: Sequence[str]) -> list[str]:
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence) or not inputs:
        raise OptionError("inputs must be a non-empty list of strings")
    for i, text in enumerate(inputs):
        if not isinstance(text, str) or not text.strip():
            raise OptionError(f"input {i} must be a non-empty string, got {text!r:.40}")
    return list(inputs)


def generate_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool | None = None,
    stop_strings: Sequence[str] | None = ANSWER_STOPS,
) -> Completions:
    """Unsteered greedy answers for ``prompts``, timed."""
    started = time.perf_counter()
    raw = complete(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=_show(progress, len(prompts), batch_size),
        stop_strings=_stops(tokenizer, stop_strings),
    )
    return Completions([cut_answer(r) for r in raw], raw, time.perf_counter() - started)


def steered_answers(
    model: nn.Module,
    tokenizer: Any,
    vector: InContextVector,
    inputs: Sequence[str],
    strengths: Sequence[float],
    *,
    prompt: Prompt = paraphrase_prompt,
    max_new_tokens: int = 40,
    batch_size: int = 16,
    progress: bool | None = None,
    stop_strings: Sequence[str] | None = ANSWER_STOPS,
    **steer_options: Any,
) -> dict[float, Completions]:
    """Greedy answers for every input at every strength, batched with per-row strengths."""
    inputs = check_inputs(inputs)
    strengths = check_strengths(strengths)
    rows = [(s, text) for s in strengths for text in inputs]
    answers: dict[float, list[str]] = {s: [] for s in strengths}
    raw_by: dict[float, list[str]] = {s: [] for s in strengths}
    seconds = {s: 0.0 for s in strengths}
    gated = steer_options.get("when") is not None
    fired_by: dict[float, list[bool]] = {s: [] for s in strengths}
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    show = _show(progress, len(rows), batch_size)
    for chunk in tqdm(chunks, desc="icv: steered sweep", disable=not show, unit="batch"):
        started = time.perf_counter()
        decisions: list[Any] = []
        raw = complete(
            model,
            tokenizer,
            [prompt(text) for _, text in chunk],
            vector=vector,
            strength=[s for s, _ in chunk],
            max_new_tokens=max_new_tokens,
            batch_size=len(chunk),
            progress=False,
            stop_strings=_stops(tokenizer, stop_strings),
            decisions=decisions,
            **steer_options,
        )
        share = (time.perf_counter() - started) / len(chunk)
        # One decision per batch (complete runs the chunk as one batch), one flag per row.
        fired = [f for decision in decisions for f in decision.fired] if gated else [True] * len(chunk)
        for (s, _), text, steered in zip(chunk, raw, fired, strict=True):
            raw_by[s].append(text)
            answers[s].append(cut_answer(text))
            seconds[s] += share
            fired_by[s].append(steered)
    return {
        s: Completions(answers[s], raw_by[s], seconds[s], fired_by[s] if gated else None) for s in strengths
    }


def _show(progress: bool | None, rows: int, batch_size: int) -> bool:
    return progress if progress is not None else rows > 4 * batch_size
