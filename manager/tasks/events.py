"""Wake-ups for readers that follow a task (live logs, state changes) in this process, and
for those that follow the task list (a console list: a task created or changing state).

A follower also holds the task's :class:`TaskNews` for as long as it follows: how often the
log grew, and the task as this process last wrote it, so a wake after a change made here
costs no store read."""

from __future__ import annotations

import asyncio
import weakref

from manager.records import TaskRecord

__all__ = ["TaskEvents", "TaskNews"]


class TaskNews:
    """What a follower of one task learns between its wakes, kept while it holds this.

    ``grown``: how often the task's log grew (or may have). A follower that read to the end
    of the log when the count was N need not read it again while it is N.

    ``task``: the task as this process last wrote it (the row its store write returned),
    or None when the store must be read: nothing was written here since the follower began,
    or another replica changed the task. Once another replica's word came (``remote``),
    it stays None: that word may arrive before the answer to an older write made here, whose
    row would then be taken for the newest.

    Kept on an object the follower holds for its whole stream, not on the one-shot wake
    event: a notify between one wake and the next listen finds no event to mark."""

    __slots__ = ("__weakref__", "grown", "remote", "task")

    def __init__(self) -> None:
        self.grown = 0
        self.task: TaskRecord | None = None
        self.remote = False


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
        # Held weakly as well: news lives as long as a follow of its task.
        self._news: weakref.WeakValueDictionary[str, TaskNews] = weakref.WeakValueDictionary()

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

    def news(self, task_id: str) -> TaskNews:
        """The task's news, for a follower to hold while it follows."""
        news = self._news.get(task_id)
        if news is None:
            news = self._news[task_id] = TaskNews()
        return news

    def wrote(self, task: TaskRecord) -> None:
        """The store committed ``task`` as it is now, written by this process. Called as the
        write's answer arrives, before the notify it leads to. Only SQLite answers writes in
        the order they committed (one write queue): a follower trusts this only there
        (manager.api.tasks.follow_task)."""
        news = self._news.get(task.id)
        if news is not None and not news.remote:
            news.task = task

    def notify(
        self, task_id: str, *, listed: bool = False, logs: bool = False, remote: bool = False
    ) -> None:
        """``listed``: the change shows in a task list (not only new log lines). ``logs``:
        lines were added to its log (or may have been). ``remote``: another replica's word,
        so the task must be read from the store from now on."""
        news = self._news.get(task_id)
        if news is not None:
            if logs:
                news.grown += 1
            if remote:
                news.remote, news.task = True, None
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()
        if listed:
            woken, self._listed = self._listed, asyncio.Event()
            woken.set()
