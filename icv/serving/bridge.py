"""From the engine's worker thread to the event loop: one HTTP request's events, as they come.

An HTTP request becomes one engine job per prompt.  The worker calls each job's
sink from its own thread; the sink only hands the event to the event loop
(``call_soon_threadsafe``), so the loop never waits on the worker and the worker
never waits on a slow client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from functools import partial

from ..errors import RequestError
from .engine import Engine, Event, Failed, Finished, Job
from .sampling import SamplingParams
from .steering import RowSteering


class Call:
    """The engine jobs of one HTTP request; :meth:`events` yields ``(prompt index, event)``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self._jobs: list[Job] = []

    def submit(
        self, prompts: Sequence[list[int]], params: Sequence[SamplingParams], steering: RowSteering | None
    ) -> None:
        """Queue every prompt, or none: a refused prompt cancels the ones queued before it."""
        try:
            for index, (ids, p) in enumerate(zip(prompts, params, strict=True)):
                self._jobs.append(self._engine.submit(ids, p, steering, partial(self._post, index)))
        except RequestError as error:
            self.cancel()
            if len(prompts) > 1 and error.param in ("prompt", "max_tokens"):
                error.message = f"prompt {len(self._jobs)}: {error.message}"
                error.args = (error.message,)
            raise

    def _post(self, index: int, event: Event) -> None:  # on the worker thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, event))

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """Every job's events in arrival order, until each has finished; stops at the first failure."""
        open_jobs = len(self._jobs)
        while open_jobs:
            index, event = await self._queue.get()
            yield index, event
            if isinstance(event, Failed):
                return
            if isinstance(event, Finished):
                open_jobs -= 1

    def cancel(self) -> None:
        """Drop every job of this request (the engine frees their rows at the next step)."""
        for job in self._jobs:
            job.cancel()
