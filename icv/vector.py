"""The in-context vector: per-layer directions plus metadata, and its arithmetic.

A vector is a value: every operation returns a new vector.  Directions are
stored per layer; extraction makes each layer's direction unit-norm, and
arithmetic combines them linearly without renormalising or reweighting, so that

* ``steer(v * k, strength=s)`` acts like ``steer(v, strength=k * s)``,
* ``steer(v1 + v2, strength=s)`` is steering with ``v1`` and ``v2`` together at ``s``
  (exactly in the additive mode; in the rotation, one turn towards the sum),
* ``steer(-v)`` pushes the other way.

A sum recommends its parts' strength when they agree and none otherwise;
``v.at(s)`` folds a strength into a vector (``v.at() + w.at()`` at strength 1
applies each at its own recommendation).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import metadata as meta
from .errors import ModelMismatchError, OptionError
from .storage import load_vector, save_vector


class InContextVector:
    """Per-layer steering directions read from demonstrations, with their provenance.

    Made by :func:`icv.extract` (or read with :meth:`load`, :func:`icv.import_gguf`); a
    value: arithmetic (``+ - * /``) and every method return a new vector.  The shifts go
    through arithmetic exactly like the directions: ``(a + 2 * b).shifts`` is
    ``a.shifts + 2 * b.shifts``.

    Args:
        directions: ``(num_layers, hidden_size)`` float tensor, one direction per decoder
            layer (stored float32 on the CPU).
        metadata: the vector's metadata (name, model, method, injection mode and site,
            recommended strength ...; :mod:`icv.metadata` says which fields are required);
            ``hidden_size`` and ``num_layers`` follow from ``directions``.
        layer_scales: ``(num_layers,)``: the typical norm of the residual stream at each
            layer when the vector was made, which gives the additive mode (``mode="add"``)
            the same meaning of strength as the rotation: a fraction of the activation's
            size; ``None``: ones.
        shifts: the shape of ``directions``: the aggregated shift itself, at its own size,
            per layer, which ``steer(..., mode="add", scale="shift")`` adds (CAA /
            steering-vectors); ``None``: unknown (vectors saved in format 1).

    Raises:
        OptionError: a tensor of the wrong shape, values that are not finite, or
            metadata that does not fit the schema.
    """

    __slots__ = ("_directions", "_layer_scales", "_metadata", "_shifts")

    def __init__(
        self,
        directions: torch.Tensor,
        metadata: Mapping[str, Any],
        layer_scales: torch.Tensor | None = None,
        shifts: torch.Tensor | None = None,
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
        if shifts is not None:
            if not isinstance(shifts, torch.Tensor) or shifts.shape != directions.shape:
                raise OptionError(f"shifts must be a tensor of shape {tuple(directions.shape)} or None")
            shifts = shifts.detach().to("cpu", torch.float32).contiguous()
            if not bool(torch.isfinite(shifts).all()):
                raise OptionError("a vector's shifts must be finite")
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
        self._shifts = shifts

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
    def shifts(self) -> torch.Tensor | None:
        """``(num_layers, hidden_size)``: the shift at its own size per layer; ``None`` if unknown."""
        return self._shifts

    def shift_norms(self) -> torch.Tensor | None:
        """The norm of each layer's shift (what varies from layer to layer); ``None`` if unknown."""
        return None if self._shifts is None else self._shifts.norm(dim=-1)

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
        """A copy with some metadata replaced (e.g. ``recommended_strength=0.07``).

        Args:
            **updates: metadata keys and their new values (``hidden_size`` and ``num_layers``
                follow from the directions and cannot be set).

        Returns:
            The new vector; this one is unchanged.
        """
        fixed = {"hidden_size", "num_layers"} & set(updates)
        if fixed:
            raise OptionError(f"{', '.join(sorted(fixed))} follow from the directions' shape")
        return InContextVector(
            self._directions, {**self._metadata, **updates}, self._layer_scales, self._shifts
        )

    @property
    def layers(self) -> list[int] | None:
        """The layers this vector covers (steered by default); ``None``: all of them."""
        layers = self._metadata["layers"]
        return None if layers is None else list(layers)

    def only_layers(self, layers: Iterable[int]) -> InContextVector:
        """A copy that covers only ``layers``.

        The other layers' directions and shifts become zero (a zero row steers
        nothing) and ``layers`` is recorded, so :func:`icv.steer` hooks only those.

        Args:
            layers: layer indices (negative count from the end); at least one.

        Returns:
            The new vector.

        Raises:
            OptionError: an index that is not an integer or is out of range, or no index.
        """
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise OptionError(f"layers must be layer indices, got {layers!r:.40}")
        chosen: set[int] = set()
        indices: Iterable[object] = layers  # checked one by one: callers may pass anything
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, numbers.Integral):
                raise OptionError(f"layer indices must be integers, got {index!r:.40}")
            if not -self.num_layers <= int(index) < self.num_layers:
                raise OptionError(f"layer {index} is out of range for a vector of {self.num_layers} layers")
            chosen.add(int(index) % self.num_layers)
        if not chosen:
            raise OptionError("layers must name at least one layer")
        keep = torch.zeros(self.num_layers, 1)
        keep[sorted(chosen)] = 1.0
        shifts = None if self._shifts is None else self._shifts * keep
        metadata = {**self._metadata, "layers": sorted(chosen)}
        return InContextVector(self._directions * keep, metadata, self._layer_scales, shifts)

    def at(self, strength: float | None = None) -> InContextVector:
        """This vector with a strength folded in: ``self * strength``, recommending strength 1.

        Sums of such vectors apply each part at its own strength when steered at strength 1
        (their default): ``steer(model, p.at() + f.at())`` is ``p`` at its recommendation
        plus ``f`` at its.

        Args:
            strength: the strength to fold in; ``None``: the vector's recommended strength.

        Returns:
            The scaled vector, recommending strength 1.

        Raises:
            OptionError: no strength given and none recommended, or not a finite number.
        """
        if strength is None:
            strength = self.recommended_strength
            if strength is None:
                raise OptionError(
                    f"'{self.name}' has no recommended strength to fold in: give one, e.g. .at(0.06)"
                )
        k = _as_factor(strength)
        if k is None:
            raise OptionError(f"strength must be a number, got {strength!r:.40}")
        return self._scaled(k, f"{k:g}*{_wrap(self.name)}").with_metadata(recommended_strength=1.0)

    def layer_norms(self) -> torch.Tensor:
        """The norm of each layer's direction (1 for a freshly extracted vector)."""
        return self._directions.norm(dim=-1)

    # -- files -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write a self-describing safetensors file atomically (temp file + rename).

        Args:
            path: the file to write (its folder must exist).
            overwrite: replace an existing file (by default an existing file is an error).

        Raises:
            VectorExistsError: ``path`` exists and ``overwrite`` is False.
            VectorFileError: the file cannot be written (a folder, a missing folder, no space).
        """
        save_vector(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InContextVector:
        """Read and validate a vector file.

        Every byte is checked before any tensor is allocated; nothing is unpickled.

        Args:
            path: a vector file written by :meth:`save`.

        Returns:
            The vector.

        Raises:
            VectorFileError: not a valid vector file (the message says what the file is, when known).
            FormatVersionError: a vector file of a newer format than this version reads.
        """
        return cls(*load_vector(path))

    # -- the Hugging Face Hub (icv.hub) -----------------------------------------------
    def save_pretrained(
        self,
        folder: str | os.PathLike[str],
        *,
        repo_id: str | None = None,
        description: str | None = None,
        evaluation: Any = None,
        license: str = "apache-2.0",
        overwrite: bool = False,
    ) -> Path:
        """Write a folder for the Hub: ``vector.safetensors`` and a model card ``README.md``.

        Args:
            folder: the folder (made if missing).
            repo_id: the Hub id the card tells readers to load from.
            description: what the vector does, for the card.
            evaluation: the vector's evaluation for the card: Markdown, or what
                :func:`icv.evaluate` / :func:`icv.calibrate` report (anything with ``markdown()``).
            license: the vector's license as the Hub spells it.
            overwrite: replace the files of an earlier save.

        Returns:
            The folder.
        """
        from .hub import save_pretrained

        return save_pretrained(
            self,
            folder,
            repo_id=repo_id,
            description=description,
            evaluation=evaluation,
            license=license,
            overwrite=overwrite,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_folder: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
    ) -> InContextVector:
        """Load a vector from a Hub id (``owner/name``), a folder :meth:`save_pretrained` wrote, or a file.

        Hub ids go through ``huggingface_hub``'s cache: ``HF_HUB_OFFLINE=1`` (or
        ``local_files_only=True``) reads a cached revision without the network.

        Args:
            name_or_folder: a Hub id, a folder, or a vector file.
            revision: a branch, tag or commit of the Hub repository (default: ``main``).
            cache_dir: the Hub cache to use instead of the default.
            token: a Hub token (default: the logged-in one).
            local_files_only: never use the network.
            force_download: fetch again even if the cache holds the file.

        Returns:
            The vector, checked as :meth:`load` checks every file.
        """
        from .hub import resolve

        return cls.load(
            resolve(
                name_or_folder,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                force_download=force_download,
            )
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        description: str | None = None,
        evaluation: Any = None,
        license: str = "apache-2.0",
    ) -> str:
        """Upload this vector and its model card to the Hub repository ``repo_id`` (made if missing).

        Args:
            repo_id: ``owner/name``.
            private: make a new repository private.
            token: a Hub token with write access (default: the logged-in one).
            revision: the branch to commit to.
            commit_message: the commit's message.
            create_pr: open a pull request instead of committing.
            description: what the vector does, for the card.
            evaluation: the vector's evaluation for the card (Markdown or a report).
            license: the vector's license as the Hub spells it.

        Returns:
            The URL of the commit or pull request.
        """
        from .hub import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            description=description,
            evaluation=evaluation,
            license=license,
        )

    # -- arithmetic ------------------------------------------------------------------
    def _scaled(self, factor: float, name: str) -> InContextVector:
        shifts = None if self._shifts is None else self._shifts * factor
        return InContextVector(
            self._directions * factor, {**self._metadata, "name": name}, self._layer_scales, shifts
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
        """Exact equality of directions, scales, shifts and metadata.

        Args:
            other: the vector to compare with.
        """
        same_shifts = (
            self._shifts is None and other._shifts is None
            if self._shifts is None or other._shifts is None
            else torch.equal(self._shifts, other._shifts)
        )
        return (
            torch.equal(self._directions, other._directions)
            and torch.equal(self._layer_scales, other._layer_scales)
            and same_shifts
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
    k = float(value)
    if not math.isfinite(k):
        raise OptionError(f"cannot scale an in-context vector by {k}")
    return k


def _wrap(name: str) -> str:
    return f"({name})" if any(op in name for op in " +-*/") else name


def _combine(a: InContextVector, b: InContextVector, sign: float, name: str) -> InContextVector:
    """``a + sign * b``: plain addition, so that steering with the sum is steering with both.

    Directions add as they are (in the additive mode through each side's own layer
    scale, so the sum adds exactly both sides' deltas); shifts add.  Nothing is
    reweighted by recommended strengths: the sum recommends its parts' strength when
    they agree, else none (fold strengths in first with :meth:`InContextVector.at`).
    """
    ma, mb = a._metadata, b._metadata
    meta.check_same_model(ma, mb, what=f"combining '{a.name}' and '{b.name}'")
    if (ma["injection_mode"], ma["injection_site"]) != (mb["injection_mode"], mb["injection_site"]):
        raise ModelMismatchError(
            f"cannot combine '{a.name}' ({ma['injection_mode']}@{ma['injection_site']}) with "
            f"'{b.name}' ({mb['injection_mode']}@{mb['injection_site']}): strengths of different "
            "injection modes mean different things; re-extract one of them or set its metadata"
        )
    scales = (a._layer_scales + b._layer_scales) / 2
    if ma["injection_mode"] == "add":
        # Additive steering adds strength * scale_l * direction_l: fold each side's own
        # scale in, so that the sum adds exactly both sides' deltas (not at a mean scale).
        own_a, own_b = a._layer_scales[:, None], b._layer_scales[:, None]
        directions = (own_a * a._directions + sign * own_b * b._directions) / scales.clamp_min(1e-30)[:, None]
    else:
        directions = a._directions + sign * b._directions
    shifts = None if a._shifts is None or b._shifts is None else a._shifts + sign * b._shifts
    merged = {
        **ma,
        "name": name,
        "method": "combination",
        "num_demos": ma["num_demos"] + mb["num_demos"],
        "demos_sha256": _hash_pair(ma["demos_sha256"], mb["demos_sha256"], sign),
        "model_name": ma["model_name"] or mb["model_name"],
        "recommended_strength": _agreed(ma["recommended_strength"], mb["recommended_strength"]),
        "calibrated_with_demos": _agreed(ma["calibrated_with_demos"], mb["calibrated_with_demos"]),
        "preset": _agreed(ma["preset"], mb["preset"]) or "",
        "text_cleaning": _agreed(ma["text_cleaning"], mb["text_cleaning"]) or "mixed",
        "pca_sign": "",
        "layers": _covered(ma["layers"], mb["layers"]),
        "training": None,  # a sum is not what training fitted
    }
    return InContextVector(directions, merged, scales, shifts)


def _covered(a: list[int] | None, b: list[int] | None) -> list[int] | None:
    """The layers a sum covers: both parts' (``None``, all, wins)."""
    return None if a is None or b is None else sorted(set(a) | set(b))


def _agreed(a: Any, b: Any) -> Any:
    """The value both sides share, else ``None``."""
    return a if a == b else None


def _hash_pair(a: str, b: str, sign: float) -> str:
    return hashlib.sha256(f"{a}{'+' if sign > 0 else '-'}{b}".encode()).hexdigest()
