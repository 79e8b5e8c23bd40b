"""Steering a compiled model: hooks installed once, each steering written into their buffers.

:func:`icv.steer` puts new hooks on a model for every steering.  Under ``torch.compile``
(torch 2.13) Dynamo traces them into the graph: a new vector or strength of the same
kind reuses it, but every other kind of steering (none, another ``positions``, one
vector per row) traces and compiles a graph of its own, and each steering's tensors
sit at new addresses, which CUDA graphs would capture again.  :func:`prepare_for_compile`
installs, once and before compiling, hooks that read tensors registered as buffers on
the hooked modules:

* per layer, ``deltas`` ``(slots, hidden)`` (and ``away``, ``-delta/|delta|``, for the
  rotation): slot 0 is zeros, the unsteered slot; a steering writes its rows into
  slots ``1..r``;
* ``index`` ``(rows,)``: each batch row's slot;
* ``mask`` ``(positions,)``: 1 where the current call's positions are steered;
* ``token_index`` and ``token_mask`` ``(rows * positions,)``: the same per token, for sites
  that see the batch flattened (OPT's ``fc2``).

:func:`icv.steer` on a prepared model writes into these buffers instead of adding
hooks, and removing it writes zeros back, so strengths, vectors, per-row mixes and
position modes are data: the graph traced once serves them all.  A forward pre-hook
on the top-level model, which runs outside a compiled ``model.forward`` (the way
transformers documents compiled generation), fills ``index`` and ``mask`` for each
call; when a batch, a prompt or a per-row mix outgrows the buffers it makes larger
ones (then, once, the graph is traced again).  The arithmetic is :mod:`icv.inject`'s,
as in every engine, and a model with every row at slot 0 comes out bitwise unchanged.
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import inject
from .errors import SteeringError
from .gate import Gate
from .hooks import HookHandles, output_tensor, replace_output
from .layers import Architecture, hidden_size_of, site_modules
from .metadata import check_injection, default_site
from .positions import PositionTracker
from .rows import RowGroupCheck

# First sizes of the buffers (doubled when outgrown): rows of a batch, positions of a
# call, and slots (slot 0 unsteered, then one per per-row steering).
_FIRST_ROWS = 16
_FIRST_POSITIONS = 1024
_FIRST_SLOTS = 9

_lock = threading.Lock()
# model -> its prepared injections, keyed by (mode, site)
_prepared: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], StaticSteering]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class _Shared:
    """One device's buffers that every hooked module on it reads: which slot and mask apply where.

    Per row and position (``index``, ``mask``) for sites that see ``(batch, length, hidden)``;
    per token (``token_index``, ``token_mask``, ``batch * length`` long) for sites that see the
    batch flattened (OPT's ``fc2``), so no hook needs the batch size as a number, which a
    compiled graph would specialise on.
    """

    index: torch.Tensor
    mask: torch.Tensor
    token_index: torch.Tensor
    token_mask: torch.Tensor

    PARTS = ("index", "mask", "token_index", "token_mask")

    def reset(self, slot: int) -> None:
        """Every row and token at ``slot``, every position steered."""
        self.index.fill_(slot)
        self.token_index.fill_(slot)
        self.mask.fill_(1)
        self.token_mask.fill_(1)


@dataclass
class _Written:
    """The steering held by a table: its float32 deltas and what decides rows and positions."""

    deltas: torch.Tensor  # (rows, layers, hidden)
    tracker: PositionTracker | None  # None: every position
    rows: RowGroupCheck | None  # None: one steering for every row
    gate: Gate | None = None  # None: every row steered


class StaticSteering:
    """Persistent steering buffers and the hooks that read them, for one ``(mode, site)``.

    Made by :func:`prepare_for_compile`; :func:`icv.steer` writes into it.  A context
    manager and a handle: :meth:`remove` takes the hooks and buffers off the model.

    Args:
        model: the model whose layers get the hooks and buffers.
        mode: ``"rotate"`` or ``"add"``.
        site: ``"block"``, ``"mlp"`` or ``"attn"``.
        architecture: the layer paths, for a model type the library does not know.
    """

    def __init__(self, model: nn.Module, mode: str, site: str, architecture: Architecture | None) -> None:
        self.model = model
        self.mode = mode
        self.site = site
        self._modules = site_modules(model, site, architecture)
        self._prefix = f"_icv_static_{mode}_{site}"
        self._written: _Written | None = None
        self._sizes = {"rows": _FIRST_ROWS, "positions": _FIRST_POSITIONS, "slots": _FIRST_SLOTS}
        self._handles = HookHandles()
        try:
            self._make_buffers()
            hook = functools.partial(_static_hook, prefix=self._prefix, mode=mode)
            for module in self._modules:
                self._handles.add(module.register_forward_hook(hook))
            self._handles.add(model.register_forward_pre_hook(self._observe, with_kwargs=True))
        except BaseException:
            self._drop_buffers()
            self._handles.remove()
            raise

    # -- buffers ------------------------------------------------------------------------

    def _make_buffers(self) -> None:
        """Zeroed buffers at the current sizes, on each hooked module's device and dtype."""
        hidden = hidden_size_of(self.model)
        rows, positions = self._sizes["rows"], self._sizes["positions"]
        shared: dict[tuple[torch.device, torch.dtype], _Shared] = {}
        for module in self._modules:
            device, dtype = _placement(module, self.model)
            if (device, dtype) not in shared:
                shared[device, dtype] = _Shared(
                    index=torch.zeros(rows, dtype=torch.long, device=device),
                    mask=torch.ones(positions, dtype=dtype, device=device),
                    token_index=torch.zeros(rows * positions, dtype=torch.long, device=device),
                    token_mask=torch.ones(rows * positions, dtype=dtype, device=device),
                )
            deltas = torch.zeros(self._sizes["slots"], hidden, dtype=dtype, device=device)
            module.register_buffer(f"{self._prefix}_deltas", deltas, persistent=False)
            if self.mode == "rotate":
                module.register_buffer(f"{self._prefix}_away", torch.zeros_like(deltas), persistent=False)
            for part in _Shared.PARTS:
                module.register_buffer(
                    f"{self._prefix}_{part}", getattr(shared[device, dtype], part), persistent=False
                )

    def _drop_buffers(self) -> None:
        for module in self._modules:
            for part in ("deltas", "away", *_Shared.PARTS):
                module._buffers.pop(f"{self._prefix}_{part}", None)

    def _buffer(self, module: nn.Module, part: str) -> torch.Tensor:
        return module._buffers[f"{self._prefix}_{part}"]  # type: ignore[return-value]

    def _grow(self, **needed: int) -> None:
        """Larger buffers where ``needed`` exceeds a size, the current steering written again."""
        grown = False
        for name, count in needed.items():
            while self._sizes[name] < count:
                self._sizes[name] *= 2
                grown = True
        if grown:
            self._make_buffers()
            if self._written is not None:
                self._fill(self._written)

    def reserve(self, *, rows: int = 0, positions: int = 0) -> None:
        """Make the buffers hold ``rows`` batch rows, each its own steering, and ``positions`` positions now.

        Buffers outgrown later are made anew, which a compiled graph traces again (once);
        reserving the largest batch up front, as a server that knows it can, avoids that.

        Args:
            rows: the largest batch (slots are made for each of its rows to steer differently).
            positions: the most positions one call steers.
        """
        self._grow(rows=rows, positions=positions, slots=rows + 1)

    # -- writing a steering ---------------------------------------------------------------

    def write(self, deltas: torch.Tensor, positions: str, gate: Gate | None = None) -> _Removal:
        """Make ``deltas`` the steering applied; returns how to take it off (what :func:`icv.steer` keeps).

        Args:
            deltas: ``(rows, layers, hidden)`` float32: what each row's steering adds (or
                turns towards) at each layer; one row steers every batch row alike.
            positions: ``"all"``, ``"prompt"`` or ``"generated"``.
            gate: conditional steering's gate: the rows it rejects read the unsteered slot 0
                (data, like every other choice here); ``None``: every row steered.
        """
        if not self.active:
            raise SteeringError("this compiled-steering preparation was removed: prepare the model again")
        if self._written is not None:
            raise SteeringError(
                f"this model's compiled steering ({self.mode}@{self.site}) already holds a live "
                "steering; one at a time: remove it first, or combine vectors with arithmetic "
                "(steer(model, a + b))"
            )
        if deltas.shape[1] != len(self._modules):
            raise SteeringError(f"{deltas.shape[1]} layers of deltas for {len(self._modules)} hooked layers")
        rows = deltas.shape[0]
        written = _Written(
            deltas=deltas,
            tracker=None if positions == "all" else PositionTracker(positions),
            rows=None if rows == 1 else RowGroupCheck(rows),
            gate=gate,
        )
        self._grow(slots=rows + 1)
        self._written = written
        self._fill(written)
        return _Removal(self)

    def _fill(self, written: _Written) -> None:
        rows = written.deltas.shape[0]
        for layer, module in enumerate(self._modules):
            buffer = self._buffer(module, "deltas")
            # Cast first, then the away direction: the same tensors icv.steer's hooks make.
            delta = written.deltas[:, layer].to(buffer.device, buffer.dtype)
            buffer[1 : rows + 1].copy_(delta)
            if self.mode == "rotate":
                self._buffer(module, "away")[1 : rows + 1].copy_(inject.away_directions(delta))
        for shared in self._shared():
            # One steering for every row: every row reads slot 1, whatever the batch
            # (with a gate, each call's rows are set by _observe).
            shared.reset(1 if written.rows is None and written.gate is None else 0)

    def clear(self) -> None:
        """Every row back to the unsteered slot and the slots zeroed (the steering's removal)."""
        written, self._written = self._written, None
        if written is None:
            return
        rows = written.deltas.shape[0]
        for module in self._modules:
            self._buffer(module, "deltas")[1 : rows + 1].zero_()
            if self.mode == "rotate":
                self._buffer(module, "away")[1 : rows + 1].zero_()
        for shared in self._shared():
            shared.reset(0)

    def _shared(self) -> list[_Shared]:
        """Each device's shared buffers once."""
        seen: dict[int, _Shared] = {}
        for module in self._modules:
            index = self._buffer(module, "index")
            if id(index) not in seen:
                seen[id(index)] = _Shared(*(self._buffer(module, part) for part in _Shared.PARTS))
        return list(seen.values())

    # -- each call ------------------------------------------------------------------------

    def _observe(self, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Before each call (outside the compiled forward): sizes, rows' slots, positions."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        tokens = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() < 2:
            return
        batch, length = int(tokens.shape[0]), int(tokens.shape[1])
        self._grow(rows=batch, positions=length)
        written = self._written
        if written is None:
            return
        if written.gate is not None:
            # The reading pass runs the hooks eagerly: every row at the unsteered slot for it.
            written.gate.observe(model, args, kwargs, quiet=self._all_unsteered)
        if written.rows is not None or written.gate is not None:
            if written.rows is not None:
                written.rows.observe(model, args, kwargs)  # refuses a miscounted batch
                slots = 1 + torch.arange(batch) // (batch // written.rows.rows)
            else:
                slots = torch.ones(batch, dtype=torch.long)
            if written.gate is not None:
                slots = slots * written.gate.fired.long()  # rejected rows: slot 0, unsteered
            for shared in self._shared():
                shared.index[:batch].copy_(slots)
                shared.token_index[: batch * length].copy_(slots.repeat_interleave(length))
        if written.tracker is not None:
            written.tracker.observe(model, args, kwargs)
            keep = written.tracker.keep
            for shared in self._shared():
                shared.mask[:length].copy_(keep)
                shared.token_mask[: batch * length].copy_(keep.repeat(batch))

    def _all_unsteered(self) -> None:
        for shared in self._shared():
            shared.index.zero_()
            shared.token_index.zero_()

    # -- the handle -----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return len(self._handles) > 0

    @property
    def steered(self) -> bool:
        """Whether a steering is written into the buffers now."""
        return self._written is not None

    def remove(self) -> None:
        """Take the hooks and buffers off the model (safe to call twice)."""
        self._written = None
        self._handles.remove()
        self._drop_buffers()
        with _lock:
            tables = _prepared.get(self.model, {})
            if tables.get((self.mode, self.site)) is self:
                del tables[self.mode, self.site]

    def __enter__(self) -> StaticSteering:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "steered" if self.steered else "unsteered" if self.active else "removed"
        return f"<StaticSteering {self.mode}@{self.site} ({state})>"


class _Removal:
    """What :class:`icv.Steering` holds for a steering written into a table: its removal."""

    def __init__(self, table: StaticSteering) -> None:
        self._table: StaticSteering | None = table

    def remove(self) -> None:
        table, self._table = self._table, None
        if table is not None:
            table.clear()


def _static_hook(module: nn.Module, _args: Any, output: Any, *, prefix: str, mode: str) -> Any:
    """The steering as tensor ops on buffers: what torch.compile traces into the graph."""
    x = output if type(output) is torch.Tensor else output_tensor(output)
    if x.dim() == 2:  # a site that flattens the batch ((batch * length, hidden)): per token
        index = getattr(module, f"{prefix}_token_index")[: x.shape[0]]
        mask = getattr(module, f"{prefix}_token_mask")[: x.shape[0]].unsqueeze(-1)
        d = getattr(module, f"{prefix}_deltas").index_select(0, index)
    else:  # (batch, length, hidden): per row, and per position
        index = getattr(module, f"{prefix}_index")[: x.shape[0]]
        mask = getattr(module, f"{prefix}_mask")[: x.shape[1]].view(1, -1, 1)
        d = getattr(module, f"{prefix}_deltas").index_select(0, index).unsqueeze(1)
    # .to() is free where the dtypes agree; under autocast the activation's is not the weights'.
    d, mask = d.to(x.dtype), mask.to(x.dtype)
    if mode == "add":
        y = inject.add(x, d, mask)
    else:
        away = getattr(module, f"{prefix}_away").index_select(0, index)
        away = (away if x.dim() == 2 else away.unsqueeze(1)).to(x.dtype)
        y = inject.rotate(x, d, away, mask)
    return y if type(output) is torch.Tensor else replace_output(output, y)


def _placement(module: nn.Module, model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*module.parameters(), *model.parameters()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def prepare_for_compile(
    model: nn.Module,
    *,
    mode: str = "rotate",
    site: str | None = None,
    architecture: Architecture | None = None,
) -> StaticSteering:
    """Make ``model`` steerable under ``torch.compile`` without a recompilation per steering.

    Call it once before compiling (``model.forward = torch.compile(model.forward)``, with
    ``cache_implementation="static"`` for generation, as transformers documents); then
    ``icv.steer(model, vec, strength)`` with this mode and site writes the vector into
    buffers the compiled graph reads, instead of adding hooks.  Prepare several
    ``(mode, site)`` pairs by calling it once for each.

    Args:
        model: the transformers causal LM.
        mode: ``"rotate"`` (the paper) or ``"add"``.
        site: ``"block"``, ``"mlp"`` or ``"attn"``; ``None``: the mode's usual site
            (``"mlp"`` for the rotation, ``"block"`` for addition).
        architecture: the layer paths, for a model type the library does not know.

    Returns:
        The :class:`StaticSteering` (``.remove()`` takes it off the model).

    Raises:
        OptionError: an unknown mode or site.
        SteeringError: the model is already prepared for this mode and site.
    """
    site = site or default_site(mode)
    check_injection(mode, site)
    with _lock:
        tables = _prepared.setdefault(model, {})
        if (mode, site) in tables:
            raise SteeringError(f"this model is already prepared for compiled steering with {mode}@{site}")
        table = tables[mode, site] = StaticSteering(model, mode, site, architecture)
    return table


def table_for(model: nn.Module, mode: str, site: str) -> StaticSteering | None:
    """The model's prepared table for ``(mode, site)``; ``None`` when the model has none at all.

    Raises:
        SteeringError: the model is prepared, but not for this mode and site (steering it
            with new hooks would recompile the graph every time).
    """
    with _lock:
        tables = dict(_prepared.get(model, {}))
    if not tables:
        return None
    table = tables.get((mode, site))
    if table is None:
        ready = ", ".join(f"{m}@{s}" for m, s in tables)
        raise SteeringError(
            f"this model is prepared for compiled steering with {ready}, not {mode}@{site}: "
            f"prepare that too (icv.prepare_for_compile(model, mode='{mode}', site='{site}')), "
            "or steer with the prepared mode and site"
        )
    return table
