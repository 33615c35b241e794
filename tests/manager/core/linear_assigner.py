"""The Assigner as it was first written: every place scans every delegate, every fill scans
the whole queue, every tick every task. Kept as the reference the indexed
:class:`manager.core.assignment.Assigner` must agree with, action for action
(test_assignment_differential.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from manager.core.assignment import Action, Phase, Push, Queued, Refuse, Requeue
from manager.core.eligibility import DelegateFacts, TaskFacts, refusal_of

__all__ = ["LinearAssigner"]


@dataclass(slots=True)
class _Task:
    id: str
    facts: TaskFacts
    attempt: int
    seq: int
    phase: Phase = Phase.QUEUED
    delegate_id: str | None = None
    key: str = ""
    deadline: float = 0.0
    # Delegates that declined (or let pass) this task, with their epoch then: not offered it
    # again until that epoch changes.
    passed: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Seat:
    facts: DelegateFacts
    capacity: int
    key: str
    up: bool = True
    # Every task counted against it: assignments here, and leases listed when it connected.
    load: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    full: bool = False
    epoch: int = 0
    last_push: int = 0

    @property
    def free(self) -> int:
        return self.capacity - len(self.load)

    def open(self) -> bool:
        return self.up and not self.full and not self.facts.draining and self.free > 0


class LinearAssigner:
    """``ack_within``: how long a pushed assignment may go unanswered (stream up) or wait for
    its delegate to come back (stream lost) before it is requeued."""

    def __init__(self, *, ack_within: float) -> None:
        self._ack_within = ack_within
        self._seats: dict[str, _Seat] = {}
        self._tasks: dict[str, _Task] = {}
        # Queued tasks, oldest first (by seq).
        self._queue: dict[str, _Task] = {}
        # Leases a delegate listed at connect that this replica did not hand out.
        self._held_by: dict[str, str] = {}
        # Tasks this event requeued, placed once every requeue of the event is done.
        self._homeless: list[_Task] = []
        self._seq = 0
        self._pushes = 0

    # -- what it knows (for the caller and tests) ------------------------------------------

    def phase(self, task_id: str) -> Phase | None:
        task = self._tasks.get(task_id)
        return None if task is None else task.phase

    def holder(self, task_id: str) -> str | None:
        task = self._tasks.get(task_id)
        return None if task is None else task.delegate_id

    def attempt(self, task_id: str) -> int | None:
        task = self._tasks.get(task_id)
        return None if task is None else task.attempt

    def load(self, delegate_id: str) -> int:
        seat = self._seats.get(delegate_id)
        return 0 if seat is None else len(seat.load)

    def queue(self) -> list[str]:
        return list(self._queue)

    # -- delegates -------------------------------------------------------------------------

    def connected(
        self,
        facts: DelegateFacts,
        capacity: int,
        key: str,
        now: float,
        held: Iterable[str] = (),
    ) -> list[Action]:
        out: list[Action] = []
        seat = self._seats.get(facts.id)
        if seat is None:
            seat = self._seats[facts.id] = _Seat(facts, capacity, key)
        else:
            if seat.up:
                # A new link superseded the old one without a close seen first.
                self._lost_link(seat, now)
            seat.facts, seat.capacity, seat.up = facts, capacity, True
            seat.full = False
            seat.epoch += 1
        seat.key = key
        listed = set(held)
        # The listing replaces the last: a task no longer listed ended there. (Kept, the ids
        # a poller lists poll after poll, made up or not, would only ever grow the set.)
        for task_id in sorted(seat.held - listed):
            del self._held_by[task_id]
            seat.held.discard(task_id)
            seat.load.discard(task_id)
        for task_id in sorted(seat.load - seat.held):
            task = self._tasks[task_id]
            if task.phase is not Phase.UNANSWERED:
                continue
            if task.key == key and task_id in listed:
                # It runs there: only the ack was lost.
                task.phase = Phase.ACKED
            elif task.key != key:
                # A new process never got the frame: the task may go to it afresh.
                self._requeue(task, seat, "restarted", out, passed=False)
            elif self._eligible(seat, task):
                task.phase = Phase.ASSIGNED
                task.deadline = now + self._ack_within
                out.append(Push(task.id, seat.facts.id, task.attempt, key))
            else:
                # Back draining, or with a narrower scope: not even its own claim again.
                self._requeue(task, seat, "ineligible", out)
        for task_id in sorted(listed):
            if task_id not in self._tasks and self._held_by.get(task_id) is None:
                self._held_by[task_id] = seat.facts.id
                seat.held.add(task_id)
                seat.load.add(task_id)
        self._place_all(out, now)
        self._fill(seat, now, out)
        return out

    def stream_lost(self, delegate_id: str, now: float) -> list[Action]:
        seat = self._seats.get(delegate_id)
        if seat is not None and seat.up:
            self._lost_link(seat, now)
        return []

    def disconnected(self, delegate_id: str, now: float) -> list[Action]:
        seat = self._seats.pop(delegate_id, None)
        out: list[Action] = []
        if seat is None:
            return out
        for task_id in sorted(seat.load):
            if task_id in seat.held:
                del self._held_by[task_id]
                continue
            task = self._tasks[task_id]
            if task.phase is Phase.ACKED:
                # Its lease is the liveness sweep's to judge; a requeue comes back as queued.
                del self._tasks[task_id]
            else:
                self._requeue(task, seat, "disconnected", out)
        seat.load.clear()
        self._place_all(out, now)
        return out

    def capacity(self, delegate_id: str, capacity: int, now: float) -> list[Action]:
        seat = self._seats.get(delegate_id)
        out: list[Action] = []
        if seat is not None:
            seat.capacity = capacity
            self._freed(seat, now, out)
        return out

    def drain(self, delegate_id: str, draining: bool, now: float) -> list[Action]:
        seat = self._seats.get(delegate_id)
        out: list[Action] = []
        if seat is not None:
            seat.facts = replace(seat.facts, draining=draining)
            if not draining:
                self._fill(seat, now, out)
        return out

    # -- tasks -----------------------------------------------------------------------------

    def queued(self, queued: Queued, now: float) -> list[Action]:
        out: list[Action] = []
        # A lease listed at connect was lost and the task requeued: that slot frees.
        self._drop_held(queued.id, now, out)
        task = self._tasks.get(queued.id)
        if task is not None:
            if queued.attempt < task.attempt or task.phase is Phase.QUEUED:
                return out  # a notice older than our claim, or one we already have
            # Our attempt lost its lease and the store requeued it.
            seat = self._unseat(task)
            task.attempt, task.phase, task.delegate_id = queued.attempt, Phase.QUEUED, None
            task.facts = queued.facts
            if seat is not None:
                seat.epoch += 1
                seat.full = False
            self._place(task, now, out)
            if seat is not None:
                self._fill(seat, now, out)
            return out
        self._seq += 1
        task = self._tasks[queued.id] = _Task(queued.id, queued.facts, queued.attempt, self._seq)
        self._place(task, now, out)
        return out

    def ack(self, task_id: str, delegate_id: str, attempt: int, now: float) -> list[Action]:
        task = self._tasks.get(task_id)
        if task is None:
            return []
        if not self._holds(task, delegate_id, attempt):
            return [Refuse(task_id, delegate_id, attempt, "this attempt does not hold the task")]
        task.phase = Phase.ACKED  # a duplicate ack changes nothing
        return []

    def decline(
        self, task_id: str, delegate_id: str, attempt: int, now: float, *, full: bool = False
    ) -> list[Action]:
        task = self._tasks.get(task_id)
        out: list[Action] = []
        if task is None or not self._holds(task, delegate_id, attempt):
            return out  # a stale decline: that attempt runs nowhere anyway
        if task.phase is Phase.ACKED:
            return out  # it said it runs it; a lease is ended by a result, not a decline
        seat = self._seats[delegate_id]
        if full:
            seat.full = True
        self._requeue(task, seat, "declined", out)
        self._place_all(out, now)
        self._fill(seat, now, out)
        return out

    def result(self, task_id: str, delegate_id: str, attempt: int, now: float) -> list[Action]:
        out: list[Action] = []
        holder = self._held_by.get(task_id)
        if holder is not None:
            if holder == delegate_id:
                self._forget(task_id, now, out)
            return out
        task = self._tasks.get(task_id)
        if task is None:
            return out
        if not self._holds(task, delegate_id, attempt):
            out.append(Refuse(task_id, delegate_id, attempt, "this attempt no longer holds it"))
            return out
        self._forget(task_id, now, out)
        return out

    def gone(self, task_id: str, now: float) -> list[Action]:
        out: list[Action] = []
        self._forget(task_id, now, out)
        return out

    def tick(self, now: float) -> list[Action]:
        out: list[Action] = []
        late = [
            t
            for t in self._tasks.values()
            if t.phase in (Phase.ASSIGNED, Phase.UNANSWERED) and now >= t.deadline
        ]
        left: dict[str, _Seat] = {}
        for task in late:
            assert task.delegate_id is not None
            seat = left[task.delegate_id] = self._seats[task.delegate_id]
            self._requeue(task, seat, "unanswered", out)
        self._place_all(out, now)
        # Not in the first version: the slot each withdrawn claim held is free again, for
        # other queued tasks (without this, the invariant failed after a tick).
        for seat in left.values():
            self._fill(seat, now, out)
        return out

    # -- inside ----------------------------------------------------------------------------

    @staticmethod
    def _holds(task: _Task, delegate_id: str, attempt: int) -> bool:
        return (
            task.phase is not Phase.QUEUED
            and task.delegate_id == delegate_id
            and task.attempt == attempt
        )

    def _lost_link(self, seat: _Seat, now: float) -> None:
        seat.up = False
        for task_id in seat.load - seat.held:
            task = self._tasks[task_id]
            if task.phase is Phase.ASSIGNED:
                task.phase = Phase.UNANSWERED
                task.deadline = now + self._ack_within

    def _requeue(
        self, task: _Task, seat: _Seat, reason: str, out: list[Action], *, passed: bool = True
    ) -> None:
        """Withdraw an unanswered claim; ``passed``: not offered to ``seat`` again this round.
        The caller places it (after the other requeues of the same event)."""
        out.append(Requeue(task.id, seat.facts.id, task.attempt, reason))
        seat.load.discard(task.id)
        if passed:
            task.passed[seat.facts.id] = seat.epoch
        task.phase, task.delegate_id = Phase.QUEUED, None
        self._homeless.append(task)

    def _unseat(self, task: _Task) -> _Seat | None:
        if task.delegate_id is None:
            return None
        seat = self._seats.get(task.delegate_id)
        if seat is not None:
            seat.load.discard(task.id)
        return seat

    def _forget(self, task_id: str, now: float, out: list[Action]) -> None:
        if self._drop_held(task_id, now, out):
            return
        task = self._tasks.pop(task_id, None)
        if task is None:
            return
        self._queue.pop(task_id, None)
        seat = self._unseat(task)
        if seat is not None:
            self._freed(seat, now, out)

    def _drop_held(self, task_id: str, now: float, out: list[Action]) -> bool:
        holder = self._held_by.pop(task_id, None)
        if holder is None:
            return False
        seat = self._seats[holder]
        seat.held.discard(task_id)
        seat.load.discard(task_id)
        self._freed(seat, now, out)
        return True

    def _freed(self, seat: _Seat, now: float, out: list[Action]) -> None:
        """A slot of ``seat`` may have freed: a new round for it, then fill it."""
        seat.epoch += 1
        seat.full = False
        self._fill(seat, now, out)

    def _may_take(self, seat: _Seat, task: _Task) -> bool:
        return task.passed.get(seat.facts.id) != seat.epoch and self._eligible(seat, task)

    @staticmethod
    def _eligible(seat: _Seat, task: _Task) -> bool:
        facts = task.facts
        return refusal_of(seat.facts, facts.type, facts.selectors, facts.place) is None

    def _place(self, task: _Task, now: float, out: list[Action]) -> None:
        """Assign ``task`` to the least-loaded delegate that may take it, or queue it."""
        best: _Seat | None = None
        best_rank: tuple[float, int, int, str] | None = None
        for seat in self._seats.values():
            if not seat.open() or not self._may_take(seat, task):
                continue
            rank = (len(seat.load) / seat.capacity, len(seat.load), seat.last_push, seat.facts.id)
            if best_rank is None or rank < best_rank:
                best, best_rank = seat, rank
        if best is None:
            self._enqueue(task)
        else:
            self._assign(task, best, now, out)

    def _place_all(self, out: list[Action], now: float) -> None:
        """Place the tasks this event requeued, in queue order."""
        homeless, self._homeless = self._homeless, []
        for task in sorted(homeless, key=lambda t: t.seq):
            self._place(task, now, out)

    def _fill(self, seat: _Seat, now: float, out: list[Action]) -> None:
        """Give ``seat`` the oldest queued tasks it may take while it has free slots. No other
        delegate could take them (the invariant), so this is still least-loaded."""
        if not seat.open():
            return
        chosen: list[_Task] = []
        for task in self._queue.values():
            if self._may_take(seat, task):
                chosen.append(task)
                if len(chosen) == seat.free:
                    break
        for task in chosen:
            self._assign(task, seat, now, out)

    def _assign(self, task: _Task, seat: _Seat, now: float, out: list[Action]) -> None:
        self._queue.pop(task.id, None)
        self._pushes += 1
        seat.last_push = self._pushes
        seat.load.add(task.id)
        task.phase, task.delegate_id, task.key = Phase.ASSIGNED, seat.facts.id, seat.key
        task.attempt += 1
        task.deadline = now + self._ack_within
        out.append(Push(task.id, seat.facts.id, task.attempt, seat.key))

    def _enqueue(self, task: _Task) -> None:
        # Back in queue order: a task that was declined waits ahead of younger ones.
        last = next(reversed(self._queue.values()), None)
        self._queue[task.id] = task
        if last is not None and last.seq > task.seq:
            self._queue = dict(sorted(self._queue.items(), key=lambda kv: kv[1].seq))
