"""One worker's steering: from the requests of a vLLM step to armed hooks.

:class:`StepSteering` lives in each worker next to vLLM's model.  Before every
forward step it is told the step's requests (their ``icv_steering`` argument and
prompt length, in batch order) and where their tokens are; it compiles each new
steering once (composition, per-layer deltas), gives the step's distinct steerings
slots, and arms one :class:`~.hooks.InjectionHooks` per way of injecting with the
per-token slots.  After the step it disarms them, so vLLM's own warm-up and
profiling runs are never steered.
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
from .hooks import CompiledSteering, InjectionHooks
from .rows import POSITION_CODES, token_slots

# Modules to hook for a site: (layer index, module) for each layer this worker runs.
ModuleFinder = Callable[[str], Iterable[tuple[int, nn.Module]]]
_COMPILED_CACHE = 1024


@dataclass(frozen=True)
class StepRequest:
    """What a step needs to know about one of its requests."""

    steering: str | None  # the request's ``icv_steering`` extra argument, if any
    prompt_length: int


class StepSteering:
    """Compiles request steerings and arms the hooks for each step of one worker."""

    def __init__(
        self, library: VectorLibrary, find_modules: ModuleFinder, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.library = library
        self._find_modules = find_modules
        self._device = device
        self._dtype = dtype
        self._hooks: dict[tuple[str, str], InjectionHooks] = {}
        self._compiled: OrderedDict[str, CompiledSteering] = OrderedDict()

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
        """Arm the hooks for a step of ``requests`` (batch order); whether any token is steered."""
        steerings = [None if r.steering is None else self.compiled(r.steering) for r in requests]
        if not any(steerings):
            self.disarm()
            return False
        prompt_lengths = np.fromiter((r.prompt_length for r in requests), np.int64, len(requests))
        steered = False
        for injection in {s.injection for s in steerings if s is not None} | set(self._hooks):
            members, slots, positions = _slots_for(steerings, injection)
            index = (
                None
                if not members
                else token_slots(query_start_loc, computed, prompt_lengths, slots, positions, num_tokens)
            )
            if index is None or not index.any():  # e.g. "generated" steering during its prefill
                if injection in self._hooks:
                    self._hooks[injection].disarm()
                continue
            self._hooks_for(injection).arm(members, index, self._device, self._dtype)
            steered = True
        return steered

    def disarm(self) -> None:
        for hooks in self._hooks.values():
            hooks.disarm()

    def remove(self) -> None:
        """Take every hook off the model."""
        for hooks in self._hooks.values():
            hooks.remove()
        self._hooks.clear()

    def _hooks_for(self, injection: tuple[str, str]) -> InjectionHooks:
        hooks = self._hooks.get(injection)
        if hooks is None:  # hooked on first use, between two steps
            mode, site = injection
            hooks = self._hooks[injection] = InjectionHooks(mode, site, self._find_modules(site))
        return hooks


def _slots_for(
    steerings: Sequence[CompiledSteering | None], injection: tuple[str, str]
) -> tuple[list[CompiledSteering], np.ndarray, np.ndarray]:
    """The distinct steerings of one injection (slots 1..), and each request's slot and positions."""
    members: list[CompiledSteering] = []
    slot_of: dict[str, int] = {}
    slots = np.zeros(len(steerings), dtype=np.int64)
    positions = np.zeros(len(steerings), dtype=np.int64)
    for i, steering in enumerate(steerings):
        if steering is None or steering.injection != injection:
            continue
        slot = slot_of.get(steering.key)
        if slot is None:
            members.append(steering)
            slot = slot_of[steering.key] = len(members)
        slots[i] = slot
        positions[i] = POSITION_CODES[steering.positions]
    return members, slots, positions
