"""Conditions: which prompts a steering should act on (CAST-style gates), and rules combining them.

A :class:`Condition` holds one direction per decoder layer and, at one chosen layer, a
threshold and a comparison: a prompt *matches* when its score at that layer is above
(``">"``) or below (``"<"``) the threshold.  The score is what :mod:`icv.gate` reads:

    score = mean over the prompt's real tokens of (h_t / |h_t|)  .  d / |d|

with ``h_t`` the decoder layer's output (the residual stream) at token ``t`` and ``d``
the layer's direction: a cosine-like number in ``[-1, 1]``.  Normalising each token
first keeps a few huge activations (a BOS "attention sink") from drowning the rest.

Conditions combine into rules with ``a & b``, ``a | b`` and ``~a``; a rule decides
each row from the scores of the conditions it names (:meth:`Rule.evaluate`).

A condition saves as a self-describing safetensors file of its own kind (``icv_kind:
condition`` in the header): the vector loader refuses it with a message that names
it, and :meth:`Condition.load` refuses vector files.  Loading checks every byte as the
vector loader does (:mod:`icv.storage`), before anything is allocated.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import metadata as meta, storage
from .errors import FormatVersionError, ICVError, OptionError, VectorFileError

# The version of the condition file layout (independent of the vector files' version).
FORMAT_VERSION = 1
KIND = storage.CONDITION_KIND
COMPARISONS = (">", "<")
# How a prompt is read (icv.gate): the mean of its tokens' unit states (CAST's reading), or
# its last token's unit state.
POSITIONS = ("prompt_mean", "prompt_last")
# How the directions were estimated (icv.condition_search): the difference of the two sets'
# mean readings (CAST's), or a logistic-regression probe on them.  The gate reads either the
# same way: a direction and a threshold.
ESTIMATORS = ("mean", "probe")

# key -> (type, required)
_SCHEMA: dict[str, tuple[type, bool]] = {
    "icv_kind": (str, True),
    "icv_format_version": (int, True),
    "library_version": (str, True),
    "name": (str, True),
    "model_name": (str, True),
    "model_type": (str, True),
    "hidden_size": (int, True),
    "num_layers": (int, True),
    "layer": (int, True),
    "threshold": (float, True),
    "comparison": (str, True),
    "positions": (str, True),
    # What the grid search found on the held-out texts (absent for a hand-made condition).
    "f1": (float, False),
    "confusion": (dict, False),
    "layer_f1": (list, False),
    "num_matching": (int, False),
    "num_other": (int, False),
    # How the directions were estimated (absent in files written before the probe: "mean").
    "estimator": (str, False),
    "l2": (float, False),
}
_CONFUSION = ("tp", "fp", "tn", "fn")


def _library_version() -> str:
    from . import __version__

    return __version__


class Rule:
    """A decision per row from condition scores: a :class:`Condition`, or conditions combined.

    Combine with ``a & b`` (both), ``a | b`` (either) and ``~a`` (not); pass a rule to
    :func:`icv.steer` as ``when=``.
    """

    def evaluate(self, scores: Mapping[Condition, torch.Tensor]) -> torch.Tensor:
        """Which rows the rule accepts, from each condition's scores.

        Args:
            scores: for each condition the rule names (:attr:`conditions`), a ``(rows,)``
                tensor of its scores.

        Returns:
            A ``(rows,)`` bool tensor: ``True`` where the rule accepts the row.
        """
        raise NotImplementedError

    @property
    def conditions(self) -> list[Condition]:
        """The distinct conditions the rule names, in the order they first appear."""
        raise NotImplementedError

    def __and__(self, other: object) -> Rule:
        return _Both(self, _as_rule(other, "&"))

    def __or__(self, other: object) -> Rule:
        return _Either(self, _as_rule(other, "|"))

    def __invert__(self) -> Rule:
        return _Not(self)

    def __rand__(self, other: object) -> Rule:
        return _Both(_as_rule(other, "&"), self)

    def __ror__(self, other: object) -> Rule:
        return _Either(_as_rule(other, "|"), self)

    def describe(self) -> str:
        """The rule in words: condition names joined by ``&``, ``|`` and ``~``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Rule {self.describe()}>"


def _as_rule(value: object, operator: str) -> Rule:
    if not isinstance(value, Rule):
        raise OptionError(f"'{operator}' combines icv conditions and rules, not {type(value).__name__}")
    return value


def _unique(conditions: Sequence[Condition]) -> list[Condition]:
    seen: dict[int, Condition] = {}
    for condition in conditions:
        seen.setdefault(id(condition), condition)
    return list(seen.values())


class _Both(Rule):
    def __init__(self, left: Rule, right: Rule) -> None:
        self.left, self.right = left, right

    def evaluate(self, scores: Mapping[Condition, torch.Tensor]) -> torch.Tensor:
        return self.left.evaluate(scores) & self.right.evaluate(scores)

    @property
    def conditions(self) -> list[Condition]:
        return _unique([*self.left.conditions, *self.right.conditions])

    def describe(self) -> str:
        return f"({self.left.describe()} & {self.right.describe()})"


class _Either(Rule):
    def __init__(self, left: Rule, right: Rule) -> None:
        self.left, self.right = left, right

    def evaluate(self, scores: Mapping[Condition, torch.Tensor]) -> torch.Tensor:
        return self.left.evaluate(scores) | self.right.evaluate(scores)

    @property
    def conditions(self) -> list[Condition]:
        return _unique([*self.left.conditions, *self.right.conditions])

    def describe(self) -> str:
        return f"({self.left.describe()} | {self.right.describe()})"


class _Not(Rule):
    def __init__(self, inner: Rule) -> None:
        self.inner = inner

    def evaluate(self, scores: Mapping[Condition, torch.Tensor]) -> torch.Tensor:
        return ~self.inner.evaluate(scores)

    @property
    def conditions(self) -> list[Condition]:
        return self.inner.conditions

    def describe(self) -> str:
        return f"~{self.inner.describe()}"


class Condition(Rule):
    """Directions per layer, and at one layer a threshold and comparison that decide a prompt.

    Made by :func:`icv.extract_condition` (or read with :meth:`load`).  A value, and a
    :class:`Rule`: ``icv.steer(model, vec, s, when=cond)`` steers only the rows whose
    prompt matches; ``a & ~b`` combines conditions.

    Args:
        directions: ``(num_layers, hidden_size)`` float tensor, one direction per decoder
            layer (stored float32 on the CPU; only :attr:`layer`'s is used, at unit length).
        metadata: ``layer``, ``threshold``, ``comparison`` (``">"`` or ``"<"``), the model's
            ``model_name`` and ``model_type``, and optionally ``name``, what the grid
            search found (``f1``, ``confusion``, ``layer_f1``, ``num_matching``,
            ``num_other``) and how the directions were estimated (``estimator``,
            ``"mean"`` or ``"probe"``, and the probe's ``l2``); ``hidden_size`` and
            ``num_layers`` follow from ``directions``.

    Raises:
        OptionError: a tensor of the wrong shape or not finite, a layer out of range, a
            zero direction at the chosen layer, a threshold that is not finite, or an
            unknown comparison.
    """

    __slots__ = ("_directions", "_metadata", "_unit")

    def __init__(self, directions: torch.Tensor, metadata: Mapping[str, Any]) -> None:
        if not isinstance(directions, torch.Tensor) or directions.dim() != 2 or 0 in directions.shape:
            raise OptionError("a condition's directions must be a tensor of shape (num_layers, hidden_size)")
        directions = directions.detach().to("cpu", torch.float32).contiguous()
        if not bool(torch.isfinite(directions).all()):
            raise OptionError("a condition's directions must be finite")
        if not isinstance(metadata, Mapping):
            raise OptionError("a condition's metadata must be a mapping")
        full = dict(metadata)
        full.setdefault("icv_kind", KIND)
        full.setdefault("icv_format_version", FORMAT_VERSION)
        full.setdefault("library_version", _library_version())
        full.setdefault("name", "condition")
        full.setdefault("positions", POSITIONS[0])
        full["hidden_size"], full["num_layers"] = int(directions.shape[1]), int(directions.shape[0])
        self._metadata = _validate(full, source="condition", error=OptionError)
        chosen = directions[self._metadata["layer"]]
        norm = float(chosen.norm())
        if norm == 0.0:
            raise OptionError(f"the condition's direction at its layer {self._metadata['layer']} is zero")
        self._directions = directions
        self._unit = chosen / norm

    # -- read-only views ----------------------------------------------------------------
    @property
    def directions(self) -> torch.Tensor:
        """``(num_layers, hidden_size)``: one direction per layer."""
        return self._directions

    @property
    def direction(self) -> torch.Tensor:
        """``(hidden_size,)``: the chosen layer's direction at unit length (what scores are read on)."""
        return self._unit

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata."""
        return dict(self._metadata)

    @property
    def name(self) -> str:
        return self._metadata["name"]

    @property
    def layer(self) -> int:
        return self._metadata["layer"]

    @property
    def threshold(self) -> float:
        return self._metadata["threshold"]

    @property
    def comparison(self) -> str:
        return self._metadata["comparison"]

    @property
    def positions(self) -> str:
        """How a prompt is read: ``"prompt_mean"`` (its tokens' mean) or ``"prompt_last"`` (its last token)."""
        return self._metadata["positions"]

    @property
    def estimator(self) -> str:
        """How the directions were estimated: ``"mean"`` (the sets' mean difference) or ``"probe"``."""
        return self._metadata["estimator"] or ESTIMATORS[0]

    @property
    def num_layers(self) -> int:
        return self._metadata["num_layers"]

    @property
    def hidden_size(self) -> int:
        return self._metadata["hidden_size"]

    @property
    def f1(self) -> float | None:
        """The held-out F1 the grid search found (``None`` for a hand-made condition)."""
        return self._metadata["f1"]

    @property
    def confusion(self) -> dict[str, int] | None:
        """Held-out counts ``{"tp", "fp", "tn", "fn"}`` (matching = positive), or ``None``."""
        confusion = self._metadata["confusion"]
        return None if confusion is None else dict(confusion)

    @property
    def layer_f1(self) -> list[float] | None:
        """The best held-out F1 at each layer (``None`` for a hand-made condition)."""
        layer_f1 = self._metadata["layer_f1"]
        return None if layer_f1 is None else list(layer_f1)

    def with_threshold(
        self, threshold: float, comparison: str | None = None, layer: int | None = None
    ) -> Condition:
        """A copy deciding with another threshold (and optionally comparison and layer).

        The grid search's figures (F1, counts) are dropped: they described the old choice.

        Args:
            threshold: the new threshold (finite).
            comparison: ``">"`` or ``"<"``; ``None`` keeps this one's.
            layer: the layer to read; ``None`` keeps this one's.

        Returns:
            The new condition.
        """
        updates = {
            "threshold": threshold,
            "comparison": self.comparison if comparison is None else comparison,
            "layer": self.layer if layer is None else layer,
            "f1": None,
            "confusion": None,
        }
        return Condition(self._directions, {**self._metadata, **updates})

    # -- deciding -------------------------------------------------------------------------
    def matches(self, scores: torch.Tensor) -> torch.Tensor:
        """Which scores match: ``scores > threshold`` (or ``<``); NaN scores never match.

        Args:
            scores: this condition's scores, any shape.

        Returns:
            A bool tensor of the same shape.
        """
        return scores > self.threshold if self.comparison == ">" else scores < self.threshold

    def evaluate(self, scores: Mapping[Condition, torch.Tensor]) -> torch.Tensor:
        """Which rows match, from ``scores[self]``.

        Args:
            scores: at least this condition's ``(rows,)`` scores.

        Returns:
            A ``(rows,)`` bool tensor.
        """
        if self not in scores:
            raise OptionError(f"no scores given for condition '{self.name}'")
        return self.matches(scores[self])

    @property
    def conditions(self) -> list[Condition]:
        return [self]

    def describe(self) -> str:
        return self.name

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return other is self

    def __repr__(self) -> str:
        f1 = "" if self.f1 is None else f" f1={self.f1:.3f}"
        return (
            f"<Condition '{self.name}' layer={self.layer} score {self.comparison} "
            f"{self.threshold:.4g}{f1} ({self._metadata['model_name']})>"
        )

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write a self-describing safetensors file of the condition kind, atomically.

        Args:
            path: the file to write (its folder must exist).
            overwrite: replace an existing file (by default an existing file is an error).

        Raises:
            VectorExistsError: ``path`` exists and ``overwrite`` is False.
            VectorFileError: the file cannot be written.
        """
        storage.write_file(to_bytes(self), path, overwrite=overwrite, what="a condition")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Condition:
        """Read and validate a condition file (every byte checked before anything is allocated).

        Args:
            path: a file written by :meth:`save`.

        Returns:
            The condition.

        Raises:
            VectorFileError: not a valid condition file (a steering vector's file says so).
            FormatVersionError: a condition file of a newer format than this version reads.
        """
        file = storage._as_path(path)
        return from_bytes(storage._read_bounded(file), source=str(file))

    def save_pretrained(
        self,
        folder: str | os.PathLike[str],
        *,
        repo_id: str | None = None,
        description: str | None = None,
        license: str = "apache-2.0",
        overwrite: bool = False,
    ) -> Path:
        """Write a folder with ``condition.safetensors`` and a model card, as a Hub repository holds it.

        Args:
            folder: the folder (made if missing).
            repo_id: the Hub id the card tells readers to load from.
            description: what the condition matches, for the card.
            license: the license on the Hub.
            overwrite: replace the files of an earlier save.

        Returns:
            The folder.
        """
        from .condition_hub import save_pretrained

        return save_pretrained(
            self, folder, repo_id=repo_id, description=description, license=license, overwrite=overwrite
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
    ) -> Condition:
        """Load a condition from a Hub id (``owner/name``), a folder :meth:`save_pretrained` wrote, or a file.

        A vector's folder or repository is refused with a message that names it.

        Args:
            name_or_folder: a Hub id, a folder, or a condition file.
            revision: a branch, tag or commit of the Hub repository.
            cache_dir: the Hub cache to use instead of the default.
            token: a Hub token (default: the logged-in one).
            local_files_only: never use the network.
            force_download: fetch again even if the cache holds the file.

        Returns:
            The condition, checked as :meth:`load` checks every file.
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
                kind="condition",
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
        license: str = "apache-2.0",
    ) -> str:
        """Upload the condition's folder (:meth:`save_pretrained`) to the Hub repository ``repo_id``.

        Args:
            repo_id: ``owner/name`` (made if missing).
            private: make a new repository private.
            token: a Hub token with write access.
            revision: the branch to commit to.
            commit_message: the commit's message.
            create_pr: open a pull request instead of committing.
            description: what the condition matches, for the card.
            license: the license on the Hub.

        Returns:
            The URL of the commit (or pull request).
        """
        from .condition_hub import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
            description=description,
            license=license,
        )


# -- the file format -------------------------------------------------------------------


def to_bytes(condition: Condition) -> bytes:
    """The complete file contents for ``condition``."""
    from safetensors.torch import save as save_safetensors_bytes

    tensors = {f"direction.{l}": row.clone() for l, row in enumerate(condition.directions)}
    metadata = {k: v for k, v in condition.metadata.items() if v is not None}
    # Sorted as a vector file's are: the same condition is the same bytes (what a server's sha256 says).
    return storage._sorted_metadata(save_safetensors_bytes(tensors, metadata=meta.encode(metadata)))


def from_bytes(data: bytes, *, source: str = "condition file") -> Condition:
    """Parse a condition from file contents, checking everything before allocating.

    Args:
        data: the file's bytes.
        source: what to call the file in error messages.

    Returns:
        The condition.
    """
    header = storage._parse_header(data, source)
    raw_meta = header.pop("__metadata__", None)
    if not isinstance(raw_meta, dict):
        raise VectorFileError(f"{source}: no icv metadata in the header (not an icv condition file)")
    if raw_meta.get("icv_kind") != KIND:
        if "icv_kind" not in raw_meta and "injection_mode" in raw_meta:
            raise VectorFileError(
                f"{source} is an icv steering vector, not a condition: load it with "
                "icv.InContextVector.load and pass it as the vector (a condition goes in when=)"
            )
        raise VectorFileError(
            f"{source}: not an icv condition file (icv_kind is {raw_meta.get('icv_kind')!r:.40})"
        )
    metadata = _decode(raw_meta, source)
    num_layers, hidden = metadata["num_layers"], metadata["hidden_size"]
    if num_layers > storage.MAX_LAYERS or hidden > storage.MAX_HIDDEN:
        raise VectorFileError(
            f"{source}: {num_layers} layers of width {hidden} is larger than any model icv reads"
        )
    body = memoryview(data)[8 + storage._header_length(data) :]
    if len(header) != num_layers:
        raise VectorFileError(
            f"{source}: the metadata says {num_layers} layers, but the file lists {len(header)} tensors"
        )
    if len(body) != 4 * num_layers * hidden:
        raise VectorFileError(
            f"{source}: {len(body)} bytes of tensor data, but {num_layers} layers of width {hidden} "
            f"need {4 * num_layers * hidden} (a truncated or altered file?)"
        )
    names = {f"direction.{l}" for l in range(num_layers)}
    if set(header) != names:
        unexpected = sorted(set(header) - names)[:3]
        raise VectorFileError(f"{source}: tensors do not match the metadata: unexpected {unexpected}")
    storage.check_tensor_spans(header, dict.fromkeys(names, hidden), len(body), source)
    directions = storage._read_rows(body, header, "direction", num_layers)
    try:
        return Condition(directions, metadata)
    except OptionError as error:
        raise VectorFileError(f"{source}: {error}") from None


def _decode(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    version = raw.get("icv_format_version")
    if isinstance(version, str) and version.isdigit() and len(version) < 10 and int(version) > FORMAT_VERSION:
        raise FormatVersionError(
            f"{source} was written in icv condition format version {version}; this library reads "
            f"versions up to {FORMAT_VERSION}: upgrade icv to load it"
        )
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise VectorFileError(f"{source}: metadata '{key}' is not a string")
        if key == "format" or key not in _SCHEMA:
            continue
        if _SCHEMA[key][0] is str:
            typed[key] = value
            continue
        try:
            typed[key] = json.loads(value)
        except (ValueError, RecursionError):
            raise VectorFileError(
                f"{source}: metadata '{key}' cannot be read as JSON: {value[:60]!r}"
            ) from None
    return _validate(typed, source=source, error=VectorFileError)


def _validate(metadata: Mapping[str, Any], *, source: str, error: type[ICVError]) -> dict[str, Any]:
    """A clean, typed copy of a condition's metadata, or ``error``."""
    clean: dict[str, Any] = {}
    for key, (kind, required) in _SCHEMA.items():
        value = metadata.get(key)
        if value is None:
            if required:
                raise error(f"{source} lacks the metadata field '{key}'")
            clean[key] = None
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise error(f"{source}: metadata '{key}' is too large to be a number") from None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise error(f"{source}: metadata '{key}' should be {kind.__name__}, got {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{source}: metadata '{key}' must be finite, got {value}")
        clean[key] = value
    if clean["icv_kind"] != KIND:
        raise error(f"{source}: icv_kind is {clean['icv_kind']!r:.40}, not '{KIND}'")
    if not 1 <= clean["icv_format_version"] <= FORMAT_VERSION:
        raise error(
            f"{source}: condition format version {clean['icv_format_version']} is not one this library reads"
        )
    for key in ("hidden_size", "num_layers"):
        if clean[key] < 1:
            raise error(f"{source}: metadata '{key}' must be positive, got {clean[key]}")
    if not 0 <= clean["layer"] < clean["num_layers"]:
        raise error(
            f"{source}: layer {clean['layer']} is out of range for a condition of {clean['num_layers']} layers"
        )
    if clean["comparison"] not in COMPARISONS:
        raise error(f"{source}: comparison {clean['comparison']!r:.20} is not one of '>', '<'")
    if clean["positions"] not in POSITIONS:
        raise error(
            f"{source}: positions {clean['positions']!r:.40} is not one this library reads "
            f"({', '.join(POSITIONS)})"
        )
    if clean["estimator"] is not None and clean["estimator"] not in ESTIMATORS:
        raise error(
            f"{source}: estimator {clean['estimator']!r:.40} is not one this library knows "
            f"({', '.join(ESTIMATORS)})"
        )
    if clean["l2"] is not None and clean["l2"] <= 0:
        raise error(f"{source}: metadata 'l2' must be positive, got {clean['l2']}")
    for key in ("num_matching", "num_other"):
        if clean[key] is not None and clean[key] < 0:
            raise error(f"{source}: metadata '{key}' is negative")
    if clean["f1"] is not None and not 0.0 <= clean["f1"] <= 1.0:
        raise error(f"{source}: metadata 'f1' must be between 0 and 1, got {clean['f1']}")
    confusion = clean["confusion"]
    if confusion is not None:
        if set(confusion) != set(_CONFUSION) or not all(
            isinstance(confusion[k], int) and not isinstance(confusion[k], bool) and confusion[k] >= 0
            for k in _CONFUSION
        ):
            raise error(
                f"{source}: metadata 'confusion' must hold counts tp, fp, tn, fn, got {str(confusion)[:60]}"
            )
        clean["confusion"] = {k: confusion[k] for k in _CONFUSION}
    layer_f1 = clean["layer_f1"]
    if layer_f1 is not None and (
        len(layer_f1) != clean["num_layers"]
        or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 <= f <= 1.0 for f in layer_f1
        )
    ):
        raise error(f"{source}: metadata 'layer_f1' must hold one F1 in [0, 1] per layer")
    if layer_f1 is not None:
        clean["layer_f1"] = [float(f) for f in layer_f1]
    return clean


def is_condition_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a condition file (its header's first bytes say so); nothing is validated."""
    from .filekinds import _head

    head = _head(storage._as_path(path))
    return head is not None and b'"icv_kind":"condition"' in head.replace(b" ", b"")


def read_condition(name: str | os.PathLike[str]) -> Condition:
    """The condition the command line names: a condition file, a ``save_pretrained`` folder or a Hub id.

    Args:
        name: the file's or folder's path, or ``owner/name``.

    Returns:
        The condition.

    Raises:
        VectorFileError: nothing of that name, or not a valid condition.
    """
    from .hub import is_hub_id

    if not os.path.exists(name) and not is_hub_id(os.fspath(name)):
        raise VectorFileError(f"no condition file '{os.fspath(name)[:200]}'")
    return Condition.from_pretrained(name)


def as_rule(when: object) -> Rule:
    """``when`` checked as a :class:`Rule` (a condition or a combination), or :class:`OptionError`."""
    if isinstance(when, Rule):
        return when
    kind = "a steering vector" if type(when).__name__ == "InContextVector" else type(when).__name__
    raise OptionError(
        f"when= takes an icv.Condition or a rule of them (a & ~b), not {kind}: make one with "
        "icv.extract_condition or icv.Condition.load"
    )


# -- rules written as text (the server's steering_when, the command line) ------------------


def rule_text(rule: Rule, names: Mapping[Condition, str]) -> str:
    """``rule`` written as :func:`parse_rule` reads it, each condition under ``names[condition]``.

    What a request's ``steering_when`` carries when the conditions are served under other
    names than their own (the evaluation engines' generated or served names).

    Args:
        rule: a condition or a combination of them.
        names: the name to write for each condition the rule names.

    Returns:
        The text, e.g. ``"(cond0 & ~cond1)"``.

    Raises:
        OptionError: a rule of a kind icv does not make (it has no text).
    """
    if isinstance(rule, Condition):
        return names[rule]
    if isinstance(rule, _Both):
        return f"({rule_text(rule.left, names)} & {rule_text(rule.right, names)})"
    if isinstance(rule, _Either):
        return f"({rule_text(rule.left, names)} | {rule_text(rule.right, names)})"
    if isinstance(rule, _Not):
        return f"~{rule_text(rule.inner, names)}"
    raise OptionError(f"a {type(rule).__name__} cannot be written as a rule of condition names")


MAX_RULE_CHARS = 500


def parse_rule(text: str, lookup: Callable[[str], Condition]) -> Rule:
    """The rule ``text`` writes with condition names, ``&``, ``|``, ``~`` and parentheses.

    ``~`` binds tightest, then ``&``, then ``|`` (``a | b & ~c`` is ``a | (b & ~c)``).
    Names are letters, digits and ``_ - . : /`` (the command line's names are file paths).

    Args:
        text: the rule, e.g. ``"toxic & ~question"``.
        lookup: the condition a name stands for (raising what the caller wants for an unknown name).

    Returns:
        The rule.

    Raises:
        OptionError: text that is not such a rule.
    """
    if not isinstance(text, str) or not text.strip():
        raise OptionError("a rule must be a non-empty text of condition names, &, |, ~ and parentheses")
    if len(text) > MAX_RULE_CHARS:
        raise OptionError(f"a rule is at most {MAX_RULE_CHARS} characters long")
    tokens = re.findall(r"[A-Za-z0-9_\-.:/]+|[&|~()]|\S", text)
    parser = _RuleParser(tokens, lookup)
    rule = parser.either()
    if parser.position != len(tokens):
        raise OptionError(f"unexpected {tokens[parser.position]!r:.20} in the rule {text!r:.80}")
    return rule


class _RuleParser:
    def __init__(self, tokens: list[str], lookup: Callable[[str], Condition]) -> None:
        self.tokens, self.lookup, self.position, self.depth = tokens, lookup, 0, 0

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def either(self) -> Rule:
        rule = self.both()
        while self._peek() == "|":
            self.position += 1
            rule = rule | self.both()
        return rule

    def both(self) -> Rule:
        rule = self.unary()
        while self._peek() == "&":
            self.position += 1
            rule = rule & self.unary()
        return rule

    def unary(self) -> Rule:
        token = self._peek()
        if token is None:
            raise OptionError("the rule ends where a condition name was expected")
        self.position += 1
        if token == "~":
            return ~self.unary()
        if token == "(":
            self.depth += 1
            if self.depth > 50:
                raise OptionError("the rule nests parentheses too deeply")
            rule = self.either()
            if self._peek() != ")":
                raise OptionError("a '(' in the rule is not closed")
            self.position += 1
            self.depth -= 1
            return rule
        if not re.fullmatch(r"[A-Za-z0-9_\-.:/]+", token):
            raise OptionError(f"unexpected {token!r:.20} in the rule where a condition name was expected")
        return self.lookup(token)
