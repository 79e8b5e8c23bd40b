"""One worker's steering: from the requests of a vLLM step to the buffers its hooks read.

:class:`StepSteering` lives in each worker next to vLLM's model.  When it is made it
hooks the model once for every way of injecting that the library's vectors use (so
a compiled engine traces all of them before serving).  Before every forward step it
is told the step's requests (their ``icv_steering`` argument and prompt length, in
batch order) and where their tokens are; it compiles each new steering once
(composition, per-layer deltas), keeps it in a table slot while it is in use (least
recently used slots are reused, and only a newly placed steering's rows are
written), and writes each token's slot.  After the step it points the tokens back
at slot 0, so vLLM's own warm-up, profiling and dummy runs are never steered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...steer import layer_deltas, layer_weights
from ..library import VectorLibrary
from .contract import decode
from .hooks import CompiledSteering, SteeringTable
from .rows import POSITION_CODES, token_slots

# Modules to hook for a site: (layer index, module) for each layer this worker runs.
ModuleFinder = Callable[[str], Iterable[tuple[int, nn.Module]]]
_COMPILED_CACHE = 1024


class SlotAllocator:
    """Table slots 1.. for steering keys, least recently used reused first (slot 0: unsteered)."""

    def __init__(self, slots: int) -> None:
        if slots < 2:
            raise ValueError("a steering table needs at least one slot besides slot 0")
        self._free = list(range(slots - 1, 0, -1))
        self._used: OrderedDict[str, int] = OrderedDict()

    def place(self, keys: Sequence[str]) -> tuple[dict[str, int], list[str]]:
        """A slot for each of a step's distinct ``keys``, and the keys newly placed (rows to write)."""
        wanted = dict.fromkeys(keys)
        new = [k for k in wanted if k not in self._used]
        for key in wanted:
            if key in self._used:
                self._used.move_to_end(key)
        for key in new:
            if self._free:
                slot = self._free.pop()
            else:
                victim = next((k for k in self._used if k not in wanted), None)
                if victim is None:
                    raise ValueError(f"a step with more than {len(self._used)} distinct steerings")
                slot = self._used.pop(victim)
            self._used[key] = slot
        return {k: self._used[k] for k in wanted}, new


@dataclass(frozen=True)
class StepRequest:
    """What a step needs to know about one of its requests."""

    steering: str | None  # the request's ``icv_steering`` extra argument, if any
    prompt_length: int


class StepSteering:
    """Compiles request steerings and fills the hooks' buffers for each step of one worker.

    ``find_modules(site)`` gives ``(layer, module)`` to hook; ``max_tokens`` bounds a
    step's (padded) token count and ``max_requests`` its requests (one slot each at
    most, plus slot 0); ``static``: the forward is compiled or captured, so the hooks
    must not branch on the step (eager hooks skip steps without a steered token).
    """

    def __init__(
        self,
        library: VectorLibrary,
        find_modules: ModuleFinder,
        device: torch.device,
        dtype: torch.dtype,
        *,
        max_tokens: int,
        max_requests: int,
        static: bool = False,
    ) -> None:
        self.library = library
        self.static = static
        self._compiled: OrderedDict[str, CompiledSteering] = OrderedDict()
        self._tables: dict[tuple[str, str], SteeringTable] = {}
        self._slots: dict[tuple[str, str], SlotAllocator] = {}
        self._last_tokens = 0
        shape = library.shape
        try:
            for injection in library_injections(library):
                self._tables[injection] = SteeringTable(
                    injection,
                    find_modules(injection[1]),
                    num_layers=shape.num_layers,
                    slots=max_requests + 1,
                    hidden=shape.hidden_size,
                    max_tokens=max_tokens,
                    device=device,
                    dtype=dtype,
                    static=static,
                )
                self._slots[injection] = SlotAllocator(max_requests + 1)
        except BaseException:
            self.remove()
            raise

    @property
    def injections(self) -> list[tuple[str, str]]:
        return sorted(self._tables)

    def compiled(self, raw: str) -> CompiledSteering:
        """The steering an ``icv_steering`` argument asks for (compiled once, then cached)."""
        found = self._compiled.get(raw)
        if found is not None:
            self._compiled.move_to_end(raw)
            return found
        spec = decode(raw)
        if spec is None:
            raise ValueError("an icv_steering argument must name at least one vector")
        vector = self.library.compose(spec)
        mode = vector.metadata["injection_mode"]
        # The layers the vector covers (all, unless it was made for some), as icv.steer does.
        weights = layer_weights(vector.layers, self.library.shape.num_layers)
        deltas = layer_deltas([vector], [1.0], weights, mode)[0]
        made = CompiledSteering(
            self.library.fingerprint(spec), mode, vector.metadata["injection_site"], spec.positions, deltas
        )
        self._compiled[raw] = made
        if len(self._compiled) > _COMPILED_CACHE:
            self._compiled.popitem(last=False)
        return made

    def arm(
        self,
        requests: Sequence[StepRequest],
        query_start_loc: np.ndarray,
        computed: np.ndarray,
        num_tokens: int,
    ) -> bool:
        """Fill the buffers for a step of ``requests`` (batch order); whether any token is steered."""
        steerings = [None if r.steering is None else self.compiled(r.steering) for r in requests]
        prompt_lengths = np.fromiter((r.prompt_length for r in requests), np.int64, len(requests))
        steered = False
        for injection, table in self._tables.items():
            slots, positions = self._place(steerings, injection, table)
            index = token_slots(query_start_loc, computed, prompt_lengths, slots, positions, num_tokens)
            steered |= table.write_index(index)
        self._last_tokens = max(self._last_tokens, num_tokens)
        return steered

    def disarm(self) -> None:
        """Point every token of the last steps back at slot 0."""
        for table in self._tables.values():
            table.clear_index(self._last_tokens)
        self._last_tokens = 0

    def remove(self) -> None:
        """Take every hook and buffer off the model."""
        for table in self._tables.values():
            table.remove()
        self._tables.clear()

    def _place(
        self, steerings: Sequence[CompiledSteering | None], injection: tuple[str, str], table: SteeringTable
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each request's slot (0: none of this injection) and positions code; new rows written."""
        mine = {s.key: s for s in steerings if s is not None and s.injection == injection}
        placed, new = self._slots[injection].place(list(mine))
        for key in new:
            table.write_slot(placed[key], mine[key].deltas)
        slots = np.zeros(len(steerings), dtype=np.int64)
        positions = np.zeros(len(steerings), dtype=np.int64)
        for i, steering in enumerate(steerings):
            if steering is not None and steering.injection == injection:
                slots[i] = placed[steering.key]
                positions[i] = POSITION_CODES[steering.positions]
        return slots, positions


def library_injections(library: VectorLibrary) -> list[tuple[str, str]]:
    """The ways of injecting (mode, site) of the library's vectors: the hooks a model needs."""
    found: set[tuple[str, str]] = set()
    for name in library.names:
        metadata = library.get(name).vector.metadata
        found.add((metadata["injection_mode"], metadata["injection_site"]))
    return sorted(found)
