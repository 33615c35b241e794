"""Wake-ups for readers that follow a task (live logs, state changes) in this process, and
for those that follow the task list (a console list: a task created or changing state)."""

from __future__ import annotations

import asyncio
import weakref

__all__ = ["LogTally", "TaskEvents"]


class LogTally:
    """How often a task's log grew (or may have) while a follower held this: a follower that
    read to the end of the log when the count was N need not read it again while it is N.

    Counted on an object the follower holds for its whole stream, not on the one-shot wake
    event: a log notify between one wake and the next listen finds no event to mark, and
    would be missed."""

    __slots__ = ("__weakref__", "grown")

    def __init__(self) -> None:
        self.grown = 0


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
        # Held weakly as well: a tally lives as long as a follow of its task.
        self._tallies: weakref.WeakValueDictionary[str, LogTally] = weakref.WeakValueDictionary()

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

    def tally(self, task_id: str) -> LogTally:
        """The count of the task's log notifies, for a follower to hold while it follows."""
        tally = self._tallies.get(task_id)
        if tally is None:
            tally = self._tallies[task_id] = LogTally()
        return tally

    def notify(self, task_id: str, *, listed: bool = False, logs: bool = False) -> None:
        """``listed``: the change shows in a task list (not only new log lines). ``logs``:
        lines were added to its log (or may have been: another replica's word)."""
        if logs:
            tally = self._tallies.get(task_id)
            if tally is not None:
                tally.grown += 1
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()
        if listed:
            woken, self._listed = self._listed, asyncio.Event()
            woken.set()
