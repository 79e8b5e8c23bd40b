"""Steering: inject in-context vectors into a model through removable forward hooks.

Two ways to apply a layer's vector ``delta = strength * weight_l * v_l`` to an
activation ``x`` (at one position):

* ``mode="rotate"`` (the paper): ``x' = normalize(x/|x| + boost * delta) * |x|`` with
  ``boost = 1 + max(0, cos(x, -delta))``, a norm-preserving turn towards ``delta``.
  For one freshly extracted vector (``|v_l| = 1``) this is exactly the reference code's
  injection.
* ``mode="add"`` (llama.cpp, repeng): ``x' = x + strength * weight_l * scale_l * v_l``,
  where ``scale_l`` is the activation's typical size recorded at extraction
  (``scale="activation"``), or ``x' = x + strength * weight_l * shift_l`` with the shift
  at its own size (``scale="shift"``: CAA / steering-vectors).

Both are linear in ``strength * v``, which is what makes vector arithmetic mean
what it says.  :func:`steer_averaged` applies several vectors the reference code's
way instead (each with its own boost, the pushes averaged).  Hooks cast the vector to each activation's device and dtype once
(cached), so half precision and models spread over devices work.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import inject, metadata as meta
from .compiled import table_for
from .condition import Rule
from .errors import OptionError, StackedSteeringWarning, SteeringError
from .gate import Decision, Gate
from .gguf import pad_layers
from .hooks import HookHandles, output_tensor, replace_output

# rotate_towards: re-exported for callers that import it from here (the vLLM plugin, tests).
from .inject import away_directions, rotate_towards  # noqa: F401
from .layers import Architecture, decoder_layers, hidden_size_of, site_modules
from .models import model_name_of
from .options import checked_options
from .positions import POSITIONS, PositionTracker
from .rows import RowGroupCheck
from .strength import planned_strength, warn_default
from .vector import InContextVector

_registry_lock = threading.Lock()
# model -> the live steerings on it; lets us refuse steering from a second thread.
_active: weakref.WeakKeyDictionary[nn.Module, list[Steering]] = weakref.WeakKeyDictionary()

Hook = Callable[[nn.Module, Any, Any], Any]


class Steering:
    """Hooks that steer ``model`` with a vector; a context manager and a handle.

    Made by :func:`steer` (and :func:`steer_averaged`), which check and prepare its
    arguments.  The hooks are live from construction until :meth:`remove` (idempotent)
    or the end of the ``with`` block, which removes them whatever happened inside.  On a
    model prepared by :func:`icv.prepare_for_compile` for this mode and site it adds no
    hooks: it writes into the preparation's buffers, and its removal writes zeros back.

    Args:
        model: the model the hooks go on.
        deltas: ``(rows, layers, hidden)`` float tensor: per batch row (one row: all rows)
            and layer, what the hook applies (the direction times strength and scale).
        layer_weights: ``(layers,)`` weight per layer; layers of weight 0 get no hook.
        mode: ``"rotate"`` or ``"add"``.
        site: ``"block"``, ``"mlp"`` or ``"attn"``.
        positions: ``"all"``, ``"prompt"`` or ``"generated"``.
        architecture: the layer paths for a model type the library does not know, or ``None``.
        description: what ``repr`` shows: the vector's name (or how many vectors).
        average: several vectors on every row, their pushes averaged (see
            :func:`steer_averaged`); ``deltas`` then holds one row per vector.
        gate: decides at each generation's prefill which rows are steered
            (:mod:`icv.gate`); ``None``: every row.
    """

    def __init__(
        self,
        model: nn.Module,
        deltas: torch.Tensor,
        layer_weights: torch.Tensor,
        *,
        mode: str,
        site: str,
        positions: str,
        architecture: Architecture | None,
        description: str,
        average: bool = False,
        gate: Gate | None = None,
    ) -> None:
        self.model = model
        self.gate = gate
        self.mode = mode
        self.site = site
        self.positions = positions
        self.description = description
        self._handles = HookHandles()
        self._thread = threading.get_ident()
        self._entered = False
        self._stack_check: RemovableHandle | None = None
        table = table_for(model, mode, site)
        if table is not None:
            if average:
                raise SteeringError(
                    "steer_averaged has no compiled form: steer with the sum of the vectors "
                    "(steer(model, a + b)), or remove the model's compiled-steering preparation"
                )
            _claim(model, self)
            try:
                self._handles.add(table.write(deltas, positions, gate))
            except BaseException:
                self.remove()
                raise
            return
        modules = site_modules(model, site, architecture)
        tracker = PositionTracker(positions) if positions != "all" else None
        already = _claim(model, self)
        try:
            if already:
                self._stack_check = model.register_forward_pre_hook(self._warn_if_stacked_handle)
                self._handles.add(self._stack_check)
            if gate is not None:
                self._handles.add(model.register_forward_pre_hook(gate.observe, with_kwargs=True))
            if tracker is not None:
                self._handles.add(model.register_forward_pre_hook(tracker.observe, with_kwargs=True))
            check = None
            if average and mode == "rotate":
                # (1, layers, K, hidden): each layer's hook gets its K pushes as one row.
                deltas = deltas.transpose(0, 1).unsqueeze(0)
            elif average:
                deltas = deltas.mean(0, keepdim=True)  # averaged additions are one addition
            elif deltas.shape[0] > 1:
                check = RowGroupCheck(deltas.shape[0])
                self._handles.add(model.register_forward_pre_hook(check.observe, with_kwargs=True))
            calls = tracker if tracker is not None else None if check is None else check.calls
            if calls is None and gate is not None:
                calls = gate.calls
            for layer, module in enumerate(modules):
                if float(layer_weights[layer]) == 0.0:
                    continue
                hook = _steering_hook(deltas[:, layer], mode, average, tracker, calls, gate)
                self._handles.add(module.register_forward_hook(hook))
        except BaseException:
            self.remove()
            raise

    def _warn_if_stacked_handle(self, _module: nn.Module, _args: Any) -> None:
        """At the first forward pass: a bare handle stacked on live steerings is usually a forgotten one.

        Decided here, not at construction, because only by now has a ``with`` block
        entered its steering (stacking ``with`` blocks is deliberate, and silent).
        """
        if self._stack_check is not None:
            self._stack_check.remove()  # once is enough
        if self._entered:
            return
        with _registry_lock:
            others = [s for s in _active.get(self.model, ()) if s is not self]
        if others:
            warnings.warn(
                f"this model is steered {len(others) + 1} times at once: {self!r} was made as a "
                f"handle while {', '.join(map(repr, others))} "
                f"{'was' if len(others) == 1 else 'were'} live, and their pushes add up; remove "
                "the handles you no longer need (handle.remove(), or icv.unsteer(model) for all), "
                "or use `with icv.steer(...)` blocks",
                StackedSteeringWarning,
                stacklevel=2,
            )

    @property
    def active(self) -> bool:
        return len(self._handles) > 0

    @property
    def decision(self) -> Decision | None:
        """With ``when=``: which rows the latest generation steered, and their scores.

        ``None`` for a steering without ``when=``, and before its first generation.
        """
        return None if self.gate is None else self.gate.decision

    def remove(self) -> None:
        """Take every hook of this steering off the model (safe to call twice)."""
        self._handles.remove()
        _release(self.model, self)

    def __enter__(self) -> Steering:
        self._entered = True
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<Steering {self.description} mode={self.mode} site={self.site} ({state})>"


def _claim(model: nn.Module, steering: Steering) -> bool:
    """Register ``steering`` on ``model``; whether others were already live there."""
    with _registry_lock:
        live = _active.setdefault(model, [])
        others = {s._thread for s in live} - {steering._thread}
        if others:
            raise SteeringError(
                "this model is already steered from another thread; hooks are global to the "
                "model, so concurrent steering would mix vectors: steer from one thread, or "
                "give each thread its own model copy"
            )
        already = bool(live)
        live.append(steering)
        return already


def _release(model: nn.Module, steering: Steering) -> None:
    with _registry_lock:
        live = _active.get(model)
        if live and steering in live:
            live.remove(steering)


def is_steered(model: nn.Module) -> bool:
    """Whether any steering made by this library is live on ``model``.

    Args:
        model: the model to look at.
    """
    with _registry_lock:
        return bool(_active.get(model))


def unsteer(model: nn.Module) -> int:
    """Remove every steering of this library from ``model`` (e.g. a lost handle).

    Args:
        model: the model to clean.

    Returns:
        How many steerings were removed.
    """
    with _registry_lock:
        live = list(_active.get(model, ()))
    for steering in live:
        steering.remove()
    return len(live)


# -- the hooks --------------------------------------------------------------------------


class _Variants:
    """The layer's delta cast to each (device, dtype, batch) it meets, made once."""

    def __init__(self, delta: torch.Tensor, prepare: Callable[[torch.Tensor], tuple]) -> None:
        self._delta = delta  # (rows, hidden) float32 on CPU
        self._prepare = prepare
        self._made: dict[tuple, tuple] = {}

    def get(self, x: torch.Tensor) -> tuple:
        key = (x.device, x.dtype, x.shape[0])
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._prepare(self._rows_for(x.shape[0]).to(x.device, x.dtype))
        return made

    def _rows_for(self, batch: int) -> torch.Tensor:
        rows = self._delta.shape[0]
        if rows == 1:
            return self._delta[0]
        if batch % rows:
            raise SteeringError(
                f"steering was given {rows} per-row strengths or vectors, but the batch has {batch} rows"
            )
        # Beam search and num_return_sequences repeat each prompt row consecutively.
        return self._delta.repeat_interleave(batch // rows, dim=0).unsqueeze(1)


def _prepare_rotation(delta: torch.Tensor) -> tuple:
    """(delta, -delta/|delta| beside it, for one vecdot; zero rows stay zero)."""
    return delta, away_directions(delta)


def _prepare_averaged(deltas: torch.Tensor) -> tuple:
    """(deltas / K, the K unit "away" directions as columns) for K vectors (zero rows stay zero)."""
    return deltas / deltas.shape[0], away_directions(deltas).transpose(0, 1).contiguous()


def _prepare_addition(delta: torch.Tensor) -> tuple:
    return (delta,)


# mode (and whether several vectors are averaged) -> (how a layer's delta is prepared, the injection).
_INJECTIONS: dict[tuple[str, bool], tuple[Callable[[torch.Tensor], tuple], Callable[..., torch.Tensor]]] = {
    ("rotate", False): (_prepare_rotation, inject.rotate),
    # Several vectors at once, as the reference code applies them: each push boost_k * d_k
    # with its own boost, the pushes averaged, then one norm-preserving turn.
    ("rotate", True): (_prepare_averaged, inject.rotate_averaged),
    ("add", False): (_prepare_addition, inject.add),
    ("add", True): (_prepare_addition, inject.add),
}


def _steering_hook(
    delta: torch.Tensor,
    mode: str,
    average: bool,
    tracker: PositionTracker | None,
    calls: PositionTracker | None,
    gate: Gate | None = None,
) -> Hook:
    """The forward hook that applies one layer's ``delta`` to its site's output.

    ``tracker`` gives the position mask (``None``: all positions); ``calls`` sees each
    call's batch, where per-row deltas or a mask need it (``None``: neither does);
    ``gate`` the per-row 0/1 of conditional steering (``None``: every row).
    """
    prepare, apply = _INJECTIONS[mode, average]
    variants = _Variants(delta, prepare)

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        if gate is not None and gate.deciding:
            return output  # the gate's reading pass sees the unsteered model
        x = output if type(output) is torch.Tensor else output_tensor(output)
        # Some sites flatten the batch (OPT's fc2: (batch * length, hidden)): per-row deltas
        # and position masks are laid out per (row, position), so view it that way.
        flat = calls is not None and x.dim() == 2
        rows = x.view(calls.batch, -1, x.shape[-1]) if flat else x  # type: ignore[union-attr]
        mask = None if tracker is None else tracker.mask_for(rows)
        if gate is not None:
            # A rejected row's mask is 0: its push is exactly zero (bitwise unsteered).
            mask = gate.mask_for(rows) if mask is None else mask * gate.mask_for(rows)
        y = apply(rows, *variants.get(rows), mask)
        if flat:
            y = y.view(x.shape)
        return y if type(output) is torch.Tensor else replace_output(output, y)

    return hook


# -- building a steering ----------------------------------------------------------------


# How the additive mode sizes a layer's push: strength times the activation's typical
# norm ("activation", default) or times the shift's own size ("shift": CAA / steering-vectors).
SCALES = ("activation", "shift")
# scale="shift" with no strength given: one whole shift, CAA's multiplier 1.
SHIFT_STRENGTH = 1.0


@checked_options
def steer(
    model: nn.Module,
    vector: InContextVector | Sequence[InContextVector],
    strength: float | Sequence[float] | None = None,
    *,
    mode: str | None = None,
    site: str | None = None,
    layers: Iterable[int] | Mapping[int, float] | torch.Tensor | None = None,
    positions: str = "all",
    scale: str = "activation",
    strict: bool = False,
    architecture: Architecture | None = None,
    when: Rule | Sequence[Rule | None] | None = None,
) -> Steering:
    """Steer ``model`` with ``vector`` until the returned handle is removed.

    Use as ``with icv.steer(model, vec): model.generate(...)`` or keep the handle and
    call ``.remove()``.  Several vectors on the same rows: ``steer(model, a + b)`` (their
    sum, one push), or :func:`steer_averaged` (each pushed with its own boost, averaged:
    the reference code).

    Args:
        model: the transformers causal LM (any ``nn.Module`` whose layers the library
            finds; see ``architecture``).
        vector: one vector, or one per batch row (to compare vectors in one batch).
        strength: a number, or one number per batch row; ``None`` uses the vector's
            recommended strength, else a default for the model's depth, with a
            :class:`icv.DefaultStrengthWarning` (see :mod:`icv.strength`).
        mode: ``"rotate"`` (the paper's norm-preserving turn) or ``"add"``; ``None``: the
            vector's own (its metadata).
        site: where the vector is applied: ``"block"``, ``"mlp"`` or ``"attn"`` outputs;
            ``None``: the vector's own.  ``"rotate"`` at ``"mlp"`` is the reference code,
            ``"add"`` at ``"block"`` llama.cpp's and repeng's.
        layers: the decoder layers to steer (indices, negative from the end), or a per-layer
            strength profile ``{layer: weight}`` (or a float tensor of one weight per
            layer); ``None`` steers the layers the vector covers (all, unless it was made
            for some, e.g. a partial GGUF control vector).
        positions: which tokens: ``"all"`` (the paper), ``"prompt"`` or ``"generated"``.
        scale: with ``mode="add"`` only: ``"activation"`` adds
            ``strength * layer_scales[l] * v_l`` (strength as a fraction of the activation's
            size); ``"shift"`` adds ``strength * shifts[l]``, the shift at its own size (with
            a ``method="mean"`` vector at ``site="block"``: CAA / steering-vectors with
            multiplier ``strength``, default 1).
        strict: refuse a vector made on a model of another name (by default a warning; the
            type, hidden size and layer count must match either way).
        architecture: where the decoder layers, MLPs and attentions are, for a model type
            the library does not know (see :func:`icv.register_architecture`).
        when: steer only the rows whose prompt matches: an :class:`icv.Condition` or a rule
            of them (``a & ~b``), or one per prompt row (``None`` in the list: that row
            always steered).  Each row is decided once per generation, at its prefill,
            from the mean over its prompt tokens (see :mod:`icv.gate`), and steered or
            left bitwise unsteered for the whole generation; ``handle.decision`` says how.

    Returns:
        The live :class:`Steering`: a context manager, and a handle with ``.remove()``.

    Raises:
        ModelMismatchError: the vector (or a condition) was made on a model of another
            shape (or name, with ``strict``).
        OptionError: an option out of its range (an unknown mode, a layer past the model,
            a ``when`` that is not a condition or rule).
    """
    vectors = _as_vectors(vector)
    mode, site, vectors = _settings(model, vectors, mode, site, positions, scale, strict, architecture)
    num_layers = vectors[0].num_layers
    strengths = _row_strengths(strength, vectors, mode, site, scale)
    weights = layer_weights(_covered_layers(vectors) if layers is None else layers, num_layers)
    deltas = layer_deltas(vectors, strengths, weights, mode, scale)
    description = vectors[0].name if len(vectors) == 1 else f"{len(vectors)} vectors"
    gate = None if when is None else Gate(model, when, num_layers, architecture)
    gated = "" if gate is None else f" when={gate.describe()}"
    return Steering(
        model,
        deltas,
        weights,
        mode=mode,
        site=site,
        positions=positions,
        architecture=architecture,
        description=f"'{description}' strength={_describe(strengths)}{gated}",
        gate=gate,
    )


@checked_options
def steer_averaged(
    model: nn.Module,
    vectors: Sequence[InContextVector],
    strength: float | Sequence[float] | None = None,
    *,
    mode: str | None = None,
    site: str | None = None,
    layers: Iterable[int] | Mapping[int, float] | torch.Tensor | None = None,
    positions: str = "all",
    scale: str = "activation",
    strict: bool = False,
    architecture: Architecture | None = None,
) -> Steering:
    """Steer every row with several vectors the reference code's way: pushes averaged.

    In the rotation each vector ``k`` pushes ``strength_k * boost_k * v_k`` with its own
    ``boost_k = 1 + max(0, cos(x, -v_k))``; the pushes are averaged and one norm-preserving
    turn applies them (the authors' code with several in-context vectors).  Averaging
    dilutes each vector (two vectors each act at about half strength);
    ``steer(model, a + b, s)``, the linear default, applies the sum's one push.  In the
    additive mode the pushes are averaged too: ``steer(model, (a * s_a + b * s_b) / 2, 1)``.

    Args:
        model: the model to steer, as for :func:`steer`.
        vectors: the vectors applied together on every row (made on the same model).
        strength: one number for all vectors, one per vector, or ``None`` (each vector's
            default).
        mode: as for :func:`steer`.
        site: as for :func:`steer`.
        layers: as for :func:`steer`.
        positions: as for :func:`steer`.
        scale: as for :func:`steer`.
        strict: as for :func:`steer`.
        architecture: as for :func:`steer`.

    Returns:
        The live :class:`Steering`, as :func:`steer` returns it.
    """
    if isinstance(vectors, InContextVector) or not isinstance(vectors, Sequence) or not vectors:
        raise OptionError("steer_averaged needs a non-empty list of icv.InContextVector")
    parts = _as_vectors(list(vectors))
    mode, site, parts = _settings(model, parts, mode, site, positions, scale, strict, architecture)
    num_layers = parts[0].num_layers
    what = "vectors: give one, or one per vector"
    strengths = _row_strengths(strength, parts, mode, site, scale, what=what)
    if len(strengths) != len(parts):
        raise OptionError(f"{len(strengths)} strengths for {len(parts)} {what}")
    weights = layer_weights(_covered_layers(parts) if layers is None else layers, num_layers)
    deltas = layer_deltas(parts, strengths, weights, mode, scale)
    names = " | ".join(v.name for v in parts)
    return Steering(
        model,
        deltas,
        weights,
        mode=mode,
        site=site,
        positions=positions,
        architecture=architecture,
        description=f"'{names}' averaged, strength={_describe(strengths)}",
        average=True,
    )


def _settings(
    model: nn.Module,
    vectors: list[InContextVector],
    mode: str | None,
    site: str | None,
    positions: str,
    scale: str,
    strict: bool,
    architecture: Architecture | None,
) -> tuple[str, str, list[InContextVector]]:
    """Checked (mode, site, vectors) for steering ``model`` with ``vectors``.

    Imported control vectors shorter than the model (their files left out the last
    blocks) come back padded to its depth.
    """
    mode, site = injection_of(vectors[0], mode, site)
    meta.check_injection(mode, site)
    if positions not in POSITIONS:
        raise OptionError(f"unknown positions '{positions}': choose one of {', '.join(POSITIONS)}")
    if scale not in SCALES:
        raise OptionError(f"unknown scale '{scale}': choose one of {', '.join(SCALES)}")
    if scale == "shift":
        if mode != "add":
            raise OptionError("scale='shift' sizes the additive mode's push: use it with mode='add'")
        unknown = [v.name for v in vectors if v.shifts is None]
        if unknown:
            raise OptionError(
                f"vector '{unknown[0]}' does not know its shift's size (a format-1 file, or a sum "
                "with one): scale='shift' needs it; re-extract the vector with this version"
            )
    if not isinstance(strict, bool):
        raise OptionError(f"strict must be True or False, got {strict!r:.40}")
    num_layers = len(decoder_layers(model, architecture))
    vectors = [_to_depth(v, num_layers) for v in vectors]
    for v in vectors:
        check_vector_fits(model, v, num_layers, strict=strict)
    return mode, site, vectors


def _to_depth(vector: InContextVector, num_layers: int) -> InContextVector:
    """A GGUF import whose depth was a guess, padded to the model's; any other vector as it is."""
    covered = vector.layers
    guessed = vector.metadata["method"] == "gguf" and covered is not None
    if guessed and vector.num_layers < num_layers and max(covered) < num_layers:  # type: ignore[arg-type]
        return pad_layers(vector, num_layers)
    return vector


def _covered_layers(vectors: list[InContextVector]) -> list[int] | None:
    """The layers the vectors cover together (``None``: all)."""
    covered: set[int] = set()
    for v in vectors:
        if v.layers is None:
            return None
        covered.update(v.layers)
    return sorted(covered)


def injection_of(
    vector: InContextVector, mode: str | None = None, site: str | None = None
) -> tuple[str, str]:
    """The ``(mode, site)`` that steering with ``vector`` uses: the given ones, else the vector's.

    A mode other than the vector's comes with that mode's usual site (the rotation at
    the MLP output, addition at the block output) unless ``site`` is given.
    """
    m = vector.metadata
    mode = mode or m["injection_mode"]
    return mode, site or (m["injection_site"] if mode == m["injection_mode"] else meta.default_site(mode))


def _as_vectors(vector: object) -> list[InContextVector]:
    if isinstance(vector, InContextVector):
        return [vector]
    if isinstance(vector, Sequence) and vector and all(isinstance(v, InContextVector) for v in vector):
        first = vector[0].metadata
        for other in vector[1:]:
            meta.check_same_model(
                first, other.metadata, what=f"vectors '{vector[0].name}' and '{other.name}'"
            )
        return list(vector)
    if isinstance(vector, Rule):
        raise OptionError(
            "a condition is not a steering vector: it decides which rows are steered; pass it as "
            "when= (icv.steer(model, vector, strength, when=condition))"
        )
    raise OptionError("vector must be an icv.InContextVector or a non-empty list of them (one per row)")


def check_vector_fits(
    model: nn.Module, vector: InContextVector, num_layers: int | None = None, *, strict: bool = False
) -> None:
    """Raise :class:`ModelMismatchError` unless ``vector`` fits ``model``.

    It fits when the model type, hidden size and layer count match; a different model
    name is a warning, or with ``strict=True`` an error.
    """
    model_meta = {
        "hidden_size": hidden_size_of(model),
        "num_layers": num_layers if num_layers is not None else len(decoder_layers(model)),
        "model_type": str(getattr(model.config, "model_type", "")),
        "model_name": model_name_of(model),
    }
    meta.check_same_model(
        vector.metadata, model_meta, what=f"vector '{vector.name}' and this model", strict=strict
    )


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{what} must be a number, got {value!r:.40}")
    number = float(value)
    if not math.isfinite(number):
        raise OptionError(f"{what} must be finite, got {number}")
    return number


def default_strength_for(vector: InContextVector, mode: str | None = None, site: str | None = None) -> float:
    """The strength :func:`steer` uses for ``vector`` when none is given.

    The vector's recommended strength when it was recommended for this mode and site
    (by default the vector's own), else a default for the model's depth
    (:func:`icv.strength.default_strength`).
    """
    return planned_strength(vector, *injection_of(vector, mode, site)).value


def _row_strengths(
    strength: object,
    vectors: list[InContextVector],
    mode: str,
    site: str,
    scale: str = "activation",
    what: str = "per-row vectors: give one per row",
) -> list[float]:
    """One strength per vector row (a single row when both are single)."""
    if strength is None and scale == "shift":
        return [SHIFT_STRENGTH] * len(vectors)
    if strength is None:
        planned = [planned_strength(v, mode, site) for v in vectors]
        for v, p in zip(vectors, planned, strict=True):
            # Frames up to the caller: warn_default, here, steer (or steer_averaged), checked_options.
            warn_default(v, p, mode, stacklevel=4)
        return [p.value for p in planned]
    if isinstance(strength, torch.Tensor):
        strength = strength.tolist() if strength.dim() else strength.item()
    if isinstance(strength, Sequence) and not isinstance(strength, str):
        values = [_finite(s, f"strength[{i}]") for i, s in enumerate(strength)]
        if not values:
            raise OptionError("strength must not be an empty sequence")
        if len(vectors) > 1 and len(values) != len(vectors):
            raise OptionError(f"{len(values)} strengths for {len(vectors)} {what}")
        return values
    return [_finite(strength, "strength")] * len(vectors)


def layer_weights(
    layers: Iterable[int] | Mapping[int, float] | torch.Tensor | None, num_layers: int
) -> torch.Tensor:
    """A ``(num_layers,)`` weight per layer from a selection or a profile."""
    if layers is None:
        return torch.ones(num_layers)
    weights = torch.zeros(num_layers)
    if isinstance(layers, torch.Tensor) and layers.is_floating_point():
        if layers.shape != (num_layers,):
            raise OptionError(f"a layer profile tensor must have shape ({num_layers},)")
        if not bool(torch.isfinite(layers).all()):
            raise OptionError("a layer profile must be finite")
        return layers.detach().float().cpu()
    if isinstance(layers, torch.Tensor):
        layers = layers.reshape(-1).tolist()  # integer indices, as plain ints
    if not isinstance(layers, (Mapping, Iterable)) or isinstance(layers, str):
        raise OptionError(
            f"layers must be layer indices, a {{layer: weight}} profile or a float tensor, got {layers!r:.40}"
        )
    items = layers.items() if isinstance(layers, Mapping) else ((l, 1.0) for l in layers)
    for index, weight in items:
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise OptionError(f"layer indices must be integers, got {index!r:.40}")
        if not -num_layers <= int(index) < num_layers:
            raise OptionError(f"layer {index} is out of range for a model with {num_layers} layers")
        weights[int(index)] = _finite(weight, f"weight of layer {index}")
    if not bool((weights != 0).any()):
        raise OptionError("no layer selected: layers must name at least one layer")
    return weights


def layer_deltas(
    vectors: list[InContextVector],
    strengths: list[float],
    weights: torch.Tensor,
    mode: str,
    scale: str = "activation",
) -> torch.Tensor:
    """``(rows, num_layers, hidden)`` float32: what each row adds (or turns towards) per layer."""
    per_vector = []
    for v in vectors:
        if scale == "shift":
            d = v.shifts * weights[:, None]  # type: ignore[operator]  # checked in _settings
        else:
            d = v.directions * weights[:, None]
            if mode == "add":
                d = d * v.layer_scales[:, None]
        per_vector.append(d)
    stacked = torch.stack(per_vector)  # (vectors, layers, hidden)
    # One vector with a strength per row broadcasts to a row each.
    return stacked * torch.tensor(strengths, dtype=torch.float32)[:, None, None]


def _describe(strengths: list[float]) -> str:
    return (
        f"{strengths[0]:g}"
        if len(set(strengths)) == 1
        else "[" + ", ".join(f"{s:g}" for s in strengths) + "]"
    )
