"""What the task routes read: a task, its attempts, a page of tasks, its log.

Reads only; every change of a task goes through manager.tasks.service, which owns its
transitions and the in-memory view.
"""

from __future__ import annotations

from manager.records import AttemptRecord, LogRecord, TaskFilter, TaskRecord
from manager.store.base import Store

__all__ = ["TaskReads"]


class TaskReads:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, task_id: str) -> TaskRecord | None:
        return await self._store.get_task(task_id)

    async def page(self, flt: TaskFilter) -> list[TaskRecord]:
        return await self._store.list_tasks(flt)

    async def attempts(self, task_id: str) -> tuple[list[AttemptRecord], dict[str, str]]:
        """The task's attempts, and the names of the delegates that ran them, by id."""
        attempts = await self._store.attempts(task_id)
        names = {d.id: d.name for d in await self._store.list_delegates()} if attempts else {}
        return attempts, names

    async def logs(
        self, task_id: str, *, after: tuple[int, int] | None, limit: int
    ) -> list[LogRecord]:
        return await self._store.get_logs(task_id, after=after, limit=limit)
