"""Group commit, the event loop's side: calls that arrive while a batch is being written wait
together and go to the database as the next batch, in one transaction with one commit.

The store gives a batch runner: it takes the calls of one batch and answers, in order, the
outcome of each call it ran (its value, or the exception its own caller gets). A runner that
answers fewer outcomes than calls did not run the rest (the transaction was lost under them);
they go first into the next batch. Every caller is answered only after its batch's runner
returned, that is after the commit (or with the error that kept it from committing), so
nothing is acknowledged before it is durable.

All of this runs on the event loop's thread: no lock, and one wake-up of the loop per batch
rather than one per call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MAX_BATCH", "Failed", "GroupCommit", "Outcome"]

C = TypeVar("C")

# Calls in one transaction at most: a burst is cut into several commits, so one batch's
# latency stays bounded and later calls are not starved behind an endless one.
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Failed:
    """A call's outcome when it raised: its caller gets ``error``."""

    error: BaseException


Outcome = object  # the call's value, or a Failed


class GroupCommit(Generic[C]):
    """``start_batch`` starts writing one batch and returns the future of its outcomes (for
    SQLite: the hop to the store's thread). Callbacks, not a task per batch: a lone call on an
    idle store costs one loop turn and one hop, as it did before batching."""

    def __init__(
        self,
        start_batch: Callable[[list[C]], asyncio.Future[Sequence[Outcome]]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._start_batch = start_batch
        self._max_batch = max_batch
        self._pending: deque[tuple[C, asyncio.Future[object]]] = deque()
        self._busy = False
        self._idle: asyncio.Event | None = None

    async def submit(self, call: C) -> object:
        """Run ``call`` in the next batch; its value once that batch committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        self._pending.append((call, future))
        if not self._busy:
            self._busy = True
            # At the loop's next turn: the calls made until then (a gather's) join this batch.
            loop.call_soon(self._next)
        return await future

    async def drain(self) -> None:
        """Return once every call submitted so far has been answered."""
        while self._busy:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    def _next(self) -> None:
        batch = self._take()
        if not batch:
            self._busy = False
            if self._idle is not None:
                self._idle.set()
                self._idle = None
            return
        try:
            started = self._start_batch([call for call, _ in batch])
        except Exception as exc:  # not started (the store is closing): none of it is written
            self._settle_all(batch, exc)
            self._next()
            return
        started.add_done_callback(lambda done: self._written(batch, done))

    def _take(self) -> list[tuple[C, asyncio.Future[object]]]:
        batch: list[tuple[C, asyncio.Future[object]]] = []
        while self._pending and len(batch) < self._max_batch:
            call, future = self._pending.popleft()
            # A caller that gave up before its call was sent: nothing of it is written.
            if not future.done():
                batch.append((call, future))
        return batch

    def _written(
        self,
        batch: list[tuple[C, asyncio.Future[object]]],
        done: asyncio.Future[Sequence[Outcome]],
    ) -> None:
        if done.cancelled():
            self._settle_all(batch, asyncio.CancelledError())
        elif (exc := done.exception()) is not None:  # the batch as a whole failed
            self._settle_all(batch, exc)
        else:
            outcomes = done.result()
            for (_, future), outcome in zip(batch, outcomes, strict=False):
                _settle(future, outcome)
            # Calls the runner did not reach go first into the next batch, in their order.
            self._pending.extendleft(reversed(batch[len(outcomes) :]))
        self._next()

    @staticmethod
    def _settle_all(batch: list[tuple[C, asyncio.Future[object]]], exc: BaseException) -> None:
        for _, future in batch:
            _settle(future, Failed(exc))


def _settle(future: asyncio.Future[object], outcome: Outcome) -> None:
    if future.done():  # its caller was cancelled meanwhile; the write stands, unanswered
        return
    if isinstance(outcome, Failed):
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome)
