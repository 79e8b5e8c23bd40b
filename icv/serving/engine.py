"""The generation engine of ``icv serve``: one model, one worker thread, requests batched as they come.

One thread owns the model (hooks are global to a model, so only one thread may
steer it).  Requests wait in a queue; the worker takes as many as the batch has
room for at every step boundary, prefills them together (left-padded), joins
them to the rows already decoding, and decodes every row one token per step.
Rows finish on their own (end of sequence, a stop string, ``max_tokens``) and
leave the batch at once; a cancelled request's row leaves at the next step.  So a
request waits for at most one step before it starts, never for a whole batch.

Batching policy (:class:`BatchingPolicy`): at most ``max_batch`` rows decode
together; when the engine is idle, the first request waits up to ``gather_ms``
for others to arrive, so requests sent together are prefilled together; at most
``max_queue`` requests wait, and more are refused (503) rather than queued
without bound.

Every request gets, through its ``sink`` (called from the worker thread), text
pieces as they are decoded (:class:`TextDelta`), then :class:`Finished` or
:class:`Failed`.  Other work on the model itself (extracting a vector, which hooks
it too) goes through :meth:`Engine.run_exclusive`: the worker runs it between two
steps, with no steering hook on the model.  Greedy float32 output is token for token what
``icv.steer(model, vector, positions=...)`` + ``model.generate`` gives for the
request alone, whatever else shares the batch.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar, Union

import torch
from torch import nn

from ..errors import ICVError, RequestError, SteeringError
from ..extract import max_context, model_device, pad_token_id
from ..steer import Steering, check_vector_fits, is_steered
from .batch import DecodeBatch
from .sampling import SamplingParams, next_tokens, row_generator
from .steering import RowSteering, steer_rows
from .text import TextStream

log = logging.getLogger("icv.serving")


# -- what a request hears back ----------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """New generated text (may be empty of tokens' worth: pieces are whole characters)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The request is done: ``reason`` is ``"stop"`` (end of sequence or a stop string) or ``"length"``."""

    reason: str
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Failed:
    """The request could not be completed (the error says why; ``status`` 5xx for the server's faults)."""

    error: RequestError


Event = Union[TextDelta, Finished, Failed]
Sink = Callable[[Event], None]
T = TypeVar("T")
Task = tuple[Callable[[nn.Module], Any], "Future[Any]"]


@dataclass(frozen=True)
class BatchingPolicy:
    """How the engine groups requests (see the module's docstring)."""

    max_batch: int = 16
    gather_ms: float = 5.0
    max_queue: int = 256

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.gather_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and gather_ms >= 0")


@dataclass
class EngineStats:
    """Counters since the engine started (read them for monitoring and benchmarks)."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    prefills: int = 0
    joins: int = 0  # prefills whose rows joined rows already decoding
    decode_steps: int = 0
    decode_rows: int = 0  # summed over steps: / decode_steps = mean batch
    generated_tokens: int = 0
    peak_batch: int = 0
    tasks: int = 0  # work run with run_exclusive

    def snapshot(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["mean_batch"] = self.decode_rows / self.decode_steps if self.decode_steps else 0.0
        return data


# -- one request ------------------------------------------------------------------------


class Job:
    """One request inside the engine; :meth:`cancel` is safe from any thread."""

    _ids = itertools.count()

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        steering: RowSteering | None,
        sink: Sink,
        decode: Callable[[list[int]], str],
    ) -> None:
        self.id = next(self._ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.steering = steering
        self.token_ids: list[int] = []
        self.generator = row_generator(params)
        self._sink = sink
        self._text = TextStream(decode, params.stop)
        self._cancelled = threading.Event()
        self.done = False

    def cancel(self) -> None:
        """Drop this request at the next step boundary; it hears nothing more."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def accept(self, token: int, eos: frozenset[int]) -> None:
        """Take the next generated token; tell the request what it adds, and finish it if due."""
        self.token_ids.append(token)
        piece = self._text.update(self.token_ids)
        if piece:
            self.send(TextDelta(piece))
        if (token in eos and not self.params.ignore_eos) or self._text.stopped:
            self.finish("stop")
        elif len(self.token_ids) >= self.params.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        rest = self._text.finish()
        if rest:
            self.send(TextDelta(rest))
        self.done = True
        self.send(Finished(reason, self._text.text, tuple(self.token_ids), len(self.prompt_ids)))

    def fail(self, error: RequestError) -> None:
        self.done = True
        self.send(Failed(error))

    def send(self, event: Event) -> None:
        if self.cancelled:
            return
        try:
            self._sink(event)
        except Exception:  # the listener is gone (e.g. its event loop closed): stop working for it
            log.debug("request %s: its listener failed; cancelling", self.id, exc_info=True)
            self.cancel()


# -- the engine -------------------------------------------------------------------------


class Engine:
    """Serves generation requests for one model from one worker thread (see the module's docstring)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        policy: BatchingPolicy | None = None,
        max_tokens: int = 1024,
        start: bool = True,
    ) -> None:
        if is_steered(model):
            raise SteeringError("the model is already steered: remove that steering before serving it")
        self.model = model
        self.tokenizer = tokenizer
        self.policy = policy or BatchingPolicy()
        self.max_tokens = max_tokens
        self.context = max_context(model, tokenizer)
        self.stats = EngineStats()
        self._device = model_device(model)
        self._pad = pad_token_id(tokenizer)
        self._eos = _eos_ids(model, tokenizer)
        self._vocab = int(model.get_input_embeddings().num_embeddings)
        self._queue: deque[Job] = deque()
        self._tasks: deque[Task] = deque()  # run_exclusive's work; each leaves once it has run
        self._rows: list[Job] = []
        self._starting: list[Job] = []  # taken from the queue, not yet decoding
        self._batch: DecodeBatch | None = None
        self._decode_steering: tuple[tuple[int, ...], list[Steering]] | None = None
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="icv-engine", daemon=True)
        if start:
            self.start()

    # -- the requests' side (any thread) --

    def submit(
        self, prompt_ids: Sequence[int], params: SamplingParams, steering: RowSteering | None, sink: Sink
    ) -> Job:
        """Queue a request; raises :class:`RequestError` (nothing queued) if it cannot be served."""
        ids = [int(t) for t in prompt_ids]
        self._check(ids, params, steering)
        job = Job(ids, params, steering, sink, self._decode)
        with self._lock:
            if self._closing:
                raise _closing()
            if len(self._queue) >= self.policy.max_queue:
                raise RequestError(
                    f"the server is busy ({len(self._queue)} requests waiting); retry later",
                    code="server_busy",
                    status=503,
                )
            self._queue.append(job)
            self.stats.requests += 1
            self._lock.notify_all()
        return job

    def run_exclusive(self, work: Callable[[nn.Module], T]) -> Future[T]:
        """Run ``work(model)`` on the worker thread between two steps, with no steering hook on the model.

        For work that hooks the served model itself, such as :func:`icv.extract`: hooks are
        global to a model, so only the thread that steers it may add others.  Decoding
        pauses while ``work`` runs.  The future holds its result or its exception; work
        still waiting when the engine closes fails with 503.
        """
        future: Future[T] = Future()
        with self._lock:
            if self._closing:
                raise _closing()
            self._tasks.append((work, future))
            self._lock.notify_all()
        return future

    def start(self) -> None:
        """Start the worker (engines made with ``start=False`` collect requests until then)."""
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker; requests still queued or running fail with 503.  Idempotent."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
            never_started = self._thread.ident is None
        if never_started:
            self._fail_waiting()
        elif self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def idle(self) -> bool:
        """No request queued or decoding (and so no hook on the model)."""
        with self._lock:
            return not self._queue and not self._rows and not self._starting and not self._tasks

    def load(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._queue), "running": len(self._rows) + len(self._starting)}

    def _check(self, ids: list[int], params: SamplingParams, steering: RowSteering | None) -> None:
        if not ids:
            raise RequestError("the prompt is empty", param="prompt", code="empty_prompt")
        if params.max_tokens < 1 or params.max_tokens > self.max_tokens:
            raise RequestError(
                f"max_tokens must be between 1 and {self.max_tokens}, got {params.max_tokens}",
                param="max_tokens",
                code="invalid_max_tokens",
            )
        bad = [t for t in ids if not 0 <= t < self._vocab]
        if bad:
            raise RequestError(
                f"token id {bad[0]} is outside the vocabulary (0..{self._vocab - 1})",
                param="prompt",
                code="invalid_token",
            )
        if len(ids) + params.max_tokens > self.context:
            raise RequestError(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({params.max_tokens}) exceeds the model's "
                f"context of {self.context} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        if steering is not None:
            try:
                check_vector_fits(self.model, steering.vector)
            except ICVError as error:
                raise RequestError(str(error), param="steering", code="vector_mismatch") from None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- the worker --

    def _run(self) -> None:
        try:
            while True:
                jobs = self._admit()
                if jobs is None:
                    break
                self._run_tasks()
                if jobs:
                    self._guarded(self._prefill, jobs)
                if self._rows:
                    self._guarded(self._step)
        finally:
            self._fail_running(_closing(), [])
            self._fail_waiting()

    def _fail_waiting(self) -> None:
        with self._lock:
            waiting, self._queue = list(self._queue), deque()
            tasks, self._tasks = list(self._tasks), deque()
        for job in waiting:
            job.fail(_closing())
        for _, future in tasks:
            if future.set_running_or_notify_cancel():
                future.set_exception(_closing())

    def _run_tasks(self) -> None:
        """Run the waiting :meth:`run_exclusive` work, the decode steering's hooks off meanwhile."""
        while True:
            with self._lock:
                if not self._tasks:
                    return
                work, future = self._tasks[0]
            self._release_steering()  # taken up again at the next step
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(work(self.model))
                except Exception as error:
                    future.set_exception(error)
            with self._lock:
                self._tasks.popleft()
                self.stats.tasks += 1

    def _guarded(self, work: Callable[..., None], *args: Any) -> None:
        """Run one prefill or step; if it fails (a bug, memory), fail its rows and keep serving."""
        try:
            work(*args)
        except Exception as error:
            log.exception("the engine failed a batch")
            failure = RequestError(f"the server failed to generate: {error}", code="server_error", status=500)
            self._fail_running(failure, args[0] if args else [])

    def _admit(self) -> list[Job] | None:
        """Requests to start now (blocking while there is nothing to do); ``None`` to stop."""
        with self._lock:
            if not self._rows:
                while not self._queue and not self._tasks and not self._closing:
                    self._lock.wait()
                deadline = time.monotonic() + self.policy.gather_ms / 1000
                while len(self._queue) < self.policy.max_batch and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
            if self._closing:
                return None
            jobs: list[Job] = []
            while self._queue and len(self._rows) + len(jobs) < self.policy.max_batch:
                job = self._queue.popleft()
                if job.cancelled:
                    self.stats.cancelled += 1
                else:
                    jobs.append(job)
            self._starting = jobs
            return jobs

    def _prefill(self, jobs: list[Job]) -> None:
        self._release_steering()  # the decode steering's rows are not this pass's rows
        steerings = steer_rows(self.model, [job.steering for job in jobs], "prompt")
        try:
            batch, logits = DecodeBatch.prefill(
                self.model, [job.prompt_ids for job in jobs], self._pad, self._device
            )
        finally:
            for steering in steerings:
                steering.remove()
        self.stats.prefills += 1
        self._take_tokens(jobs, logits)
        if self._batch is None:
            self._batch = batch
        else:
            self.stats.joins += 1
            self._batch.extend(batch)
        with self._lock:
            self._rows, self._starting = self._rows + jobs, []
        self._drop_done()

    def _step(self) -> None:
        self._drop_done()
        if not self._rows:
            return
        assert self._batch is not None
        self._hold_decode_steering()
        logits = self._batch.step([job.token_ids[-1] for job in self._rows])
        self.stats.decode_steps += 1
        self.stats.decode_rows += len(self._rows)
        self.stats.peak_batch = max(self.stats.peak_batch, len(self._rows))
        self._take_tokens(self._rows, logits)
        self._drop_done()

    def _take_tokens(self, jobs: list[Job], logits: torch.Tensor) -> None:
        tokens = next_tokens(logits, [job.params for job in jobs], [job.generator for job in jobs])
        self.stats.generated_tokens += len(tokens)
        for job, token in zip(jobs, tokens):
            if not job.cancelled:
                job.accept(token, self._eos)

    def _hold_decode_steering(self) -> None:
        """Steer the decode steps; the hooks stay on while the rows stay the same."""
        key = tuple(job.id for job in self._rows)
        if self._decode_steering is not None and self._decode_steering[0] == key:
            return
        self._release_steering()
        self._decode_steering = (
            key,
            steer_rows(self.model, [job.steering for job in self._rows], "generated"),
        )

    def _release_steering(self) -> None:
        if self._decode_steering is not None:
            for steering in self._decode_steering[1]:
                steering.remove()
            self._decode_steering = None

    def _drop_done(self) -> None:
        keep = [i for i, job in enumerate(self._rows) if not job.done and not job.cancelled]
        if len(keep) == len(self._rows):
            return
        for job in self._rows:
            if job.done:
                self.stats.finished += 1
            elif job.cancelled:
                self.stats.cancelled += 1
        # Hooks off before the engine can look idle: whoever waits for idle finds the model clean.
        if keep:
            assert self._batch is not None
            self._batch.keep(keep)
        else:
            self._batch = None
            self._release_steering()
        with self._lock:
            self._rows = [self._rows[i] for i in keep]

    def _fail_running(self, error: RequestError, extra: list[Job]) -> None:
        self._release_steering()
        with self._lock:
            rows, self._rows, self._starting = self._rows, [], []
        self._batch = None
        for job in {id(j): j for j in [*rows, *extra]}.values():
            if not job.done:
                self.stats.failed += 1
                job.fail(error)


def _closing() -> RequestError:
    return RequestError("the server is shutting down", code="server_closing", status=503)


def _eos_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    """The tokens that end a sequence, as ``model.generate`` decides (its generation config first)."""
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    if value is None:
        value = getattr(tokenizer, "eos_token_id", None)
    if value is None:
        return frozenset()
    return frozenset([value] if isinstance(value, int) else [int(v) for v in value])
