"""Whether a vector's numbers are of a size a model's activations can carry.

A vector file is checked for this when it is read (:func:`icv.InContextVector.load`,
:func:`icv.import_gguf`, a server's ``--vectors`` and uploads), so a file whose numbers
would overflow a model's activations is refused with the reason instead of turning
generations into NaN.  The bounds, and why:

* ``layer_scales[l]`` is the typical norm of the residual stream at layer ``l``.  The
  largest activations reported in LLMs, the "massive activations" of a few dimensions
  (Sun et al., 2024: a few thousand in Llama 2, about 7,000 in Mixtral), keep norms
  below 10^4; float16 itself stops at 65,504 per element.  So a scale, and what a vector
  adds to a layer at strength 1 in the additive mode (``|directions[l]| * layer_scales[l]``,
  in the activation's own units), may be at most :data:`MAX_ACTIVATION_NORM` = 10^5,
  ten times past the largest real activation.  The same bounds the shifts (``|shifts[l]|``),
  which ``scale="shift"`` adds as they are.
* ``directions[l]`` counts in units of that layer's activation norm (extraction stores
  unit-norm directions): at :data:`MAX_RELATIVE_NORM` = 10^3 a direction at strength 1
  pushes a thousand times the activation itself, far past anything that steers rather than
  erases (the served strengths stop at 10, the useful ones are near 0.05; ``vec * 100``
  still loads).  This bound applies where the scales were measured: a GGUF control
  vector's rows are absolute pushes with scales of 1, bounded by the first rule.

A vector inside these bounds can still be driven out of range (a large strength on a
large vector); the server's engine then fails that request alone (see
:mod:`icv.serving.engine`).
"""

from __future__ import annotations

import torch

from .errors import VectorFileError

MAX_ACTIVATION_NORM = 1e5
MAX_RELATIVE_NORM = 1e3


def check_magnitudes(
    directions: torch.Tensor,
    layer_scales: torch.Tensor,
    shifts: torch.Tensor | None,
    *,
    scales_measured: bool,
    source: str,
) -> None:
    """Raise :class:`VectorFileError` naming the first layer whose numbers no model's activations carry.

    ``directions`` and ``shifts``: ``(num_layers, hidden)``; ``layer_scales``: ``(num_layers,)``,
    all finite (checked before).  ``scales_measured``: the scales are activation norms measured
    at extraction (not a GGUF file's stand-in ones), so the relative bound applies too.
    """
    scales = layer_scales.abs().double()
    norms = directions.double().norm(dim=-1)
    _refuse_above(scales, MAX_ACTIVATION_NORM, source, "its layer scale (activation norm) is {value:.3g}")
    _refuse_above(
        norms * scales,
        MAX_ACTIVATION_NORM,
        source,
        "at strength 1 it adds a push of norm {value:.3g} in the additive mode",
    )
    if scales_measured:
        _refuse_above(
            norms,
            MAX_RELATIVE_NORM,
            source,
            "its direction is {value:.3g} times the layer's activation norm",
            limit_text=f"{MAX_RELATIVE_NORM:g} (directions are unit-norm when extracted)",
        )
    if shifts is not None:
        _refuse_above(
            shifts.double().norm(dim=-1), MAX_ACTIVATION_NORM, source, "its shift has norm {value:.3g}"
        )


def _refuse_above(
    values: torch.Tensor, limit: float, source: str, what: str, limit_text: str | None = None
) -> None:
    over = (values > limit).nonzero()
    if over.numel() == 0:
        return
    layer = int(over[0])
    bound = limit_text or f"{limit:g} (no model's activations are that large)"
    raise VectorFileError(
        f"{source}: layer {layer}: {what.format(value=float(values[layer]))}; a vector's numbers must be "
        f"of a size a model's activations carry, at most {bound}"
    )
