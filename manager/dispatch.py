"""Dispatch: tell connected delegates about queued tasks, and answer long-polls.

Notifications are only hints. The queue in the store is the truth, and this module keeps an
in-memory index of it (loaded at start, updated on every enqueue and dequeue) so choosing
whom to tell never reads the database. A hint that is lost, or a delegate that does not
act on it, costs only time: after ``widen_after`` the task is offered to every eligible
delegate again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from manager.assign import choose, eligible
from manager.hub import Hub, Session
from shared.protocol import TaskAvailable

__all__ = ["Dispatcher", "QueuedTask"]

log = structlog.get_logger("tether.dispatch")

# How many delegates hear about a new task first; more only if none of them takes it.
FIRST_FANOUT = 2


@dataclass(slots=True)
class QueuedTask:
    id: str
    type: str
    selectors: tuple[str, ...]
    created_at: float
    notified_at: float | None = None


class Dispatcher:
    def __init__(
        self,
        hub: Hub,
        *,
        widen_after: float,
        tick: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hub = hub
        self._widen_after = widen_after
        self._tick = tick
        self._clock = clock
        # Insertion-ordered: oldest first, which is the order tasks are offered in.
        self.queued: dict[str, QueuedTask] = {}
        self._kick = asyncio.Event()

    def enqueue(self, task: QueuedTask) -> None:
        self.queued[task.id] = task
        self._kick.set()

    def dequeue(self, task_id: str) -> None:
        self.queued.pop(task_id, None)

    def kick(self) -> None:
        """Capacity changed (a delegate connected or freed a slot): offer the queue again."""
        if self.queued:
            for task in self.queued.values():
                task.notified_at = None
            self._kick.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._tick):
                    await self._kick.wait()
            self._kick.clear()
            try:
                self.offer()
            except Exception:  # a bug here must not stop dispatch for everyone
                log.exception("dispatch round failed")

    def offer(self) -> None:
        if not self.queued:
            return
        now = self._clock()
        candidates = {c.delegate_id: c for c in self._hub.candidates()}
        budget = {d: c.free_slots for d, c in candidates.items()}
        for task in list(self.queued.values()):
            if not budget:
                break
            if task.notified_at is not None and now - task.notified_at < self._widen_after:
                continue
            limit = FIRST_FANOUT if task.notified_at is None else None
            pool = [c for d, c in candidates.items() if budget.get(d, 0) > 0]
            targets = choose(task.selectors, task.type, pool, limit=limit)
            if not targets:
                continue
            frame = TaskAvailable(task_id=task.id)
            for delegate_id in targets:
                self._hub.hint(delegate_id, task.id, frame)
                budget[delegate_id] -= 1
                if budget[delegate_id] <= 0:
                    del budget[delegate_id]
            task.notified_at = now

    def pick_for(self, session: Session) -> str | None:
        """The oldest queued task this (polling) delegate could take, hinted or not."""
        candidate = self._hub.candidate(session.id)
        if candidate is None:
            return None
        while session.inbox:
            task_id = session.inbox.popleft()
            hinted = self.queued.get(task_id)
            if hinted is not None and eligible(hinted.selectors, hinted.type, candidate):
                return task_id
        for task in self.queued.values():
            if eligible(task.selectors, task.type, candidate):
                return task.id
        return None
