"""Wake-ups for readers that follow a task (live logs, state changes) in this process, and
for those that follow the task list (a console list: a task created or changing state)."""

from __future__ import annotations

import asyncio

__all__ = ["TaskEvents"]


class TaskEvents:
    """One event per followed task, replaced after each notify so every waiter wakes once.

    A follower calls :meth:`listen` *before* it reads, then waits on the event it got: a
    change that lands between the read and the wait has already set that event, so it is
    never missed. :meth:`listen_listed` is the same for a change of any task that a task
    list shows (created, its state, a cancel asked): log lines alone do not wake it.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._listed = asyncio.Event()

    def listen(self, task_id: str) -> asyncio.Event:
        return self._events.setdefault(task_id, asyncio.Event())

    def listen_listed(self) -> asyncio.Event:
        return self._listed

    def notify(self, task_id: str, *, listed: bool = False) -> None:
        """``listed``: the change shows in a task list (not only new log lines)."""
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()
        if listed:
            woken, self._listed = self._listed, asyncio.Event()
            woken.set()
