"""Wake-ups for readers that follow a task (live logs, state changes) in this process."""

from __future__ import annotations

import asyncio

__all__ = ["TaskEvents"]


class TaskEvents:
    """One event per followed task, replaced after each notify so every waiter wakes once.

    A follower calls :meth:`listen` *before* it reads, then waits on the event it got: a
    change that lands between the read and the wait has already set that event, so it is
    never missed.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def listen(self, task_id: str) -> asyncio.Event:
        return self._events.setdefault(task_id, asyncio.Event())

    def notify(self, task_id: str) -> None:
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()
