"""The in-context vector: per-layer directions plus metadata, and its arithmetic.

A vector is a value: every operation returns a new vector.  Directions are
stored per layer; extraction makes each layer's direction unit-norm, and
arithmetic combines them linearly without renormalising, so that

* ``steer(v * k, strength=s)`` acts like ``steer(v, strength=k * s)``,
* ``steer(v1 + v2)`` applies both behaviours,
* ``steer(-v)`` pushes the other way.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch

from . import metadata as meta
from .errors import ModelMismatchError, OptionError


class InContextVector:
    """Per-layer steering directions read from demonstrations, with their provenance.

    ``directions`` has shape ``(num_layers, hidden_size)`` (float32, CPU).
    ``layer_scales`` has shape ``(num_layers,)``: the typical norm of the residual
    stream at each layer when the vector was made, which gives the additive mode
    (``mode="add"``) the same meaning of strength as the rotation: a fraction of
    the activation's size.
    """

    __slots__ = ("_directions", "_layer_scales", "_metadata")

    def __init__(
        self,
        directions: torch.Tensor,
        metadata: Mapping[str, Any],
        layer_scales: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(directions, torch.Tensor) or directions.dim() != 2:
            raise OptionError("directions must be a tensor of shape (num_layers, hidden_size)")
        directions = directions.detach().to("cpu", torch.float32).contiguous()
        num_layers, hidden_size = directions.shape
        if layer_scales is None:
            layer_scales = torch.ones(num_layers)
        layer_scales = layer_scales.detach().to("cpu", torch.float32).contiguous()
        if layer_scales.shape != (num_layers,):
            raise OptionError(
                f"layer_scales must have shape ({num_layers},), got {tuple(layer_scales.shape)}"
            )
        if not bool(torch.isfinite(directions).all()) or not bool(torch.isfinite(layer_scales).all()):
            raise OptionError("a vector's directions and layer scales must be finite")
        full = dict(metadata)
        full.setdefault("icv_format_version", meta.FORMAT_VERSION)
        full.setdefault("library_version", _library_version())
        full.setdefault("name", "icv")
        full["hidden_size"] = int(hidden_size)
        full["num_layers"] = int(num_layers)
        self._metadata = meta.validate(full, source="vector")
        self._directions = directions
        self._layer_scales = layer_scales

    # -- read-only views -------------------------------------------------------------
    @property
    def directions(self) -> torch.Tensor:
        """Tensor of shape ``(num_layers, hidden_size)``."""
        return self._directions

    @property
    def layer_scales(self) -> torch.Tensor:
        """Tensor of shape ``(num_layers,)``: residual-stream norms the additive mode uses."""
        return self._layer_scales

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata (changing it does not change the vector)."""
        return dict(self._metadata)

    @property
    def num_layers(self) -> int:
        return self._metadata["num_layers"]

    @property
    def hidden_size(self) -> int:
        return self._metadata["hidden_size"]

    @property
    def name(self) -> str:
        return self._metadata["name"]

    @property
    def recommended_strength(self) -> float | None:
        return self._metadata["recommended_strength"]

    def with_metadata(self, **updates: Any) -> InContextVector:
        """A copy with some metadata replaced (e.g. ``recommended_strength=0.07``)."""
        fixed = {"hidden_size", "num_layers"} & set(updates)
        if fixed:
            raise OptionError(f"{', '.join(sorted(fixed))} follow from the directions' shape")
        return InContextVector(self._directions, {**self._metadata, **updates}, self._layer_scales)

    def layer_norms(self) -> torch.Tensor:
        """The norm of each layer's direction (1 for a freshly extracted vector)."""
        return self._directions.norm(dim=-1)

    # -- files -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write a self-describing safetensors file atomically (temp file + rename)."""
        from .storage import save_vector

        save_vector(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InContextVector:
        """Read and validate a vector file; raises ``VectorFileError`` if it is not one."""
        from .storage import load_vector

        return load_vector(path)

    # -- arithmetic ------------------------------------------------------------------
    def _scaled(self, factor: float, name: str) -> InContextVector:
        return InContextVector(
            self._directions * factor, {**self._metadata, "name": name}, self._layer_scales
        )

    def __mul__(self, factor: object) -> InContextVector:
        k = _as_factor(factor)
        if k is None:
            return NotImplemented
        return self._scaled(k, f"{k:g}*{_wrap(self.name)}")

    __rmul__ = __mul__

    def __truediv__(self, divisor: object) -> InContextVector:
        k = _as_factor(divisor)
        if k is None:
            return NotImplemented
        if k == 0:
            raise OptionError("cannot divide an in-context vector by zero")
        return self._scaled(1.0 / k, f"{_wrap(self.name)}/{k:g}")

    def __neg__(self) -> InContextVector:
        return self._scaled(-1.0, f"-{_wrap(self.name)}")

    def __pos__(self) -> InContextVector:
        return self

    def __add__(self, other: object) -> InContextVector:
        if not isinstance(other, InContextVector):
            return NotImplemented
        return _combine(self, other, 1.0, f"{self.name} + {_wrap(other.name)}")

    def __sub__(self, other: object) -> InContextVector:
        if not isinstance(other, InContextVector):
            return NotImplemented
        return _combine(self, other, -1.0, f"{self.name} - {_wrap(other.name)}")

    def __repr__(self) -> str:
        m = self._metadata
        strength = m["recommended_strength"]
        return (
            f"InContextVector(name={m['name']!r}, model={m['model_name'] or m['model_type']!r}, "
            f"layers={m['num_layers']}, hidden={m['hidden_size']}, method={m['method']!r}, "
            f"demos={m['num_demos']}, injection={m['injection_mode']}@{m['injection_site']}, "
            f"recommended_strength={strength})"
        )

    def equal(self, other: InContextVector) -> bool:
        """Exact equality of directions, scales and metadata."""
        return (
            torch.equal(self._directions, other._directions)
            and torch.equal(self._layer_scales, other._layer_scales)
            and self._metadata == other._metadata
        )


def _library_version() -> str:
    from . import __version__

    return __version__


def _as_factor(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        else:
            return None
    k = float(value)  # type: ignore[arg-type]
    if not math.isfinite(k):
        raise OptionError(f"cannot scale an in-context vector by {k}")
    return k


def _wrap(name: str) -> str:
    return f"({name})" if any(op in name for op in " +-*/") else name


def _combine(a: InContextVector, b: InContextVector, sign: float, name: str) -> InContextVector:
    """``a + sign * b``, keeping each side's recommended strength in effect.

    When both sides recommend the same strength (or none), directions add plainly.
    Otherwise each side is weighted by its own recommended strength, relative to the
    mean of the two, which becomes the sum's recommendation: steering with the sum
    at its default strength applies each part at its own.
    """
    ma, mb = a._metadata, b._metadata
    meta.check_same_model(ma, mb, what=f"cannot combine '{a.name}' and '{b.name}'")
    if (ma["injection_mode"], ma["injection_site"]) != (mb["injection_mode"], mb["injection_site"]):
        raise ModelMismatchError(
            f"cannot combine '{a.name}' ({ma['injection_mode']}@{ma['injection_site']}) with "
            f"'{b.name}' ({mb['injection_mode']}@{mb['injection_site']}): strengths of different "
            "injection modes mean different things; re-extract one of them or set its metadata"
        )
    wa = wb = 1.0
    strength = ma["recommended_strength"]
    if strength != mb["recommended_strength"]:
        default = meta.DEFAULT_STRENGTH[ma["injection_mode"]]
        ra = ma["recommended_strength"] or default
        rb = mb["recommended_strength"] or default
        strength = (ra + rb) / 2
        wa, wb = ra / strength, rb / strength
    scales = (a._layer_scales + b._layer_scales) / 2
    if ma["injection_mode"] == "add":
        # Additive steering adds strength * scale_l * direction_l: fold each side's own
        # scale in, so that the sum adds exactly both sides' deltas (not at a mean scale).
        own_a, own_b = a._layer_scales[:, None], b._layer_scales[:, None]
        directions = (wa * own_a * a._directions + sign * wb * own_b * b._directions) / scales.clamp_min(
            1e-30
        )[:, None]
    else:
        directions = wa * a._directions + sign * wb * b._directions
    merged = {
        **ma,
        "name": name,
        "method": "combination",
        "num_demos": ma["num_demos"] + mb["num_demos"],
        "demos_sha256": _hash_pair(ma["demos_sha256"], mb["demos_sha256"], sign),
        "model_name": ma["model_name"] or mb["model_name"],
        "recommended_strength": strength,
    }
    return InContextVector(directions, merged, scales)


def _hash_pair(a: str, b: str, sign: float) -> str:
    return hashlib.sha256(f"{a}{'+' if sign > 0 else '-'}{b}".encode()).hexdigest()
