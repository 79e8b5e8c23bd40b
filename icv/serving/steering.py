"""The steering of one forward pass of a batch whose rows each have their own (or none).

A server's forward pass is either a prefill (every token is a prompt token) or a
decode step (every token is a generated one), so a request's ``positions`` decide
per pass, not per token, whether its row is steered: ``"all"`` in both,
``"prompt"`` only in prefills, ``"generated"`` only in decode steps.  That is
exactly where :func:`icv.steer` with those positions acts in ``model.generate``.

Rows are steered through :func:`icv.steer` with one vector per row, applied at
strength 1 (a request's vectors and strengths are already composed into one
vector).  Vectors that inject differently (``rotate@mlp``, ``add@block``) cannot
share hooks, so each kind gets its own steering, in which the other rows have
strength 0: a row at strength 0 is bitwise unsteered, so stacking them leaves each
row exactly what its own steering makes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..condition import Rule
from ..steer import Steering, steer
from ..vector import InContextVector

PHASES = ("prompt", "generated")


@dataclass(frozen=True)
class RowSteering:
    """One request's steering: a vector applied at strength 1, at some positions."""

    vector: InContextVector
    positions: str = "all"
    when: Rule | None = None  # conditional steering: decided at the request's first prefill chunk

    @property
    def injection(self) -> tuple[str, str]:
        m = self.vector.metadata
        return m["injection_mode"], m["injection_site"]


def active_in(steering: RowSteering | None, phase: str) -> bool:
    """Whether a row with ``steering`` is steered in a forward pass of ``phase``."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    return steering is not None and steering.positions in ("all", phase)


def steer_rows(model: nn.Module, rows: Sequence[RowSteering | None], phase: str) -> list[Steering]:
    """Hooks on ``model`` that steer each row of the next forward pass as its request asks.

    An empty list when no row is steered in this phase (the pass runs unhooked).
    The caller removes the returned steerings after the pass.
    """
    active = [s if active_in(s, phase) else None for s in rows]
    groups: dict[tuple[str, str], list[int]] = {}
    for row, s in enumerate(active):
        if s is not None:
            groups.setdefault(s.injection, []).append(row)
    made: list[Steering] = []
    try:
        for (mode, site), members in groups.items():
            made.append(_steer_group(model, active, set(members), mode, site))
    except BaseException:
        for steering in made:
            steering.remove()
        raise
    return made


def _steer_group(
    model: nn.Module, active: list[RowSteering | None], members: set[int], mode: str, site: str
) -> Steering:
    first = active[min(members)]
    assert first is not None
    # The other rows get a zero vector of the same kind at strength 0: bitwise unsteered, and
    # untouched by whatever a member's vector holds (inf * 0 would be NaN in every row).
    idle = _zero_like(first.vector)
    vectors = [s.vector if row in members and s is not None else idle for row, s in enumerate(active)]
    strengths = [1.0 if row in members else 0.0 for row in range(len(active))]
    # Entered as a `with` block enters it: stacking these is deliberate (each steers rows the
    # others leave at strength 0), so no stacked-handle warning; the caller removes it.
    return steer(model, vectors, strengths, mode=mode, site=site).__enter__()


def _zero_like(vector: InContextVector) -> InContextVector:
    """A vector of ``vector``'s model and injection that steers nothing."""
    zeros = torch.zeros_like(vector.directions)
    shifts = None if vector.shifts is None else zeros
    return InContextVector(zeros, vector.metadata, torch.zeros_like(vector.layer_scales), shifts)
