"""Wake-ups for readers that follow a task (live logs, state changes) in this process, and
for those that follow the task list (a console list: a task created or changing state)."""

from __future__ import annotations

import asyncio
import weakref

__all__ = ["TaskEvents"]


class TaskEvents:
    """One event per followed task, replaced after each notify so every waiter wakes once.

    A follower calls :meth:`listen` *before* it reads, then waits on the event it got: a
    change that lands between the read and the wait has already set that event, so it is
    never missed. :meth:`listen_listed` is the same for a change of any task that a task
    list shows (created, its state, a cancel asked): log lines alone do not wake it.
    """

    def __init__(self) -> None:
        # Held weakly: an event lives as long as someone waits on it. A follow listens before
        # its permission check, so a refused one (an unknown id, of any length) and one whose
        # task ended without a further notify leave nothing behind.
        self._events: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )
        self._listed = asyncio.Event()

    def listen(self, task_id: str) -> asyncio.Event:
        event = self._events.get(task_id)
        if event is None:
            event = self._events[task_id] = asyncio.Event()
        return event

    def listened(self) -> int:
        """Tasks someone is listening for now."""
        return len(self._events)

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
