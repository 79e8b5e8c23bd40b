"""Extraction presets: named sets of extraction choices, resolved once against the caller's options.

``preset="paper"`` reproduces the authors' reference code (Liu et al., ICML 2024), which
differs from this library's defaults in two ways that change the vector:

* it deletes punctuation and special characters from every demonstration text
  (:func:`icv.demos.strip_special_characters`), so the last token read is a word piece;
* it fixes the principal component's sign by scikit-learn's ``svd_flip`` rule (the
  demonstration with the largest absolute score gets a positive score), not by the mean;

and reads the embedding row from the token-embedding module's output (the same as the
first block's input for llama-like models; different where position embeddings are added
after it, e.g. gpt2).  Everything else (raw text, the last token of every block plus the
embeddings, PCA + mean, the embedding row dropped, rotation at every MLP output) is
this library's default too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .demos import RAW_TEMPLATE
from .errors import OptionError


@dataclass(frozen=True)
class ExtractionSettings:
    """Every choice :func:`icv.extract` makes about how demonstrations become a vector."""

    method: str = "pca"
    site: str = "block"
    template: str = RAW_TEMPLATE
    text_cleaning: str = "none"  # see icv.demos.TEXT_CLEANINGS
    pca_sign: str = "mean"  # see icv.aggregate.PCA_SIGNS
    embedding_row: str = "block_input"  # or "embedding_output": where row 0 of the PCA is read
    preset: str = ""


PRESETS: dict[str, ExtractionSettings] = {
    "paper": ExtractionSettings(
        text_cleaning="reference", pca_sign="svd_flip", embedding_row="embedding_output", preset="paper"
    ),
}

# The options a caller may set directly; a preset fixes them.
_CALLER_OPTIONS = ("method", "site", "template")


def resolve(preset: str | None, **given: Any) -> ExtractionSettings:
    """The settings for ``preset`` (or the defaults), with the caller's options in ``given``.

    ``given`` holds ``method``, ``site`` and ``template`` as passed (``None`` = not given).
    Under a preset, an option that contradicts it is an error rather than a silent mix.
    """
    unknown = set(given) - set(_CALLER_OPTIONS)
    if unknown:
        raise OptionError(f"not extraction options: {', '.join(sorted(unknown))}")
    if preset is None:
        base = ExtractionSettings()
        chosen = {key: value for key, value in given.items() if value is not None}
        return replace(base, **chosen)
    if preset not in PRESETS:
        raise OptionError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    settings = PRESETS[preset]
    for key, value in given.items():
        if value is not None and value != getattr(settings, key):
            raise OptionError(
                f"preset='{preset}' reads demonstrations with {key}={getattr(settings, key)!r}; "
                f"drop {key}={value!r} or drop the preset"
            )
    return settings
