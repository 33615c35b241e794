"""Dispatch: tell connected delegates about queued tasks, and answer long-polls.

Notifications are only hints. The queue in the store is the truth, and this module keeps an
in-memory index of it (loaded at start, updated on every enqueue and dequeue) so choosing
whom to tell never reads the database.

A round costs what changed, not the size of the queue: a task that was hinted waits in
``hinted`` until someone acquires it or ``widen_after`` passes (then it is offered to every
eligible delegate), and a delegate is never hinted about more tasks than it has free slots
minus the hints it already holds. A freed slot therefore wakes one cheap round instead of
re-offering the whole queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from manager.core.assign import choose, eligible
from manager.core.eligibility import EnvFacts, Place, place_of
from manager.tasks.hub import Hub, Session
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
    # Who was told, so their outstanding-hint counts drop when the task leaves the queue.
    hinted_to: tuple[str, ...] = field(default=())
    # A task nobody took after its first hints is offered to everyone eligible.
    widened: bool = False
    # Queue order (set at enqueue): expired hints go back among the unhinted by it.
    seq: int = 0
    # Where it runs: only delegates whose token's scope covers it are told of it.
    app_id: str | None = None
    env_id: str | None = None


class Dispatcher:
    def __init__(
        self,
        hub: Hub,
        *,
        widen_after: float,
        tick: float,
        # Monotonic: hint widening is a duration.
        clock: Callable[[], float] = time.monotonic,
        envs: Mapping[str, EnvFacts] | None = None,
    ) -> None:
        self._hub = hub
        # Environments by id (manager.tasks.envs.EnvIndex), read on every round, never stored.
        self._envs: Mapping[str, EnvFacts] = {} if envs is None else envs
        self._widen_after = widen_after
        self._tick = tick
        self._clock = clock
        # Every queued task, insertion-ordered (oldest first).
        self.queued: dict[str, QueuedTask] = {}
        # The queued tasks not currently waiting on a hint, oldest first.
        self._unhinted: dict[str, QueuedTask] = {}
        # Tasks waiting on a hint, in the order they were hinted (so expiry stops early).
        self._hinted: dict[str, QueuedTask] = {}
        self._outstanding: dict[str, int] = {}
        self._kick = asyncio.Event()
        self._seq = 0

    def enqueue(self, task: QueuedTask) -> None:
        self._seq += 1
        task.seq = self._seq
        self.queued[task.id] = task
        self._unhinted[task.id] = task
        self._kick.set()

    def dequeue(self, task_id: str) -> None:
        task = self.queued.pop(task_id, None)
        self._unhinted.pop(task_id, None)
        self._hinted.pop(task_id, None)
        if task is not None:
            self._forget_hints(task)

    def kick(self) -> None:
        """Capacity changed (a delegate connected or freed a slot): run a round soon."""
        if self.queued:
            self._kick.set()

    def _forget_hints(self, task: QueuedTask) -> None:
        for delegate_id in task.hinted_to:
            left = self._outstanding.get(delegate_id, 0) - 1
            if left > 0:
                self._outstanding[delegate_id] = left
            else:
                self._outstanding.pop(delegate_id, None)
        task.hinted_to = ()

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
        self._expire_hints(now)
        if not self._unhinted:
            return
        candidates = self._hub.candidates()
        budget = {
            c.delegate_id: c.free_slots - self._outstanding.get(c.delegate_id, 0)
            for c in candidates
        }
        pool = [c for c in candidates if budget[c.delegate_id] > 0]
        for task in list(self._unhinted.values()):
            if not pool:
                break
            limit = None if task.widened else FIRST_FANOUT
            targets = choose(task.selectors, task.type, pool, limit=limit, place=self._place(task))
            if not targets:
                continue
            self._hint(task, targets, now)
            for delegate_id in targets:
                budget[delegate_id] -= 1
            if any(budget[d] <= 0 for d in targets):
                pool = [c for c in pool if budget[c.delegate_id] > 0]

    def _hint(self, task: QueuedTask, targets: list[str], now: float) -> None:
        frame = TaskAvailable(task_id=task.id)
        for delegate_id in targets:
            self._hub.hint(delegate_id, task.id, frame)
            self._outstanding[delegate_id] = self._outstanding.get(delegate_id, 0) + 1
        task.hinted_to = tuple(targets)
        task.notified_at = now
        del self._unhinted[task.id]
        self._hinted[task.id] = task

    def _expire_hints(self, now: float) -> None:
        """Hints nobody acted on within ``widen_after``: offer those tasks to everyone.

        ``_hinted`` is in the order hints were sent, so the walk stops at the first hint
        still fresh: a round costs the hints that expire, not the length of the queue.
        """
        expired: list[QueuedTask] = []
        for task in self._hinted.values():
            if task.notified_at is not None and now - task.notified_at < self._widen_after:
                break
            expired.append(task)
        if not expired:
            return
        for task in expired:
            del self._hinted[task.id]
            self._forget_hints(task)
            task.widened = True
        # Back in queue order, so the oldest are offered first.
        expired.sort(key=lambda t: t.seq)
        waiting = list(self._unhinted.values())
        if waiting and waiting[-1].seq > expired[0].seq:
            merged = sorted([*waiting, *expired], key=lambda t: t.seq)
            self._unhinted = {t.id: t for t in merged}
        else:
            self._unhinted.update((t.id, t) for t in expired)

    def pick_for(self, session: Session) -> str | None:
        """The oldest queued task this (polling) delegate could take, hinted or not."""
        candidate = self._hub.candidate(session.id)
        if candidate is None:
            return None
        while session.inbox:
            task_id = session.inbox.popleft()
            hinted = self.queued.get(task_id)
            if hinted is not None and eligible(
                hinted.selectors, hinted.type, candidate, self._place(hinted)
            ):
                return task_id
        for task in self.queued.values():
            if eligible(task.selectors, task.type, candidate, self._place(task)):
                return task.id
        return None

    def _place(self, task: QueuedTask) -> Place | None:
        return place_of(task.app_id, task.env_id, self._envs)
