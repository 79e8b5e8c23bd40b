"""The metadata an in-context vector carries, its schema and its validation.

Metadata travels in the safetensors header, where every value must be a string:
strings are stored as they are, every other value as JSON.  The schema below is
the single place that says which keys exist and what they hold; loading checks
every key against it before a vector is built.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

from .aggregate import PCA_SIGNS
from .demos import TEXT_CLEANINGS
from .errors import (
    FormatVersionError,
    ICVError,
    ModelMismatchError,
    ModelNameWarning,
    OptionError,
    VectorFileError,
)
from .layers import SITES
from .presets import PRESETS

# 1: directions and layer scales.  2: also the shifts at their own size (optional tensors).
FORMAT_VERSION = 2

MODES = ("rotate", "add")


def default_site(mode: str) -> str:
    """Where ``mode`` steers unless told: the rotation at the MLP output (the paper), addition
    at the block output (llama.cpp, repeng)."""
    return "mlp" if mode == "rotate" else "block"


def check_injection(mode: str, site: str) -> None:
    """Raise :class:`OptionError` unless ``mode`` and ``site`` are ones the library steers with."""
    if mode not in MODES:
        raise OptionError(f"unknown mode '{mode}': choose one of {', '.join(MODES)}")
    if site not in SITES:
        raise OptionError(f"unknown site '{site}': choose one of {', '.join(SITES)}")


# key -> (type, required).  float keys accept ints; None is allowed where noted.
SCHEMA: dict[str, tuple[type, bool]] = {
    "icv_format_version": (int, True),
    "library_version": (str, True),
    "name": (str, True),
    "model_name": (str, True),
    "model_type": (str, True),
    "hidden_size": (int, True),
    "num_layers": (int, True),
    "method": (str, True),
    "extraction_site": (str, True),
    "injection_mode": (str, True),
    "injection_site": (str, True),
    "num_demos": (int, True),
    "demos_sha256": (str, True),
    "prompt_template": (str, True),
    "recommended_strength": (float, False),
    "preset": (str, False),
    "text_cleaning": (str, False),
    "pca_sign": (str, False),
    "layers": (list, False),
    # How many demonstrations were in the prompt when the recommended strength was calibrated
    # (0: the zero-shot prompt the vector replaces them in); None: not calibrated by icv.calibrate.
    "calibrated_with_demos": (int, False),
    # What icv.train did (objective, level, steps, pairs, held-out loss ...); None: not trained.
    "training": (dict, False),
}

# None: no recommended strength; all layers; prompt form unknown.
OPTIONAL_NONE = {"recommended_strength", "layers", "calibrated_with_demos", "training"}

# Keys added after format 1 began, with the value that describes files written before them:
# no preset, no text cleaning, and (for PCA) the component's sign aligned with the mean.
ADDED_DEFAULTS: dict[str, Any] = {"preset": "", "text_cleaning": "none"}


def encode(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Header strings for ``metadata`` (strings verbatim, everything else JSON)."""
    header = {"format": "pt"}
    for key, value in metadata.items():
        header[key] = value if isinstance(value, str) else json.dumps(value)
    return header


def _decode_value(key: str, raw: str, kind: type, source: str) -> Any:
    if kind is str:
        return raw
    try:
        value = json.loads(raw)
    # ValueError covers JSONDecodeError and integers beyond Python's digit limit;
    # deeply nested arrays exhaust the parser's recursion.
    except (ValueError, RecursionError):
        raise VectorFileError(f"{source}: metadata '{key}' cannot be read as JSON: {raw[:60]!r}") from None
    return value


def validate(
    metadata: Mapping[str, Any], *, source: str = "vector", error: type[ICVError] = OptionError
) -> dict[str, Any]:
    """Check ``metadata`` against the schema; return a clean, typed copy.

    Unknown keys are dropped with a warning so that files from a newer minor
    release still load; a newer format version is refused.  ``error`` is what a
    bad value raises: :class:`OptionError` for metadata given in code (the
    default), :class:`VectorFileError` for metadata read from a file.
    """
    clean: dict[str, Any] = {}
    _refuse_newer(metadata.get("icv_format_version"), source)
    for key, (kind, required) in SCHEMA.items():
        if key not in metadata or metadata[key] is None:
            if key in OPTIONAL_NONE:
                clean[key] = None
                continue
            if required:
                raise error(f"{source} lacks the metadata field '{key}'")
            if key in ADDED_DEFAULTS:
                clean[key] = ADDED_DEFAULTS[key]
            continue
        value = metadata[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # found by fuzzing: an integer past float range
                raise error(f"{source}: metadata '{key}' is too large to be a number") from None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise error(f"{source}: metadata '{key}' should be {kind.__name__}, got {value!r:.60}")
        if isinstance(value, float) and kind is float and not math.isfinite(value):
            raise error(f"{source}: metadata '{key}' is not finite ({value})")
        clean[key] = value
    if clean["icv_format_version"] < 1:
        raise error(
            f"{source}: metadata 'icv_format_version' is {clean['icv_format_version']}; versions start at 1"
        )
    for key in ("hidden_size", "num_layers"):
        if clean[key] < 1:
            raise error(f"{source}: metadata '{key}' must be positive, got {clean[key]}")
    if clean["num_demos"] < 0:
        raise error(f"{source}: metadata 'num_demos' is negative")
    if clean["calibrated_with_demos"] is not None and clean["calibrated_with_demos"] < 0:
        raise error(f"{source}: metadata 'calibrated_with_demos' is negative")
    if clean["injection_mode"] not in MODES:
        raise error(f"{source}: injection_mode '{clean['injection_mode']}' is not one of {', '.join(MODES)}")
    for key in ("injection_site", "extraction_site"):
        if clean[key] not in SITES:
            raise error(f"{source}: {key} '{clean[key]}' is not one of {', '.join(SITES)}")
    clean.setdefault("pca_sign", "mean" if clean["method"] == "pca" else "")
    if clean["layers"] is not None:
        clean["layers"] = _layer_list(clean["layers"], clean["num_layers"], source, error)
    if clean["training"] is not None:
        _check_training(clean["training"], source, error)
    # "mixed": a combination of vectors read with different cleanings.
    _check_choice(clean, "text_cleaning", (*TEXT_CLEANINGS, "mixed"), source, error)
    _check_choice(clean, "pca_sign", ("", *PCA_SIGNS), source, error)
    _check_choice(clean, "preset", ("", *PRESETS), source, error)
    unknown = sorted(set(metadata) - set(SCHEMA) - {"format"})
    if unknown:
        warnings.warn(f"{source}: ignoring unknown metadata keys {', '.join(unknown)}", stacklevel=3)
    return clean


def _layer_list(layers: list[Any], num_layers: int, source: str, error: type[ICVError]) -> list[int]:
    """The layers a vector covers: distinct indices in ``0 .. num_layers - 1``, ascending."""
    if not layers or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in layers
    ):
        raise error(
            f"{source}: metadata 'layers' must list layer indices in 0 .. {num_layers - 1}, "
            f"got {str(layers)[:60]}"
        )
    if sorted(set(layers)) != layers:
        raise error(f"{source}: metadata 'layers' must be distinct and ascending, got {str(layers)[:60]}")
    return layers


def _check_training(training: dict[str, Any], source: str, error: type[ICVError]) -> None:
    """``training`` (what :func:`icv.train` did): names to plain values (text, numbers, none)."""
    if not training:
        raise error(f"{source}: metadata 'training' is empty (a trained vector records what was done)")
    for key, value in training.items():
        plain = value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool)
        if not isinstance(key, str) or not plain or (isinstance(value, float) and not math.isfinite(value)):
            raise error(f"{source}: metadata 'training' must map names to text or numbers, got {key!r:.40}")


def _check_choice(
    clean: dict[str, Any], key: str, choices: tuple[str, ...], source: str, error: type[ICVError]
) -> None:
    if clean[key] not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise error(f"{source}: metadata '{key}' is {clean[key]!r:.40}, not one of {shown}")


def _refuse_newer(version: object, source: str) -> None:
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{source} was written in icv format version {str(version)[:12]}; this library reads "
            f"versions up to {FORMAT_VERSION}: upgrade icv to load it"
        )


def decode(header: Mapping[str, str], *, source: str) -> dict[str, Any]:
    """Typed, validated metadata from the strings of a safetensors header."""
    # The version decides how everything else is read: a newer file is refused
    # as such, before any field it may have changed is found wanting.
    version = header.get("icv_format_version")
    if isinstance(version, str) and version.isdigit() and len(version) < 10:
        _refuse_newer(int(version), source)
    typed: dict[str, Any] = {}
    for key, raw in header.items():
        if not isinstance(raw, str):
            raise VectorFileError(f"{source}: metadata '{key}' is not a string")
        kind = SCHEMA.get(key, (str, False))[0]
        typed[key] = _decode_value(key, raw, kind, source)
    return validate(typed, source=source, error=VectorFileError)


def identity(metadata: Mapping[str, Any]) -> tuple[str, str, int, int]:
    """What describes the model a vector belongs to."""
    return (
        metadata["model_type"],
        metadata["model_name"],
        metadata["hidden_size"],
        metadata["num_layers"],
    )


def _same_name(a: str, b: str) -> bool:
    """Names compare by their last path component, so a local copy matches its hub id."""
    if not a or not b:
        return True
    return a.rstrip("/").rsplit("/", 1)[-1].lower() == b.rstrip("/").rsplit("/", 1)[-1].lower()


def check_same_model(a: Mapping[str, Any], b: Mapping[str, Any], *, what: str, strict: bool = False) -> None:
    """Raise :class:`ModelMismatchError` unless ``a`` and ``b`` fit the same model.

    What makes a vector fit is the model type, hidden size and layer count.  A different
    model name (a local copy, a fine-tune, a converted folder) is a :class:`ModelNameWarning`,
    or an error with ``strict=True``.
    """
    problems = []
    for key in ("hidden_size", "num_layers", "model_type"):
        if a[key] != b[key] and (key != "model_type" or (a[key] and b[key])):
            problems.append(f"{key} {a[key]!r} vs {b[key]!r}")
    names_differ = not _same_name(a["model_name"], b["model_name"])
    if names_differ and strict:
        problems.append(f"model_name {a['model_name']!r} vs {b['model_name']!r} (strict)")
    if problems:
        raise ModelMismatchError(f"{what}: different models ({'; '.join(problems)})")
    if names_differ:
        warnings.warn(
            f"{what}: model names differ ({a['model_name']!r} vs {b['model_name']!r}); the type, "
            "hidden size and layer count match, so it is used (strict=True refuses it)",
            ModelNameWarning,
            stacklevel=3,
        )
