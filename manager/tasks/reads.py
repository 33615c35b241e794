"""What the task routes read: a task, its attempts, a page of tasks, its log.

Reads only; every change of a task goes through manager.tasks.service, which owns its
transitions and the in-memory view.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from manager.errors import Unavailable
from manager.records import AttemptRecord, LogRecord, TaskFilter, TaskRecord
from manager.store.base import Store
from shared.limits import MAX_LOG_PAGE_BYTES

__all__ = ["LOG_READS_AT_ONCE", "LOG_READ_WAIT_S", "TaskReads"]

# Log pages read and being written out at once; more wait for a turn. Each page is at most
# MAX_LOG_PAGE_BYTES of text (and one line past it), so this is what bounds the memory that
# log reads take, however many readers there are: 8 x 4 MiB of text in flight.
LOG_READS_AT_ONCE = 8
# How long a reader waits for a turn before it is told to try again (a 503).
LOG_READ_WAIT_S = 10.0


class TaskReads:
    def __init__(
        self,
        store: Store,
        *,
        log_reads_at_once: int = LOG_READS_AT_ONCE,
        log_read_wait: float = LOG_READ_WAIT_S,
    ) -> None:
        self._store = store
        self._log_turns = asyncio.Semaphore(log_reads_at_once)
        self._log_reads_at_once = log_reads_at_once
        self._log_read_wait = log_read_wait

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self._store.get_task(task_id)

    async def page(self, flt: TaskFilter) -> list[TaskRecord]:
        return await self._store.list_tasks(flt)

    async def attempts(self, task_id: str) -> tuple[list[AttemptRecord], dict[str, str]]:
        """The task's attempts, and the names of the delegates that ran them, by id."""
        # One read joined with the delegates of these attempts only: a task view is built
        # for every task shown and at every follow's end, and a fleet may hold thousands.
        return await self._store.attempts_named(task_id)

    @contextlib.asynccontextmanager
    async def log_page(
        self, task_id: str, *, after: tuple[int, int] | None, limit: int
    ) -> AsyncIterator[list[LogRecord]]:
        """A page of the log (``limit`` lines, MAX_LOG_PAGE_BYTES of text, whichever comes
        first), for the block that writes it out: the turn is held until the block ends, so
        a page is counted until it has left. Raises :class:`Unavailable` when no turn comes
        within the wait."""
        try:
            async with asyncio.timeout(self._log_read_wait):
                await self._log_turns.acquire()
        except TimeoutError:
            raise Unavailable(
                "busy",
                f"{self._log_reads_at_once} log reads are in progress; try again in a moment",
            ) from None
        try:
            yield await self._store.get_logs(
                task_id, after=after, limit=limit, max_bytes=MAX_LOG_PAGE_BYTES
            )
        finally:
            self._log_turns.release()
