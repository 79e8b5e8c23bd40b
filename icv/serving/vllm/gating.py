"""Conditional steering in vLLM's workers: each gated request decided once, at its prefill, unsteered.

A request whose steering carries a rule (``steering_when``) is decided in the step that
runs its prompt.  Within one forward pass the layers before the condition's would
already be steered, so on such a step the worker first runs the same forward with the
index pointing every token at slot 0 (nothing steered: the tables are cleared between
steps) and stops it after the deepest layer a condition reads.  That pass runs outside
torch.compile and CUDA graphs (the forward context's ``skip_compiled``), so forward hooks
on the decoder layers capture each layer's output (vLLM's ``hidden_states + residual``,
transformers' block output).  Each gated request's prompt tokens are read as
:mod:`icv.gate` reads them (:data:`icv.gate.READINGS`, :func:`icv.gate.scores_of`: the
same functions, not a copy), its rule decides, and the answer holds for the request's
whole life (preemption and recomputation included).  The KV-cache entries the reading
pass wrote, layers up to the condition's, are written again by the real pass of the
same step at the same slots.  A rejected request's steering is dropped: its tokens
point at slot 0 and come out as the bare model's.

The reading needs the whole prompt in the step: a prompt split over steps (chunked
prefill) or partly served from the prefix cache cannot be read whole.  The front ends
prevent both: gating is offered only by an engine whose scheduler never splits a
prompt (``enable_chunked_prefill=False``; ``icv serve --engine vllm`` sets it when
conditions are loaded), and each gated request gets a cache salt of its own.  Should a
prompt still arrive split, the request is left unsteered and its decision says why.

Every rank of a tensor-parallel engine runs the same reading pass (its collectives
need every rank) on the same all-reduced states, and takes rank 0's decisions (one small
broadcast per reading pass), so the ranks never steer a request apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...condition import Rule
from ...gate import READINGS, readings_of, scores_of
from ...hooks import HookHandles, output_tensor
from ..library import VectorLibrary
from .contract import decode

logger = logging.getLogger(__name__)
_KEPT_REPORTS = 8192  # front-end ids whose decisions a worker keeps for the front end to fetch
_RULE_CACHE = 1024


class _Stop(Exception):
    """Raised after the deepest layer read: the reading pass needs nothing after it."""


@dataclass(frozen=True)
class GatedRow:
    """One request of a step that needs a decision."""

    request_id: str
    report_id: str | None  # the front end's id for fetching the decision (``icv_gate``)
    rule: Rule
    row: int  # its index in the step's batch
    prompt_length: int


def gating_refusal(vllm_config: Any, library: VectorLibrary) -> str:
    """Why this engine cannot gate requests ("" if it can)."""
    if not library.condition_names:
        return "no condition files are loaded (put them among the vector files)"
    scheduler = vllm_config.scheduler_config
    if getattr(scheduler, "enable_chunked_prefill", True):
        return (
            "the engine may split a prompt over steps (chunked prefill), and a condition reads the whole "
            "prompt at once: start vLLM with --no-enable-chunked-prefill (icv serve --engine vllm does "
            "when conditions are loaded; offline: SteeredLLM(..., enable_chunked_prefill=False))"
        )
    if int(getattr(vllm_config.parallel_config, "pipeline_parallel_size", 1)) > 1:
        return "pipeline parallelism splits the layers a condition reads over stages"
    return ""


class RequestGate:
    """One worker's decisions: which gated requests are steered, decided at their prefill.

    Args:
        library: the worker's vectors and conditions.
        layers: ``(index, module)`` of every decoder layer this worker runs.
    """

    def __init__(self, library: VectorLibrary, layers: Sequence[tuple[int, nn.Module]]) -> None:
        self.library = library
        self._layers = dict(layers)
        self._fired: dict[str, bool] = {}  # internal request id -> steered
        self._reports: OrderedDict[str, dict[str, dict[str, Any]]] = OrderedDict()
        self._rules: OrderedDict[str, Rule | None] = OrderedDict()
        self.reading_passes = 0

    def rule_of(self, raw: str) -> Rule | None:
        """The rule an ``icv_steering`` argument carries (parsed once per distinct argument)."""
        if raw in self._rules:
            self._rules.move_to_end(raw)
            return self._rules[raw]
        spec = decode(raw)
        rule = None if spec is None or spec.when is None else self.library.rule(spec.when)
        self._rules[raw] = rule
        if len(self._rules) > _RULE_CACHE:
            self._rules.popitem(last=False)
        return rule

    def steered(self, request_id: str) -> bool | None:
        """Whether a decided request is steered (``None``: not decided, or not gated)."""
        return self._fired.get(request_id)

    def decide(
        self,
        rows: Sequence[GatedRow],
        query_start_loc: np.ndarray,
        computed: np.ndarray,
        read_forward: Callable[[], Any],
    ) -> None:
        """Decide ``rows`` (this step's undecided gated requests) from one unsteered reading pass."""
        whole = [
            r
            for r in rows
            if int(computed[r.row]) == 0
            and int(query_start_loc[r.row + 1] - query_start_loc[r.row]) >= r.prompt_length
        ]
        for r in rows:
            if r not in whole:
                logger.warning(
                    "icv: request %s's prompt is not read whole in this step (chunked prefill or a prefix-cache "
                    "hit): it runs unsteered",
                    r.request_id,
                )
                self._record(r, False, {}, note="the prompt was not read whole in one step: left unsteered")
        if not whole:
            return
        conditions = list({id(c): c for r in whole for c in r.rule.conditions}.values())
        readings = readings_of(conditions)
        states = self._read(readings, read_forward)
        results = []
        for r in whole:
            start = int(query_start_loc[r.row])
            mine = {}
            for kind, layer in readings:
                hidden = states[layer][start : start + r.prompt_length].unsqueeze(0)
                mask = torch.ones(1, r.prompt_length, dtype=torch.long, device=hidden.device)
                mine[kind, layer] = READINGS[kind](hidden, mask).cpu()
            scores = scores_of(r.rule.conditions, mine)
            fired = bool(r.rule.evaluate(scores)[0])
            results.append((fired, {c.name: float(s[0]) for c, s in scores.items()}))
        for r, (fired, named) in zip(whole, _agreed(results), strict=True):
            self._record(r, fired, named)

    def _read(
        self, readings: Sequence[tuple[str, int]], read_forward: Callable[[], Any]
    ) -> dict[int, torch.Tensor]:
        """Each read layer's output for the step's tokens, from a forward stopped after the deepest."""
        wanted = sorted({layer for _, layer in readings})
        deepest = wanted[-1]
        states: dict[int, torch.Tensor] = {}

        def reader(layer: int) -> Callable[[nn.Module, Any, Any], None]:
            def hook(_module: nn.Module, _args: Any, output: Any) -> None:
                if (
                    isinstance(output, tuple)
                    and len(output) == 2
                    and all(isinstance(part, torch.Tensor) for part in output)
                ):
                    hidden = output[0] + output[1]  # vLLM's (hidden_states, residual): the block output
                else:
                    hidden = output_tensor(output).clone()
                states[layer] = hidden.reshape(-1, hidden.shape[-1])  # vLLM's is flat already
                if layer == deepest:
                    raise _Stop

            return hook

        handles = HookHandles()
        try:
            for layer in wanted:
                handles.add(self._layers[layer].register_forward_hook(reader(layer)))
            with _eager_forward(), torch.no_grad(), contextlib.suppress(_Stop):
                read_forward()
        finally:
            handles.remove()
        self.reading_passes += 1
        if deepest not in states:
            raise RuntimeError("icv: the reading pass did not reach the condition's layer")
        return states

    def _record(self, row: GatedRow, fired: bool, scores: dict[str, float], note: str = "") -> None:
        self._fired[row.request_id] = fired
        if row.report_id is None:
            return
        decision: dict[str, Any] = {"steered": fired, "scores": scores}
        if note:
            decision["note"] = note
        self._reports.setdefault(row.report_id, {})[row.request_id] = decision
        self._reports.move_to_end(row.report_id)
        while len(self._reports) > _KEPT_REPORTS:
            self._reports.popitem(last=False)

    def forget(self, live: set[str] | dict[str, Any]) -> None:
        """Drop the decisions of requests that are gone (their reports stay for the front end).

        Amortised: only when the decisions outnumber twice the live requests (plus a margin).
        """
        if len(self._fired) > 2 * len(live) + 64:
            self._fired = {k: v for k, v in self._fired.items() if k in live}

    def reports(self, report_ids: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """The decisions made so far for the front end's ``report_ids``: id -> request id -> decision."""
        return {i: dict(self._reports[i]) for i in report_ids if i in self._reports}


def _agreed(results: list[tuple[bool, dict[str, float]]]) -> list[tuple[bool, dict[str, float]]]:
    """Rank 0's decisions on every rank of a tensor-parallel group (one small broadcast).

    The ranks read the same all-reduced states, but a score on the threshold's edge must
    not be decided apart by a last-bit difference: ranks that steered differently would
    feed different states into the next all-reduce.
    """
    try:
        from vllm.distributed import get_tp_group

        group = get_tp_group()
    except (ImportError, AssertionError):  # not inside vLLM, or no parallel group
        return results
    if group.world_size == 1:
        return results
    agreed: list[tuple[bool, dict[str, float]]] = group.broadcast_object(results, src=0)
    return agreed


@contextlib.contextmanager
def _eager_forward() -> Iterator[None]:
    """vLLM's forward runs eagerly (no compiled graph, no CUDA graph) inside this block."""
    try:
        from vllm.forward_context import get_forward_context, is_forward_context_available
    except ImportError:  # not inside vLLM (the main suite's tests of the reading)
        yield
        return
    if not is_forward_context_available():
        yield
        return
    context = get_forward_context()
    skip, mode = context.skip_compiled, context.cudagraph_runtime_mode
    try:
        from vllm.config import CUDAGraphMode

        context.skip_compiled = True
        context.cudagraph_runtime_mode = CUDAGraphMode.NONE
        yield
    finally:
        context.skip_compiled, context.cudagraph_runtime_mode = skip, mode
