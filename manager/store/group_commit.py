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
from collections.abc import Awaitable, Callable, Sequence
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
    def __init__(
        self,
        run_batch: Callable[[list[C]], Awaitable[Sequence[Outcome]]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: deque[tuple[C, asyncio.Future[object]]] = deque()
        self._writing: asyncio.Task[None] | None = None

    async def submit(self, call: C) -> object:
        """Run ``call`` in the next batch; its value once that batch committed."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append((call, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_all())
        return await future

    async def drain(self) -> None:
        """Return once every call submitted so far has been answered."""
        while (writing := self._writing) is not None:
            await asyncio.shield(writing)

    async def _write_all(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if batch:
                    await self._write(batch)
        finally:
            self._writing = None

    def _take(self) -> list[tuple[C, asyncio.Future[object]]]:
        batch: list[tuple[C, asyncio.Future[object]]] = []
        while self._pending and len(batch) < self._max_batch:
            call, future = self._pending.popleft()
            # A caller that gave up before its call was sent: nothing of it is written.
            if not future.done():
                batch.append((call, future))
        return batch

    async def _write(self, batch: list[tuple[C, asyncio.Future[object]]]) -> None:
        try:
            outcomes = await self._run_batch([call for call, _ in batch])
        except BaseException as exc:  # the batch as a whole failed: no call is acknowledged
            for _, future in batch:
                _settle(future, Failed(exc))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), outcome in zip(batch, outcomes, strict=False):
            _settle(future, outcome)
        # Calls the runner did not reach go first into the next batch, in their order.
        self._pending.extendleft(reversed(batch[len(outcomes) :]))


def _settle(future: asyncio.Future[object], outcome: Outcome) -> None:
    if future.done():  # its caller was cancelled meanwhile; the write stands, unanswered
        return
    if isinstance(outcome, Failed):
        future.set_exception(outcome.error)
    else:
        future.set_result(outcome)
