"""The injection arithmetic, as pure tensor functions: what every engine applies to an activation.

Used by :mod:`icv.steer` (transformers hooks), the serving engine (through it) and the
vLLM plugin, so that all of them steer with the same arithmetic.  No hooks, no caches,
no Python decisions on data: each function takes tensors and returns tensors (``dot`` and
``rotate_towards`` overwrite the ``dot_away`` they are given, as documented), so they
trace under ``torch.compile`` and run inside captured graphs.

Shapes: ``x`` is ``(..., hidden)``; a delta ``d`` and its ``away`` direction broadcast
against it (one for all positions ``(hidden,)``, one per row ``(rows, 1, hidden)``, or one
per token ``(tokens, hidden)``).
"""

from __future__ import annotations

import torch

_EPS = 1e-12


def away_directions(delta: torch.Tensor) -> torch.Tensor:
    """``-delta/|delta|`` along the last axis (zero rows stay zero): what the rotation's boost measures."""
    wide = delta.float()
    norm = wide.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, -wide / norm.clamp_min(_EPS), torch.zeros_like(wide)).to(delta.dtype)


def dot_away(x: torch.Tensor, away: torch.Tensor) -> torch.Tensor:
    """``x . away`` per position, shape ``(..., 1)``: the rotation's boost term before clamping.

    ``linalg.vecdot``, not ``matmul`` against a column: with one row and several CPU
    threads, ``matmul`` takes a threaded BLAS path that cost milliseconds per call on a
    busy machine (30 layers per decoded token), where ``vecdot`` costs microseconds.
    The two agree to float rounding (not always bitwise); each position's dot product
    depends on that position alone, so steering with and without the KV cache agree.
    """
    return torch.linalg.vecdot(x, away).unsqueeze_(-1)


def rotate_towards(
    x: torch.Tensor, d: torch.Tensor, dot_away: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``x`` turned towards ``d`` with its norm kept: the rotation every steering hook applies.

    ``d`` broadcasts against ``x`` (one delta, one per row, or one per token);
    ``dot_away`` is ``x . -d/|d|`` per position (0 where ``d`` is 0), shape ``(..., 1)``,
    and is overwritten; ``mask`` (0 or 1 per position) leaves the positions at 0 untouched.
    """
    # Nine tensor ops (the hook runs per layer per generated token, where the cost of
    # launching ops, not arithmetic, dominates): no syncs, no Python loops.
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    # boost * |x| = |x| (1 + max(0, cos(x, -d))) = |x| + max(0, x . -d/|d|)
    coef = dot_away.clamp_min_(0.0).add_(norm)
    if mask is not None:
        coef.mul_(mask)
    # x/|x| + boost*d, rescaled to |x|:  (x + boost |x| d) * |x| / |x + boost |x| d|
    y = torch.addcmul(x, coef, d)
    # |y| = 0 only where x = 0 (then y = 0 too): 0/0 -> 0 keeps it zero, in any dtype.
    # Unsteered rows and positions get y = x, so |x|/|y| is exactly 1: bitwise unchanged.
    return y.mul_(norm.div_(torch.linalg.vector_norm(y, dim=-1, keepdim=True)).nan_to_num_(0.0, 0.0, 0.0))


def rotate(
    x: torch.Tensor, d: torch.Tensor, away: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The paper's rotation of ``x`` towards ``d`` (``away`` = :func:`away_directions` of ``d``)."""
    return rotate_towards(x, d, dot_away(x, away), mask)


def rotate_averaged(
    x: torch.Tensor, d: torch.Tensor, away: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """K pushes, each with its own boost, averaged, then one norm-preserving turn (the reference code).

    ``d``: ``(K, hidden)`` deltas already divided by K; ``away``: their away directions as
    columns, ``(hidden, K)``.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    coef = torch.matmul(x, away).clamp_min_(0.0).add_(norm)  # (..., K): boost_k * |x|
    if mask is not None:
        coef.mul_(mask)
    y = x + torch.matmul(coef, d)
    return y.mul_(norm.div_(torch.linalg.vector_norm(y, dim=-1, keepdim=True)).nan_to_num_(0.0, 0.0, 0.0))


def add(x: torch.Tensor, d: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``x + d``, or ``x + mask * d`` (positions at 0 in ``mask`` untouched)."""
    return x + d if mask is None else torch.addcmul(x, mask, d)
