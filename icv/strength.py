"""The strength steering uses when neither the caller nor the vector names one.

A strength acts per layer (an angle for the rotation, a fraction of the activation's
size for addition) and every layer is steered, so what one strength does grows with
the model's depth: 0.06 turns 80 % of held-in Yelp sentences positive on SmolLM2-135M
(30 layers) and about 40 % on Gemma 3 270M (18 layers).  Swept on a common axis, the
**budget** ``strength x layers``, the two embedded models change alike under the
rotation: at budgets 0.9 / 1.2 / 1.5 / 1.8 / 2.1, 32.5/35, 45/42.5, 52.5/57.5, 80/72.5, 87.5/87.5 %
positive (SmolLM2 / Gemma; ``benchmarks/quality/default_strength.py``,
docs/results/default-strength.md).  So the default is a budget spread over the layers.
It is a guess, and steering says so (:class:`DefaultStrengthWarning`); ``icv.calibrate``
measures the right strength for a vector and records it as its recommended strength.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vector import InContextVector

# Per mode: the strength summed over all layers that the default spreads evenly.
# Rotation 1.5: a clear change that keeps most of the content on both models (52.5 % / 57.5 %
# positive at similarity 0.63 / 0.78).  Addition has no common budget (Gemma 3 270M needs
# about a third of SmolLM2's for the same change); 0.3 is the most that breaks neither
# (SmolLM2 25 % at 0.79, Gemma 67.5 % at 0.66).
DEFAULT_BUDGET = {"rotate": 1.5, "add": 0.3}


class DefaultStrengthWarning(UserWarning):
    """Steering guessed a strength: none was given and the vector recommends none for its mode."""


@dataclass(frozen=True)
class Strength:
    """A strength and where it came from: ``"given"``, ``"recommended"`` (by the vector) or ``"default"``."""

    value: float
    source: str

    def label(self) -> str:
        """``0.05`` for a given strength, ``0.05 (default)`` / ``0.05 (recommended)`` otherwise."""
        return f"{self.value:g}" if self.source == "given" else f"{self.value:g} ({self.source})"


def default_strength(mode: str, num_layers: int) -> float:
    """The strength for ``mode`` on a model of ``num_layers`` decoder layers: the budget per layer.

    Rounded to three significant digits (``1.5 / 18`` is ``0.0833``).
    """
    return float(f"{DEFAULT_BUDGET[mode] / max(num_layers, 1):.3g}")


def planned_strength(vector: InContextVector, mode: str, site: str, given: float | None = None) -> Strength:
    """The strength steering with ``vector`` in ``mode`` at ``site`` uses, and why.

    The vector's recommended strength counts only where it was recommended for that
    mode and site (a rotation's angle means nothing to addition).
    """
    if given is not None:
        return Strength(float(given), "given")
    m = vector.metadata
    if m["recommended_strength"] is not None and (m["injection_mode"], m["injection_site"]) == (mode, site):
        return Strength(float(m["recommended_strength"]), "recommended")
    return Strength(default_strength(mode, vector.num_layers), "default")


def warn_default(vector: InContextVector, strength: Strength, mode: str, *, stacklevel: int = 2) -> None:
    """Say that ``strength`` is the library's guess for ``vector`` (nothing when it is not)."""
    if strength.source != "default":
        return
    warnings.warn(
        f"no strength given and '{vector.name}' recommends none for {mode}: using {strength.value:g} "
        f"(a budget of {DEFAULT_BUDGET[mode]:g} over {vector.num_layers} layers); pass strength=, or "
        "find one with icv.calibrate",
        DefaultStrengthWarning,
        stacklevel=stacklevel + 1,
    )
