"""The generation engine of ``icv serve``: one model, one worker thread, requests batched as they come.

One thread owns the model (hooks are global to a model, so only one thread may
steer it).  Requests wait in a queue; the worker takes as many as the batch has
room for at every step boundary, prefills them together (left-padded), joins
them to the rows already decoding, and decodes every row one token per step.
Rows finish on their own (end of sequence, a stop string, ``max_tokens``) and
leave the batch at once; a cancelled request's row leaves at the next step.  So a
request waits for at most one step before it starts, never for a whole batch.

Work is bounded per step, as in vLLM's chunked prefill: an engine step is one
decode step for every decoding row plus one bounded piece of other work, either
one chunk of a prefill (at most ``prefill_chunk`` prompt tokens,
:mod:`icv.serving.prefill`; of the groups being prefilled, the one with the
fewest tokens left goes first) or one slice of work on the model itself (an
extraction, :meth:`Engine.run_in_slices`), taking turns when both wait.  So a
running stream pauses at most one piece's time, however long a prompt arrives.

Batching policy (:class:`BatchingPolicy`): at most ``max_batch`` rows decode
together; when the engine is idle, the first request waits up to ``gather_ms``
for others to arrive, so requests sent together are prefilled together; at most
``max_queue`` requests wait, and more are refused (503) rather than queued
without bound.

Every request gets, through its ``sink`` (called from the worker thread), text
pieces as they are decoded (:class:`TextDelta`), then :class:`Finished` or
:class:`Failed`.  Other work on the model itself (extracting a vector, which hooks
it too) goes through :meth:`Engine.run_in_slices` (or :meth:`Engine.run_exclusive`
for one piece): the worker runs it a slice at a time between two steps, with no
steering hook on the model.  Greedy float32 output is token for token what
``icv.steer(model, vector, positions=...)`` + ``model.generate`` gives for the
request alone, whatever else shares the batch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from ..errors import ICVError, RequestError, SteeringError
from ..extract import max_context, model_device, pad_token_id
from ..gate import check_condition_fits, read_prompt_states, readings_of, scores_of
from ..layers import input_embeddings
from ..steer import Steering, check_vector_fits, is_steered
from .batch import DecodeBatch
from .compiled import Compilation, CompiledDecode
from .prefill import ChunkedPrefill, attention_span
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
    # Conditional steering: {"steered": bool, "scores": {condition: score}}; None without a rule.
    decision: dict[str, Any] | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Failed:
    """The request could not be completed (the error says why; ``status`` 5xx for the server's faults)."""

    error: RequestError


Event = TextDelta | Finished | Failed
Sink = Callable[[Event], None]
T = TypeVar("T")
Steps = Generator[None, None, T]  # work in slices: each `next` runs one, the return value is the result


@dataclass(frozen=True)
class BatchingPolicy:
    """How the engine groups requests (see the module's docstring)."""

    max_batch: int = 16
    gather_ms: float = 5.0
    max_queue: int = 256
    prefill_chunk: int = 256  # prompt tokens (padding included) per engine step, as they cost with no context
    # Chunks narrow as the context grows, by the attention each token adds (icv.serving.prefill);
    # False bounds them in tokens alone (the engine before; benchmarks/serving_pause.py compares).
    chunk_by_attention: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.gather_ms < 0 or self.prefill_chunk < 1:
            raise ValueError("max_batch, max_queue and prefill_chunk must be >= 1 and gather_ms >= 0")


@dataclass
class EngineStats:
    """Counters since the engine started (read them for monitoring and benchmarks)."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    prefills: int = 0  # prefills completed (a group of requests each)
    prefill_chunks: int = 0  # forward passes of prefills (one chunk each)
    prefill_seconds: float = 0.0  # summed over chunks: / prefill_chunks = one chunk's cost
    prefill_longest: float = 0.0  # the longest chunk (s): what a decoding row waited at most for one
    joins: int = 0  # prefills whose rows joined rows already decoding
    decode_steps: int = 0
    decode_rows: int = 0  # summed over steps: / decode_steps = mean batch
    generated_tokens: int = 0
    peak_batch: int = 0
    tasks: int = 0  # work run with run_in_slices (or run_exclusive) to its end
    tasks_cancelled: int = 0  # work cancelled before its end (its client gone)
    slices: int = 0
    slice_seconds: float = 0.0

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
        self.failed = False
        self.decision: dict[str, Any] | None = None  # set at the first prefill chunk when steering has a rule

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
        self.send(
            Finished(reason, self._text.text, tuple(self.token_ids), len(self.prompt_ids), self.decision)
        )

    def fail(self, error: RequestError) -> None:
        self.done = True
        self.failed = True
        self.send(Failed(error))

    def send(self, event: Event) -> None:
        if self.cancelled:
            return
        try:
            self._sink(event)
        except Exception:  # the listener is gone (e.g. its event loop closed): stop working for it
            log.debug("request %s: its listener failed; cancelling", self.id, exc_info=True)
            self.cancel()


class SlicedTask(Generic[T]):
    """Work on the model run a slice at a time (:meth:`Engine.run_in_slices`); cancel from any thread."""

    def __init__(self, work: Callable[[nn.Module], Steps[T]]) -> None:
        self.work = work
        self.future: Future[T] = Future()
        self.steps: Steps[T] | None = None  # made on the worker when the first slice runs
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop at the next slice boundary; the future then fails (or is cancelled if not started)."""
        self._cancelled.set()
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


def one_slice(work: Callable[[nn.Module], T]) -> Callable[[nn.Module], Steps[T]]:
    """``work`` as sliced work of a single slice."""

    def steps(model: nn.Module) -> Steps[T]:
        yield from ()
        return work(model)

    return steps


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
        compilation: Compilation | None = None,
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
        embeddings: Any = input_embeddings(model)  # an nn.Embedding in transformers' models
        self._vocab = int(embeddings.num_embeddings)
        self._span = attention_span(model) if self.policy.chunk_by_attention else None
        self._queue: deque[Job] = deque()
        self._tasks: deque[SlicedTask[Any]] = deque()  # work on the model; each leaves once it ends
        self._rows: list[Job] = []
        self._prefills: list[ChunkedPrefill[Job]] = []  # taken from the queue, prompts going in
        self._prefill_turn = True  # whether a prefill chunk goes before a task's slice
        self._batch: DecodeBatch | None = None
        self._decode_steering: tuple[tuple[int, ...], list[Steering]] | None = None
        self._lock = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="icv-engine", daemon=True)
        # Last, as nothing can fail after it: the worker removes it when it ends.
        self._compiled = (
            CompiledDecode(model, compilation, self.policy.max_batch) if compilation is not None else None
        )
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

    def run_in_slices(self, work: Callable[[nn.Module], Steps[T]]) -> SlicedTask[T]:
        """Run ``work(model)``, a generator, on the worker thread one slice (one ``next``) per step.

        For work that hooks the served model itself, such as :func:`icv.extract_steps`:
        hooks are global to a model, so only the thread that steers it may add others.
        Each slice runs between two steps with no steering hook on the model, and must
        leave none of its own when it yields; decoding rows advance between slices.
        The task's future holds the generator's return value or its exception;
        :meth:`SlicedTask.cancel` stops it at the next slice boundary; work still
        running or waiting when the engine closes fails with 503.
        """
        task = SlicedTask(work)
        with self._lock:
            if self._closing:
                raise _closing()
            self._tasks.append(task)
            self._lock.notify_all()
        return task

    def run_exclusive(self, work: Callable[[nn.Module], T]) -> Future[T]:
        """Run ``work(model)`` on the worker thread between two steps, in one piece (see :meth:`run_in_slices`)."""
        return self.run_in_slices(one_slice(work)).future

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
            self._remove_compiled()
        elif self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def idle(self) -> bool:
        """No request queued or decoding (and so no hook on the model)."""
        with self._lock:
            return not self._queue and not self._rows and not self._prefills and not self._tasks

    def load(self) -> dict[str, int]:
        with self._lock:
            running = len(self._rows) + sum(len(group.rows) for group in self._prefills)
            return {"queued": len(self._queue), "running": running, "tasks": len(self._tasks)}

    @property
    def compiled(self) -> bool:
        """Whether decode steps run compiled (the engine was given a :class:`Compilation`)."""
        return self._compiled is not None

    @property
    def compiled_injections(self) -> list[str]:
        """The injections a compiled engine steers with (``"rotate@mlp"``, ...); empty when eager."""
        if self._compiled is None:
            return []
        return [f"{mode}@{site}" for mode, site in sorted(self._compiled.injections)]

    def warm_up(self, timeout: float | None = None) -> float:
        """Decode a few rows of a throwaway prompt, so the compiled graphs exist before requests come.

        Two rows decode together, then one alone: a compiled engine makes its graph
        for several rows and its graph for one (each batch width after that reuses
        them).  The prompt is long enough that no size of the batch equals its
        width, which would make the graph assume they stay equal.  Returns the
        seconds it took; an uncompiled engine has nothing to make, and returns 0.
        """
        if self._compiled is None:
            return 0.0
        if self._thread.ident is None:
            raise ICVError("start the engine before warming it up")
        began = time.perf_counter()
        prompt = [self._eos_free_token()] * 12
        listeners = [_Collect() for _ in range(2)]
        for tokens, listener in zip((3, 6), listeners, strict=True):
            params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
            self.submit(prompt, params, None, listener)
        for listener in listeners:
            listener.wait(timeout)
        return time.perf_counter() - began

    def _eos_free_token(self) -> int:
        return next(t for t in range(self._vocab) if t not in self._eos and t != self._pad)

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
            for condition in [] if steering.when is None else steering.when.conditions:
                try:
                    check_condition_fits(self.model, condition)
                except ICVError as error:
                    raise RequestError(str(error), param="steering_when", code="vector_mismatch") from None
        if self._compiled is not None:
            self._compiled.check(steering)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- the worker --

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._admit()
                if self._rows:
                    self._guarded(self._step, self._fail_decoding)
                self._run_piece()
        finally:
            self._fail_everything(_closing())
            self._fail_waiting()
            self._remove_compiled()

    def _remove_compiled(self) -> None:
        if self._compiled is not None:
            self._compiled.remove()

    def _fail_waiting(self) -> None:
        with self._lock:
            waiting, self._queue = list(self._queue), deque()
            tasks, self._tasks = list(self._tasks), deque()
        for job in waiting:
            job.fail(_closing())
        for task in tasks:
            self._end_task(task, error=_closing())

    def _guarded(self, work: Callable[[], None], fail: Callable[[RequestError], None]) -> None:
        """Run one step or chunk; if it fails (a bug, memory), ``fail`` its rows and keep serving."""
        try:
            work()
        except Exception as error:
            log.exception("the engine failed a batch")
            fail(RequestError(f"the server failed to generate: {error}", code="server_error", status=500))

    def _wait_for_work(self) -> bool:
        """Block while there is nothing to do; when idle, gather requests sent together.  False: stop."""
        with self._lock:
            if not self._rows and not self._prefills:
                while not self._queue and not self._tasks and not self._closing:
                    self._lock.wait()
                deadline = time.monotonic() + self.policy.gather_ms / 1000
                while self._queue and len(self._queue) < self.policy.max_batch and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
            return not self._closing

    def _admit(self) -> None:
        """Start prefilling the waiting requests the batch has room for, as one group."""
        with self._lock:
            taken = len(self._rows) + sum(len(group.rows) for group in self._prefills)
            jobs: list[Job] = []
            while self._queue and taken + len(jobs) < self.policy.max_batch:
                job = self._queue.popleft()
                if job.cancelled:
                    self.stats.cancelled += 1
                else:
                    jobs.append(job)
            if not jobs:
                return
            group = ChunkedPrefill(
                self.model,
                jobs,
                [job.prompt_ids for job in jobs],
                self._pad,
                self._device,
                self.policy.prefill_chunk,
                self._span,
            )
            self._prefills.append(group)

    def _run_piece(self) -> None:
        """One bounded piece of work besides decoding: a prefill chunk or a task's slice, in turn."""
        with self._lock:
            prefill, task = bool(self._prefills), bool(self._tasks)
        if prefill and (self._prefill_turn or not task):
            group = min(self._prefills, key=lambda g: g.remaining_tokens)
            self._guarded(lambda: self._prefill_chunk(group), lambda error: self._fail_group(group, error))
            self._prefill_turn = False
        elif task:
            self._run_slice()
            self._prefill_turn = True

    def _prefill_chunk(self, group: ChunkedPrefill[Job]) -> None:
        if all(job.cancelled for job in group.rows):
            self._forget(group)
            self.stats.cancelled += len(group.rows)
            return
        self._release_steering()  # the decode steering's rows are not this pass's rows
        self._decide(group.rows)
        steerings = steer_rows(self.model, [job.steering for job in group.rows], "prompt")
        began = time.perf_counter()
        try:
            logits = group.advance()
        finally:
            for steering in steerings:
                steering.remove()
        self.stats.prefill_chunks += 1
        took = time.perf_counter() - began
        self.stats.prefill_seconds += took
        self.stats.prefill_longest = max(self.stats.prefill_longest, took)
        if logits is None:
            return
        self.stats.prefills += 1
        self._take_tokens(group.rows, logits)
        self._join(group)
        self._drop_done()

    def _decide(self, jobs: list[Job]) -> None:
        """Conditional steering: each new request's prompt read once, unsteered (no hook is on
        the model here), before its first chunk; a request the rule rejects loses its steering."""
        for job in jobs:
            steering = job.steering
            if steering is None or steering.when is None or job.decision is not None:
                continue
            conditions = steering.when.conditions
            ids = torch.tensor([job.prompt_ids], device=model_device(self.model))
            states = read_prompt_states(self.model, ids, None, readings_of(conditions))
            scores = scores_of(conditions, states)
            fired = bool(steering.when.evaluate(scores)[0])
            job.decision = {
                "steered": fired,
                "scores": {c.name: float(s[0]) for c, s in scores.items()},
            }
            if not fired:
                job.steering = None  # the whole request runs unsteered: the bare model's tokens

    def _join(self, group: ChunkedPrefill[Job]) -> None:
        """The group's rows join the decoding rows, but for those already ended.

        A row that ends with its first token (``max_tokens: 1``, an end of sequence, a
        failure) leaves before the join: joining it first would pad the running rows'
        cache to its prompt's width, and copy it, only to cut it off again.
        """
        live = [i for i, job in enumerate(group.rows) if not job.done and not job.cancelled]
        self._count_ended([job for i, job in enumerate(group.rows) if i not in live])
        if live and len(live) < len(group.rows):
            group.batch.keep(live)
        if live and self._batch is None:
            self._batch = group.batch
        elif live:
            assert self._batch is not None
            self.stats.joins += 1
            self._batch.extend(group.batch)
        with self._lock:
            self._prefills.remove(group)
            self._rows = self._rows + [group.rows[i] for i in live]

    def _forget(self, group: ChunkedPrefill[Job]) -> None:
        with self._lock:
            if group in self._prefills:
                self._prefills.remove(group)

    def _run_slice(self) -> None:
        """Run the first task's next slice, the decode steering's hooks off meanwhile."""
        with self._lock:
            task = self._tasks[0]
        if task.cancelled:
            self.stats.tasks_cancelled += 1
            self._end_task(task, error=RequestError("the work was cancelled", code="cancelled", status=499))
            return
        if task.steps is None and not task.future.set_running_or_notify_cancel():
            self._end_task(task)  # cancelled before it started
            return
        self._release_steering()  # taken up again at the next step
        began = time.perf_counter()
        try:
            if task.steps is None:
                task.steps = task.work(self.model)
            next(task.steps)
        except StopIteration as finished:
            self.stats.tasks += 1
            self._end_task(task, result=finished.value)
        except Exception as error:
            self.stats.tasks += 1
            self._end_task(task, error=error)
        finally:
            self.stats.slices += 1
            self.stats.slice_seconds += time.perf_counter() - began

    def _end_task(self, task: SlicedTask[Any], *, result: Any = None, error: Exception | None = None) -> None:
        """Take ``task`` off the queue with its result or error (the generator closed)."""
        with self._lock:
            if task in self._tasks:
                self._tasks.remove(task)
        if task.steps is not None:
            task.steps.close()
        future = task.future
        if future.done() or (not future.running() and not future.set_running_or_notify_cancel()):
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _step(self) -> None:
        self._drop_done()
        if not self._rows:
            return
        assert self._batch is not None
        self._hold_decode_steering()
        with self._compiled.running() if self._compiled is not None else contextlib.nullcontext():
            logits = self._batch.step([job.token_ids[-1] for job in self._rows])
        self.stats.decode_steps += 1
        self.stats.decode_rows += len(self._rows)
        self.stats.peak_batch = max(self.stats.peak_batch, len(self._rows))
        self._take_tokens(self._rows, logits)
        self._drop_done()

    def _take_tokens(self, jobs: list[Job], logits: torch.Tensor) -> None:
        """Each row's next token; a row whose logits are not finite ends alone, with an error."""
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        for job, ok in zip(jobs, finite, strict=True):
            if not ok:
                job.fail(_non_finite(job))
        good = [row for row, ok in enumerate(finite) if ok]
        if not good:
            return
        picked = [jobs[row] for row in good]
        rows = logits if len(good) == len(jobs) else logits[good]
        tokens = next_tokens(rows, [job.params for job in picked], [job.generator for job in picked])
        self.stats.generated_tokens += len(tokens)
        for job, token in zip(picked, tokens, strict=True):
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
        self._count_ended([self._rows[i] for i in range(len(self._rows)) if i not in keep])
        # Hooks off before the engine can look idle: whoever waits for idle finds the model clean.
        if keep:
            assert self._batch is not None
            self._batch.keep(keep)
        else:
            self._batch = None
            self._release_steering()
        with self._lock:
            self._rows = [self._rows[i] for i in keep]

    def _count_ended(self, jobs: list[Job]) -> None:
        for job in jobs:
            if job.failed:
                self.stats.failed += 1
            elif job.done:
                self.stats.finished += 1
            elif job.cancelled:
                self.stats.cancelled += 1

    def _fail_decoding(self, error: RequestError) -> None:
        """Fail every decoding row (their shared cache may be half-written); prefills go on."""
        self._release_steering()
        with self._lock:
            rows, self._rows = self._rows, []
        self._batch = None
        self._fail(rows, error)

    def _fail_group(self, group: ChunkedPrefill[Job], error: RequestError) -> None:
        """Fail one prefill group's rows; the decoding rows and other groups go on."""
        self._release_steering()
        self._forget(group)
        self._fail(group.rows, error)

    def _fail_everything(self, error: RequestError) -> None:
        self._fail_decoding(error)
        with self._lock:
            groups, self._prefills = self._prefills, []
        for group in groups:
            self._fail(group.rows, error)

    def _fail(self, jobs: list[Job], error: RequestError) -> None:
        for job in jobs:
            if not job.done:
                self.stats.failed += 1
                job.fail(error)


class _Collect:
    """A sink that waits for its request's end (what :meth:`Engine.warm_up` sends)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: RequestError | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, Failed):
            self._error = event.error
        if isinstance(event, Finished | Failed):
            self._done.set()

    def wait(self, timeout: float | None) -> None:
        if not self._done.wait(timeout):
            raise ICVError(f"the engine's warm-up did not finish within {timeout} s")
        if self._error is not None:
            raise ICVError(f"the engine's warm-up failed: {self._error}")


def _non_finite(job: Job) -> RequestError:
    """Why a row ended: its numbers overflowed (the steering's doing when it is steered)."""
    if job.steering is not None:
        return RequestError(
            "the steering drove the model's numbers out of range (its logits are not finite): "
            "lower the strength or use another vector",
            param="steering",
            code="steering_overflow",
        )
    return RequestError(
        "the model's logits for this request are not finite", code="non_finite_logits", status=500
    )


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
