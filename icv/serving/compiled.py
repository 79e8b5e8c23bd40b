"""The transformers engine's decode steps compiled with ``torch.compile`` (``icv serve --compile``).

The engine's cache is a ``DynamicCache`` that rows join and leave, so its decode
step is compiled with dynamic shapes: one graph for a single row and one for
several, whatever the batch's width.  Steering is data in those graphs: before
compiling, every injection the server may apply is prepared with
:func:`icv.prepare_for_compile`, so a request's steering is written into buffers
the graph reads instead of adding hooks, and a new vector, strength or per-row mix
compiles nothing.  Only decode steps run compiled: prefills (a width per prompt
chunk) and work on the model itself (extractions, which hook the layers) run the
eager forward, so they neither trigger nor invalidate a compilation.

Compiling costs minutes on a CPU (the embedded model on 2 cores: 359 s, 168 s with
inductor's on-disk cache warm; benchmarks/serving_compiled.py), so :meth:`Engine.warm_up`
makes the graphs before the server takes requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import nn

from ..compiled import StaticSteering, prepare_for_compile
from ..errors import RequestError
from ..metadata import check_injection
from .steering import RowSteering

# The injections a vector gets from extraction (rotate@mlp) and from GGUF control vectors (add@block).
COMMON_INJECTIONS: frozenset[tuple[str, str]] = frozenset({("rotate", "mlp"), ("add", "block")})

_NO_FORWARD = object()  # the model had no forward of its own instance (the class's is used)


@dataclass(frozen=True)
class Compilation:
    """How the engine compiles its decode steps.

    Args:
        backend: ``torch.compile``'s backend (``"inductor"``, its default; ``"eager"`` or a
            backend callable to trace without generating code, as the tests do).
        injections: the ``(mode, site)`` pairs steering may use; a request whose vector
            injects otherwise is refused (400), since preparing it later would compile again.
    """

    backend: str | Callable[..., Any] = "inductor"
    injections: frozenset[tuple[str, str]] = COMMON_INJECTIONS

    def __post_init__(self) -> None:
        if not self.injections:
            raise ValueError("a compiled engine needs at least one injection to prepare")
        for mode, site in self.injections:
            check_injection(mode, site)

    def with_injections(self, more: set[tuple[str, str]]) -> Compilation:
        """These settings, preparing ``more`` injections too."""
        return Compilation(self.backend, self.injections | frozenset(more))


class CompiledDecode:
    """A model prepared for steering under compilation, and its compiled forward.

    Made by the engine that serves the model (``rows``: its largest batch), and removed
    by it when it stops:
    :meth:`remove` takes the prepared buffers and hooks off and leaves the model's
    forward as it was.
    """

    def __init__(self, model: nn.Module, compilation: Compilation, rows: int) -> None:
        self.injections = compilation.injections
        self._model = model
        self._tables: list[StaticSteering] = []
        try:
            for mode, site in sorted(self.injections):
                table = prepare_for_compile(model, mode=mode, site=site)
                self._tables.append(table)
                table.reserve(rows=rows)  # the graph's batch bound: the engine's largest batch
        except BaseException:
            self.remove()
            raise
        # Compiled once, here: the graphs then live as long as this object.
        self._compiled = torch.compile(model.forward, dynamic=True, backend=compilation.backend)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Inside the block, calling the model runs its compiled forward (its hooks still around it)."""
        saved = self._model.__dict__.get("forward", _NO_FORWARD)
        self._model.forward = self._compiled
        try:
            # Sizes that happen to be equal (a batch of 2, 2 KV heads) get one symbol when
            # duck-shaped, and the graph would then compile again once they differ.
            with fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]
                yield
        finally:
            if saved is _NO_FORWARD:
                del self._model.forward
            else:
                self._model.forward = saved

    def check(self, steering: RowSteering | None) -> None:
        """Refuse a steering this engine did not prepare (400: the client chose the vector)."""
        if steering is None or steering.injection in self.injections:
            return
        mode, site = steering.injection
        ready = ", ".join(f"{m}@{s}" for m, s in sorted(self.injections))
        raise RequestError(
            f"this server compiled its steering for {ready}; the vector injects {mode}@{site}, "
            "which it cannot apply without compiling again (start it with that vector among "
            "--vectors, or without --compile)",
            param="steering",
            code="injection_not_compiled",
        )

    def remove(self) -> None:
        """Take every prepared injection off the model (safe to call twice)."""
        tables, self._tables = self._tables, []
        for table in tables:
            table.remove()
