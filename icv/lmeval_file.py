"""Steering files for lm-evaluation-harness's own ``steered`` model (``icv export --format lm-eval``).

lm-eval's ``steered`` model (``lm_eval/models/hf_steered.py``, 0.4.13) reads a ``.pt`` file
(``torch.save`` of a dict) of the form::

    {hookpoint: {"steering_vector": Tensor[hidden], "steering_coefficient": float,
                 "action": "add", "bias": None, "head_index": None}, ...}

and, for ``action="add"``, adds ``steering_coefficient * steering_vector`` to the output of the
module named ``hookpoint`` in ``model.base_model.named_modules()`` (the first element when the
output is a tuple), at every position, around every forward pass.  That is icv's additive mode
(``mode="add"``) with ``positions="all"``:

* the hookpoint of layer ``l`` is the decoder layer's path under the base model
  (``layers.l`` for Llama-like models, ``h.l`` for GPT-2, ``decoder.layers.l`` for OPT), with
  ``.mlp`` / ``.self_attn`` (the model type's own names) appended for the ``mlp`` / ``attn``
  sites;
* ``steering_vector`` is what icv adds at strength 1 (``weight_l * layer_scales[l] * v_l``, or
  ``weight_l * shifts[l]`` with ``scale="shift"``), ``steering_coefficient`` the strength, so
  the file's coefficient can be edited by hand;
* layers of weight 0 (or a zero direction) are left out.

icv's rotation (``mode="rotate"``, the paper's) turns each activation by an amount that depends
on the activation itself: no fixed vector added (nor lm-eval's clamp) expresses it, so a
rotating vector is refused; export it with ``mode="add"`` (what ``icv generate --mode add``
does), or run the rotation itself in lm-eval with the ``icv`` model (:mod:`icv.harness`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import OptionError, VectorExistsError, VectorFileError
from .layers import ARCHITECTURES, SITES
from .steer import SCALES, layer_deltas, layer_weights
from .storage import new_file_mode
from .strength import planned_strength, warn_default
from .vector import InContextVector


@dataclass(frozen=True)
class LMEvalExport:
    """What :func:`export_lm_eval` wrote."""

    path: Path
    strength: float
    site: str
    hookpoints: tuple[str, ...]


def hookpoint_prefix(model_type: str, site: str) -> tuple[str, str]:
    """``(before, after)`` the layer index in a hookpoint: ``("layers.", ".mlp")`` for Llama's MLP.

    Args:
        model_type: transformers' ``model_type`` of the model the vector was made on.
        site: ``block``, ``mlp`` or ``attn``.
    """
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise OptionError(
            f"cannot name lm-eval hookpoints for the model type '{model_type}': icv does not know where "
            "its layers are (icv.register_architecture teaches it)"
        )
    # lm-eval names modules under model.base_model, whose attribute is the first part of the
    # layers' path in every architecture icv knows ("model" of "model.layers").
    _, _, under_base = arch.layers.partition(".")
    after = {"block": "", "mlp": f".{arch.mlp}", "attn": f".{arch.attn}"}[site]
    return (f"{under_base}." if under_base else ""), after


def export_lm_eval(
    vector: InContextVector,
    path: str | os.PathLike[str],
    *,
    strength: float | None = None,
    mode: str | None = None,
    site: str | None = None,
    layers: Iterable[int] | Mapping[int, float] | None = None,
    scale: str = "activation",
    overwrite: bool = False,
) -> LMEvalExport:
    """Write ``vector`` as the ``.pt`` steering file of lm-eval's ``steered`` model.

    ``lm_eval --model steered --model_args pretrained=MODEL,steer_path=FILE.pt`` then steers
    like ``icv.steer(model, vector, strength, mode="add", site=site, layers=layers,
    scale=scale)``.  Written atomically.

    Args:
        vector: the vector to export.
        path: the ``.pt`` file to write.
        strength: the steering coefficient; ``None``: the vector's recommendation for
            ``add`` at ``site``, else icv's additive default (with a warning).
        mode: must be ``"add"`` (or ``None`` for a vector that adds); a rotation is refused.
        site: ``block``, ``mlp`` or ``attn``; ``None``: the vector's.
        layers: the layers to steer, or a per-layer profile ``{layer: weight}``; ``None``:
            the layers the vector covers.
        scale: ``activation`` or ``shift`` (as :func:`icv.steer`).
        overwrite: replace an existing file.

    Returns:
        What was written: the path, the strength, the site and the hookpoints.

    Raises:
        OptionError: a rotating vector (or ``mode="rotate"``), an unknown site or scale, or a
            model type whose layers icv does not know.
        VectorExistsError: ``path`` exists and ``overwrite`` is False.
        VectorFileError: the file cannot be written.
    """
    if not isinstance(vector, InContextVector):
        raise OptionError("export_lm_eval needs an icv.InContextVector")
    m = vector.metadata
    mode = mode if mode is not None else m["injection_mode"]
    site = site if site is not None else m["injection_site"]
    if mode != "add":
        raise OptionError(
            f"'{vector.name}' steers by rotation (mode={mode}), which lm-eval's steered model cannot "
            "express: it only adds a fixed vector, and a rotation depends on each activation. Export "
            "with --mode add (what `icv generate --mode add` does), or run the rotation itself with "
            "`python -m icv.harness --model icv --model_args pretrained=...,vector=...`"
        )
    if site not in SITES:
        raise OptionError(f"unknown site {site!r}: choose one of {', '.join(SITES)}")
    if scale not in SCALES:
        raise OptionError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    if scale == "shift" and vector.shifts is None:
        raise OptionError(f"'{vector.name}' holds no shifts: export it with scale='activation'")
    if strength is None:
        planned = planned_strength(vector, "add", site)
        warn_default(vector, planned, "add", stacklevel=2)
        strength = planned.value
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise OptionError(f"strength must be a finite number, got {strength!r:.40}")
    covered = vector.layers if layers is None else layers
    weights = layer_weights(covered, vector.num_layers)
    deltas = layer_deltas([vector], [1.0], weights, "add", scale)[0]
    before, after = hookpoint_prefix(str(m["model_type"]), site)
    config = {}
    for layer in range(vector.num_layers):
        if float(weights[layer]) == 0.0 or not bool(deltas[layer].any()):
            continue
        config[f"{before}{layer}{after}"] = {
            "steering_vector": deltas[layer].clone().float(),
            "steering_coefficient": float(strength),
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    if not config:
        raise OptionError(f"'{vector.name}' adds nothing at the layers chosen: no file written")
    target = Path(path)
    if target.exists() and not overwrite:
        raise VectorExistsError(f"'{target}' exists: pass overwrite=True (--force) to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
        try:
            torch.save(config, temporary)
            os.chmod(temporary, new_file_mode())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise VectorFileError(f"cannot write '{target}': {error.strerror or error}") from None
    return LMEvalExport(target, float(strength), site, tuple(config))
