"""Assignment protocol v2: which ONE delegate each queued task is handed to, and what becomes
of that hand-out. Plain code fed events and the time; it returns actions and writes nothing.

One :class:`Assigner` per manager replica, over the delegates connected to that replica.
The store stays the truth: every action is carried out with the compare-and-set rules of
:mod:`manager.core.taskstate`, and an action the store refuses comes back as :meth:`gone`.

The life of one assignment (``attempt`` n of a task to delegate D over D's link ``key``)::

    queued --place--> assigned --ack--> acked --result / gone--> (forgotten)
                        |   ^
                        |   '-- connected(D, same key): pushed again, same attempt
                        |--stream_lost--> unanswered --deadline--> queued (Requeue n)
                        |                     '--connected(D, other key)--> queued (Requeue n)
                        |--decline--> queued (Requeue n; not D again this round)
                        '--no answer within ack_within--> queued (Requeue n; not D this round)

Placing a task claims attempt n+1 for the least-loaded eligible delegate. Load is every task
counted against the delegate: leases it holds (acked here, or listed as running when it
connected) plus assignments pushed and not yet answered; a delegate whose load reaches its
capacity is pushed nothing. Ties go to the delegate pushed to least recently, then by id, so
6 tasks on 3 idle delegates land 2/2/2. Eligibility is :func:`~manager.core.eligibility.
refusal_of`: selectors, task type, draining, and the token's scope over the task's place.

Events (each returns the actions to carry out, in order):

- ``connected(facts, capacity, key, now, held=(), spooled=())``: D's link is up on this
  replica. ``key`` names the delegate process (the acquire key of taskstate); ``held``: the
  tasks its hello lists as running, counted as its load; ``spooled``: those it ran whose
  results wait in its spool. Unanswered assignments to D are pushed again when the key is
  the same (the frame may have been lost, and the holder gets the same attempt: taskstate
  answers HELD), counted as acked when ``held`` or ``spooled`` lists them (only the ack was
  lost: pushed again, it would run twice), and requeued when the key differs (a new process
  never had it) or D may no longer take them (draining, a narrower scope).
- ``adopt(claimed, D, key)``: a claim from before this process started (its recovery). When
  D connects with the same key it is counted as acked if listed, else pushed again (the
  claimer stopped before the frame left); with another key its lease decides.
- ``stream_lost(D, now)``: the link dropped; D's session may come back within ``ack_within``.
- ``disconnected(D, now)``: D's session is over (lost, revoked, dropped). Its unanswered
  assignments are requeued at once; its leases are the liveness sweep's to judge.
- ``capacity(D, capacity, now)`` and ``drain(D, draining, now)``: what D reports/is told.
- ``queued(task, now)``: a task is in the queue at ``task.attempt`` (new, or back after a
  lost lease). A notice older than what this replica already claimed is ignored.
- ``ack(task, D, attempt, now)``: D runs it. A duplicate is a no-op; an older attempt, or
  anyone but the assignee, is refused.
- ``decline(task, D, attempt, now, full=False)``: D will not run it; ``full`` (no free slot)
  also stops pushes to D until its capacity changes or a slot of it frees.
- ``result(task, D, attempt, now)``: the attempt ended on D; its slot frees. Refused for an
  attempt that no longer holds the task (taskstate.on_result's rule).
- ``gone(task, now)``: the store says the task is final, or held through another replica,
  or a claim here failed: forgotten.
- ``tick(now)``: assignments past their deadline are requeued.

Actions: :class:`Push` (commit the claim, then send the assignment frame), :class:`Requeue`
(withdraw the claim of an attempt that was never acknowledged) and :class:`Refuse` (answer
a stale ack or result as stale, writing nothing). About a task it does not know (handed out
by another replica, or before a restart) it says nothing: the store decides.

After every event, no queued task is left that an up, non-draining, eligible delegate with a
free slot (that has not declined it this round) could take. A "round" for a task and D ends
when D's epoch changes: it (re)connects, its capacity is reported, or one of its slots frees.

Cost: it follows the number of eligibility classes, not of delegates. Delegates alike in what
``refusal_of`` reads (selectors, task types, scope: all but id, name and draining) form a
class, which keeps its open delegates in a heap by the order of choice; tasks with the same
facts form a class, which keeps its queued tasks in a heap by age; whether a delegate class
may take a task class is judged once. A place reads the top of each class that may take the
task (and judges alone a delegate the task names by id or name); a fill merges the queues of
the task classes the freed delegate may take; a tick pops only the deadlines that passed.
Heap entries are invalidated by a stamp, not removed, and a heap grown to twice its live
entries is rebuilt.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from heapq import heapify, heappop, heappush

from manager.core.eligibility import DelegateFacts, TaskFacts, refusal_of

__all__ = [
    "Action",
    "Assigner",
    "Phase",
    "Push",
    "Queued",
    "Refuse",
    "Requeue",
]


class Phase(enum.Enum):
    QUEUED = "queued"
    ASSIGNED = "assigned"  # claim committed, frame pushed, no answer yet
    UNANSWERED = "unanswered"  # the link dropped after the push, before an answer
    ACKED = "acked"  # the delegate runs it


@dataclass(frozen=True, slots=True)
class Queued:
    """A queued task as the store has it: ``attempt`` is the last one claimed (0: never)."""

    id: str
    facts: TaskFacts
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Push:
    """Claim ``attempt`` for the delegate under ``key`` (taskstate.on_acquire; HELD for a
    push again to the same holder), and once committed send the assignment frame. A claim
    the store refuses is reported back with :meth:`Assigner.gone`."""

    task_id: str
    delegate_id: str
    attempt: int
    key: str
    # Which push of the task this is (unique within the Assigner). A task pushed again to the
    # same holder at the same attempt (its link came back) has two pushes of one claim; the
    # caller tells them apart by this, so a verdict meant for the first (its long-poll ended)
    # cannot take back the second, already handed out. Not part of equality: the same claim.
    push: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Requeue:
    """Withdraw the claim of ``attempt`` (compare-and-set on running at that attempt): the
    task goes back to the queue; the next claim fences the old one out by its number."""

    task_id: str
    delegate_id: str
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """An ack or result from an attempt that does not hold the task: answer it as stale
    (the delegate stops that attempt), write nothing."""

    task_id: str
    delegate_id: str
    attempt: int
    reason: str


Action = Push | Requeue | Refuse


# A delegate's place in its class's heap: (load / capacity, load, last push, id, stamp). The
# first four are the order of choice; the stamp says whether the entry is still the seat's.
_SeatEntry = tuple[float, int, int, str, int]
# A queued task's place in its class's heap: (seq, stamp, id), oldest first.
_TaskEntry = tuple[int, int, str]
# A pushed task's deadline: (deadline, stamp, id).
_Deadline = tuple[float, int, str]

# Stale entries are dropped lazily, when they come to the top; a heap holding more than this
# many times its live entries (plus a little) is rebuilt, so it stays bounded.
_SLACK = 2
_SLACK_MIN = 32


def _class_key(facts: DelegateFacts) -> tuple[frozenset[str], frozenset[str], object]:
    """What eligibility reads of a delegate, but its id, its name and draining."""
    return (facts.selectors, facts.task_types, facts.scope)


def _shared(facts: DelegateFacts, dclass: _DClass) -> DelegateFacts:
    """``facts`` holding its class's sets (equal by definition of the class), so that the
    delegates of one class keep one copy of them, not one each."""
    own = dclass.facts
    if facts.selectors is own.selectors and facts.task_types is own.task_types:
        return facts
    return replace(facts, selectors=own.selectors, task_types=own.task_types)


@dataclass(eq=False, slots=True)
class _DClass:
    """Delegates alike in everything eligibility reads but their id, name and draining: for
    a task that names none of them, they are all eligible or none is."""

    facts: DelegateFacts  # a member's, for the class's verdicts
    members: dict[str, _Seat] = field(default_factory=dict)
    # Its open members (up, not full, not draining, a free slot), least loaded on top.
    heap: list[_SeatEntry] = field(default_factory=list)
    # The task classes with a queued task that its members may take (by class verdict).
    waiting: set[_TClass] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _TClass:
    """Tasks with the same facts: the same delegates may take them."""

    facts: TaskFacts
    names: frozenset[str]  # its selectors: a delegate named here is judged on its own
    waiting: dict[str, _Task] = field(default_factory=dict)
    heap: list[_TaskEntry] = field(default_factory=list)
    # Whether each delegate class may take it (refusal_of for a member named nowhere here).
    verdicts: dict[_DClass, bool] = field(default_factory=dict)
    takers: list[_DClass] = field(default_factory=list)
    takers_of: int = -1  # the generation of the delegate classes ``takers`` was made from
    # While it has queued tasks: the delegate classes whose ``waiting`` lists it.
    listed_in: list[_DClass] = field(default_factory=list)


@dataclass(slots=True)
class _Task:
    id: str
    facts: TaskFacts
    attempt: int
    seq: int
    tclass: _TClass
    phase: Phase = Phase.QUEUED
    delegate_id: str | None = None
    key: str = ""
    deadline: float = 0.0
    push: int = 0  # its latest Push's number
    # A claim made before this process started (adopt): whether its holder ever had it is
    # not known here.
    adopted: bool = False
    # Delegates that declined (or let pass) this task, with their epoch then: not offered it
    # again until that epoch changes.
    passed: dict[str, int] = field(default_factory=dict)
    # Which heap entries are still this task's (in its class's queue, among the deadlines).
    queued_as: int = 0
    deadline_as: int = 0


@dataclass(slots=True)
class _Seat:
    facts: DelegateFacts
    capacity: int
    key: str
    dclass: _DClass
    up: bool = True
    # Every task counted against it: assignments here, and leases listed when it connected.
    load: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    full: bool = False
    epoch: int = 0
    last_push: int = 0
    # Which entry of its class's heap is still its own (0: none).
    stamp: int = 0

    @property
    def free(self) -> int:
        return self.capacity - len(self.load)

    def open(self) -> bool:
        return (
            self.up and not self.full and not self.facts.draining and self.capacity > len(self.load)
        )


class Assigner:
    """``ack_within``: how long a pushed assignment may go unanswered (stream up) or wait for
    its delegate to come back (stream lost) before it is requeued."""

    def __init__(self, *, ack_within: float) -> None:
        self._ack_within = ack_within
        self._seats: dict[str, _Seat] = {}
        self._tasks: dict[str, _Task] = {}
        # Queued tasks (their order is their seq).
        self._queue: dict[str, _Task] = {}
        # Leases a delegate listed at connect that this replica did not hand out.
        self._held_by: dict[str, str] = {}
        # Tasks this event requeued, placed once every requeue of the event is done.
        self._homeless: list[_Task] = []
        self._seq = 0
        self._pushes = 0
        # The indexes: delegates by class, their names, tasks by class, deadlines.
        self._dclasses: dict[tuple[frozenset[str], frozenset[str], object], _DClass] = {}
        self._dclasses_gen = 0  # changes when a delegate class is made or dropped
        self._named: dict[str, dict[str, _Seat]] = {}
        self._tclasses: dict[TaskFacts, _TClass] = {}
        self._tclasses_cap = 1024
        self._waiting: set[_TClass] = set()  # the classes with a queued task
        # The classes with a queued task, by each of their selectors: a delegate may take a
        # task that names it (by id or name) although its class may not.
        self._waiting_named: dict[str, set[_TClass]] = {}
        self._deadlines: list[_Deadline] = []
        self._stamp = 0
        # Claims from before this process started, by their holder, judged when it connects.
        self._adopted: dict[str, set[str]] = {}

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

    def current(self, push: Push) -> bool:
        """``push`` is the task's latest, and its assignment stands (not taken back since)."""
        task = self._tasks.get(push.task_id)
        return (
            task is not None
            and task.push == push.push
            and self._holds(task, push.delegate_id, push.attempt)
        )

    def load(self, delegate_id: str) -> int:
        seat = self._seats.get(delegate_id)
        return 0 if seat is None else len(seat.load)

    def queue(self) -> list[str]:
        return [t.id for t in sorted(self._queue.values(), key=lambda t: t.seq)]

    # -- delegates -------------------------------------------------------------------------

    def connected(
        self,
        facts: DelegateFacts,
        capacity: int,
        key: str,
        now: float,
        held: Iterable[str] = (),
        spooled: Iterable[str] = (),
        *,
        listing: bool = True,
    ) -> list[Action]:
        """``listing`` False: ``held`` and ``spooled`` may predate the delegate's answer from
        before this process started (a poll before its first heartbeat here), so the claims
        adopted for it wait for a connect that lists what it has."""
        out: list[Action] = []
        seat = self._seats.get(facts.id)
        if seat is None:
            dclass = self._class_of(facts)
            seat = self._seats[facts.id] = _Seat(_shared(facts, dclass), capacity, key, dclass)
            self._join(seat)
        else:
            if seat.up:
                # A new link superseded the old one without a close seen first.
                self._lost_link(seat, now)
            self._refact(seat, facts)
            seat.capacity, seat.up = capacity, True
            seat.full = False
            seat.epoch += 1
        seat.key = key
        listed = set(held)
        # What it has of each: running, or run with its result waiting in its spool. Either
        # way it must not be pushed again (it would run twice).
        has = listed | set(spooled)
        for task_id in sorted(self._adopted.pop(facts.id, ()) if listing else ()):
            task = self._tasks.get(task_id)
            if task is not None and task.adopted and task.delegate_id == facts.id:
                seat.load.add(task_id)
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
            if task.key == key and task_id in has:
                # It runs there: only the ack was lost.
                task.phase = Phase.ACKED
                task.adopted = False
            elif task.key != key and task.adopted:
                # Claimed before this process started, for a process that is gone: it may
                # have run it. Its lease decides (the attempt counts), not a withdrawal.
                seat.load.discard(task_id)
                del self._tasks[task_id]
            elif task.key != key:
                # A new process never got the frame: the task may go to it afresh.
                self._requeue(task, seat, "restarted", out, passed=False)
            elif self._eligible(seat, task):
                task.phase = Phase.ASSIGNED
                task.adopted = False
                self._set_deadline(task, now + self._ack_within)
                self._push(task, seat, out)
            else:
                # Back draining, or with a narrower scope: not even its own claim again.
                self._requeue(task, seat, "ineligible", out)
        for task_id in sorted(listed):
            if task_id not in self._tasks and self._held_by.get(task_id) is None:
                self._held_by[task_id] = seat.facts.id
                seat.held.add(task_id)
                seat.load.add(task_id)
        self._touch(seat)
        self._place_all(out, now)
        self._fill(seat, now, out)
        return out

    def adopt(self, claimed: Queued, delegate_id: str, key: str) -> None:
        """A claim the store holds from before this process started: attempt
        ``claimed.attempt`` for ``delegate_id``'s process ``key``, answered or not, nobody
        here knows. When that process connects and lists it, it runs there; when it connects
        without it, it never had it (the claimer stopped before the frame left, or the
        answer was lost), and it is pushed the same attempt; when another process of the
        delegate connects, the lease decides. Until then it counts as unanswered."""
        if claimed.id in self._tasks:
            return
        self._seq += 1
        self._tasks[claimed.id] = _Task(
            claimed.id,
            claimed.facts,
            claimed.attempt,
            self._seq,
            self._tclass(claimed.facts),
            phase=Phase.UNANSWERED,
            delegate_id=delegate_id,
            key=key,
            adopted=True,
        )
        # No deadline: it waits for its holder, or for the store to requeue it (its lease).
        # Set explicitly, so that a rebuild of the deadlines' heap does not read it as due.
        self._set_deadline(self._tasks[claimed.id], math.inf)
        self._adopted.setdefault(delegate_id, set()).add(claimed.id)

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
        seat.up = False
        self._leave(seat)
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
            self._touch(seat)
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
            task.adopted = False  # claimed from now on by this process
            task.facts, task.tclass = queued.facts, self._tclass(queued.facts)
            if seat is not None:
                seat.epoch += 1
                seat.full = False
                self._touch(seat)
            self._place(task, now, out)
            if seat is not None:
                self._fill(seat, now, out)
            return out
        self._seq += 1
        task = self._tasks[queued.id] = _Task(
            queued.id, queued.facts, queued.attempt, self._seq, self._tclass(queued.facts)
        )
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
        self,
        task_id: str,
        delegate_id: str,
        attempt: int,
        now: float,
        *,
        full: bool = False,
        passed: bool = True,
        push: int | None = None,
    ) -> list[Action]:
        """The delegate will not run the attempt (``full``: for want of a slot). ``passed``
        False: it never saw it (a long-poll that ended while the claim was written), so it
        may be offered the task again at once, by the poll that follows. ``push``: the
        verdict is about that push only (the caller's own), not a later one of the claim."""
        task = self._tasks.get(task_id)
        out: list[Action] = []
        if task is None or not self._holds(task, delegate_id, attempt):
            return out  # a stale decline: that attempt runs nowhere anyway
        if push is not None and task.push != push:
            return out  # pushed again since (its link came back): the later push decides
        if task.phase is Phase.ACKED:
            return out  # it said it runs it; a lease is ended by a result, not a decline
        seat = self._seats[delegate_id]
        if full:
            seat.full = True
        self._requeue(task, seat, "declined", out, passed=passed)
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
        late: list[_Task] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, stamp, task_id = heappop(heap)
            task = self._tasks.get(task_id)
            if (
                task is not None
                and task.deadline_as == stamp
                and task.phase in (Phase.ASSIGNED, Phase.UNANSWERED)
            ):
                late.append(task)
        # In the order the tasks came, as a scan of every task would find them.
        left: dict[str, _Seat] = {}
        for task in sorted(late, key=lambda t: t.seq):
            assert task.delegate_id is not None
            seat = left[task.delegate_id] = self._seats[task.delegate_id]
            self._requeue(task, seat, "unanswered", out)
        self._place_all(out, now)
        # The slot each withdrawn claim held is free again, for other queued tasks.
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
        self._touch(seat)
        for task_id in seat.load - seat.held:
            task = self._tasks[task_id]
            if task.phase is Phase.ASSIGNED:
                task.phase = Phase.UNANSWERED
                self._set_deadline(task, now + self._ack_within)

    def _requeue(
        self, task: _Task, seat: _Seat, reason: str, out: list[Action], *, passed: bool = True
    ) -> None:
        """Withdraw an unanswered claim; ``passed``: not offered to ``seat`` again this round.
        The caller places it (after the other requeues of the same event)."""
        out.append(Requeue(task.id, seat.facts.id, task.attempt, reason))
        seat.load.discard(task.id)
        self._touch(seat)
        if passed:
            task.passed[seat.facts.id] = seat.epoch
        task.phase, task.delegate_id = Phase.QUEUED, None
        self._homeless.append(task)

    def _unseat(self, task: _Task) -> _Seat | None:
        """Take ``task`` off its delegate's load; the caller re-indexes the seat returned."""
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
        self._dequeue(task)
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
        self._touch(seat)
        self._fill(seat, now, out)

    @staticmethod
    def _eligible(seat: _Seat, task: _Task) -> bool:
        facts = task.facts
        return refusal_of(seat.facts, facts.type, facts.selectors, facts.place) is None

    def _place(self, task: _Task, now: float, out: list[Action]) -> None:
        """Assign ``task`` to the least-loaded delegate that may take it, or queue it.

        The best of each class that may take it is its heap's top (looking past the ones
        that let this task pass this round); a delegate the task names is judged alone."""
        tclass = task.tclass
        if tclass.takers_of != self._dclasses_gen:
            self._find_takers(tclass)
        best: _Seat | None = None
        best_rank: tuple[float, int, int, str] | None = None
        for dclass in tclass.takers:
            entry = self._best_of(dclass, task)
            if entry is not None and (best_rank is None or entry[:4] < best_rank):
                best, best_rank = dclass.members[entry[3]], entry[:4]
        for seat in self._named_in(tclass):
            if not seat.open() or task.passed.get(seat.facts.id) == seat.epoch:
                continue
            if not self._eligible(seat, task):
                continue
            n = len(seat.load)
            rank = (n / seat.capacity, n, seat.last_push, seat.facts.id)
            if best_rank is None or rank < best_rank:
                best, best_rank = seat, rank
        if best is None:
            self._enqueue(task)
        else:
            self._assign(task, best, now, out)

    def _best_of(self, dclass: _DClass, task: _Task) -> _SeatEntry | None:
        """The top live entry of ``dclass``'s heap whose seat ``task`` did not pass this
        round; the heap is left holding every live entry it held."""
        heap, members = dclass.heap, dclass.members
        aside: list[_SeatEntry] = []
        found: _SeatEntry | None = None
        while heap:
            entry = heap[0]
            seat = members.get(entry[3])
            if seat is None or seat.stamp != entry[4]:
                heappop(heap)  # stale: the seat changed since, or left
                continue
            if task.passed.get(entry[3]) == seat.epoch:
                aside.append(heappop(heap))
                continue
            found = entry
            break
        for entry in aside:
            heappush(heap, entry)
        return found

    def _named_in(self, tclass: _TClass) -> list[_Seat]:
        """The delegates ``tclass`` names (by id or name) that their class's verdict does not
        already cover: being named can only widen what a delegate may take."""
        if not tclass.names:
            return []
        seats: list[_Seat] = []
        for name in tclass.names:
            seat = self._seats.get(name)
            if seat is not None and not self._verdict(tclass, seat.dclass):
                seats.append(seat)
            for seat in self._named.get(name, {}).values():
                if not self._verdict(tclass, seat.dclass):
                    seats.append(seat)
        return seats

    def _takes(self, seat: _Seat, tclass: _TClass) -> bool:
        """Whether ``seat`` may take tasks of ``tclass`` (draining aside: it is open)."""
        if self._verdict(tclass, seat.dclass):
            return True
        names = tclass.names
        if seat.facts.id in names or seat.facts.name in names:
            facts = tclass.facts
            return refusal_of(seat.facts, facts.type, facts.selectors, facts.place) is None
        return False

    def _place_all(self, out: list[Action], now: float) -> None:
        """Place the tasks this event requeued, in queue order."""
        homeless, self._homeless = self._homeless, []
        for task in sorted(homeless, key=lambda t: t.seq):
            self._place(task, now, out)

    def _fill(self, seat: _Seat, now: float, out: list[Action]) -> None:
        """Give ``seat`` the oldest queued tasks it may take while it has free slots. No other
        delegate could take them (the invariant), so this is still least-loaded.

        Only the classes of tasks it may take are read, merged oldest first."""
        if not seat.open():
            return
        sources = list(seat.dclass.waiting)
        if self._waiting_named:
            for name in {seat.facts.id, seat.facts.name}:
                for tclass in self._waiting_named.get(name, ()):
                    if not self._verdict(tclass, seat.dclass) and self._takes(seat, tclass):
                        sources.append(tclass)
        if not sources:
            return
        free = seat.free
        # The next live entry of each source, oldest first: (seq, source).
        front: list[tuple[int, int]] = []
        for i, tclass in enumerate(sources):
            entry = self._next_queued(tclass)
            if entry is not None:
                front.append((entry[0], i))
        heapify(front)
        chosen: list[_Task] = []
        aside: list[tuple[_TClass, _TaskEntry]] = []
        me, epoch = seat.facts.id, seat.epoch
        while front and len(chosen) < free:
            _, i = heappop(front)
            tclass = sources[i]
            entry = heappop(tclass.heap)
            task = tclass.waiting[entry[2]]
            if task.passed.get(me) == epoch:
                aside.append((tclass, entry))
            else:
                chosen.append(task)
            nxt = self._next_queued(tclass)
            if nxt is not None:
                heappush(front, (nxt[0], i))
        for tclass, entry in aside:
            heappush(tclass.heap, entry)
        for task in chosen:
            self._assign(task, seat, now, out)

    @staticmethod
    def _next_queued(tclass: _TClass) -> _TaskEntry | None:
        heap, waiting = tclass.heap, tclass.waiting
        while heap:
            entry = heap[0]
            task = waiting.get(entry[2])
            if task is not None and task.queued_as == entry[1]:
                return entry
            heappop(heap)
        return None

    def _assign(self, task: _Task, seat: _Seat, now: float, out: list[Action]) -> None:
        self._dequeue(task)
        task.phase, task.delegate_id, task.key = Phase.ASSIGNED, seat.facts.id, seat.key
        task.adopted = False
        task.attempt += 1
        self._set_deadline(task, now + self._ack_within)
        self._push(task, seat, out)
        seat.last_push = self._pushes
        seat.load.add(task.id)
        self._touch(seat)

    def _push(self, task: _Task, seat: _Seat, out: list[Action]) -> None:
        """Push ``task``'s attempt to ``seat``'s process, numbered anew."""
        self._pushes += 1
        task.push = self._pushes
        out.append(Push(task.id, seat.facts.id, task.attempt, seat.key, self._pushes))

    def _enqueue(self, task: _Task) -> None:
        # Its class's heap keeps queue order: a task that was declined waits ahead of
        # younger ones.
        self._queue[task.id] = task
        tclass = task.tclass
        self._stamp += 1
        task.queued_as = self._stamp
        if not tclass.waiting:
            self._list_waiting(tclass)
        tclass.waiting[task.id] = task
        heap = tclass.heap
        heappush(heap, (task.seq, task.queued_as, task.id))
        if len(heap) > _SLACK * len(tclass.waiting) + _SLACK_MIN:
            heap[:] = [(t.seq, t.queued_as, t.id) for t in tclass.waiting.values()]
            heapify(heap)

    def _dequeue(self, task: _Task) -> None:
        if self._queue.pop(task.id, None) is None:
            return
        tclass = task.tclass
        del tclass.waiting[task.id]
        task.queued_as = 0
        if not tclass.waiting:
            self._unlist_waiting(tclass)
            tclass.heap.clear()

    def _list_waiting(self, tclass: _TClass) -> None:
        """``tclass`` has a queued task now: the delegates that may take it will look."""
        self._waiting.add(tclass)
        if tclass.takers_of != self._dclasses_gen:
            self._find_takers(tclass)
        for dclass in tclass.takers:
            dclass.waiting.add(tclass)
        tclass.listed_in = list(tclass.takers)
        for name in tclass.names:
            self._waiting_named.setdefault(name, set()).add(tclass)

    def _unlist_waiting(self, tclass: _TClass) -> None:
        self._waiting.discard(tclass)
        for dclass in tclass.listed_in:
            dclass.waiting.discard(tclass)
        tclass.listed_in = []
        for name in tclass.names:
            named = self._waiting_named[name]
            named.discard(tclass)
            if not named:
                del self._waiting_named[name]

    def _set_deadline(self, task: _Task, deadline: float) -> None:
        task.deadline = deadline
        self._stamp += 1
        task.deadline_as = self._stamp
        if deadline == math.inf:
            return  # never due (the hand-out's pushes wait for their answer, or the lease)
        heap = self._deadlines
        heappush(heap, (deadline, self._stamp, task.id))
        if len(heap) > _SLACK * len(self._tasks) + _SLACK_MIN:
            heap[:] = [
                (t.deadline, t.deadline_as, t.id)
                for t in self._tasks.values()
                if t.phase in (Phase.ASSIGNED, Phase.UNANSWERED) and t.deadline != math.inf
            ]
            heapify(heap)

    # -- the indexes -----------------------------------------------------------------------

    def _touch(self, seat: _Seat) -> None:
        """``seat``'s load, capacity, last push or openness changed: its old heap entry is
        stale, and a new one goes in while it is open."""
        self._stamp += 1
        seat.stamp = self._stamp
        if not seat.open():
            return
        dclass = seat.dclass
        heap = dclass.heap
        n = len(seat.load)
        heappush(heap, (n / seat.capacity, n, seat.last_push, seat.facts.id, seat.stamp))
        if len(heap) > _SLACK * len(dclass.members) + _SLACK_MIN:
            live = [
                (len(s.load) / s.capacity, len(s.load), s.last_push, s.facts.id, s.stamp)
                for s in dclass.members.values()
                if s.open()
            ]
            heap[:] = live
            heapify(heap)

    def _class_of(self, facts: DelegateFacts) -> _DClass:
        key = _class_key(facts)
        dclass = self._dclasses.get(key)
        if dclass is None:
            dclass = self._dclasses[key] = _DClass(replace(facts, draining=False))
            self._dclasses_gen += 1
            # A new class: which of the task classes already waiting it may take.
            for tclass in self._waiting:
                if self._verdict(tclass, dclass):
                    dclass.waiting.add(tclass)
                    tclass.listed_in.append(dclass)
        return dclass

    def _join(self, seat: _Seat) -> None:
        seat.dclass.members[seat.facts.id] = seat
        self._named.setdefault(seat.facts.name, {})[seat.facts.id] = seat

    def _leave(self, seat: _Seat) -> None:
        dclass = seat.dclass
        del dclass.members[seat.facts.id]
        if not dclass.members:
            del self._dclasses[_class_key(dclass.facts)]
            self._dclasses_gen += 1
        named = self._named[seat.facts.name]
        del named[seat.facts.id]
        if not named:
            del self._named[seat.facts.name]

    def _refact(self, seat: _Seat, facts: DelegateFacts) -> None:
        """New facts for a delegate that is here: it may change class or name."""
        if _class_key(facts) != _class_key(seat.facts) or facts.name != seat.facts.name:
            self._leave(seat)
            seat.dclass = self._class_of(facts)
            seat.facts = _shared(facts, seat.dclass)
            self._join(seat)
        else:
            seat.facts = _shared(facts, seat.dclass)
        self._touch(seat)

    def _tclass(self, facts: TaskFacts) -> _TClass:
        tclass = self._tclasses.get(facts)
        if tclass is None:
            if len(self._tclasses) >= self._tclasses_cap:
                # Forget the classes no queued task is in (their verdicts are made again if
                # they come back); tasks out there keep theirs.
                self._tclasses = {f: c for f, c in self._tclasses.items() if c.waiting}
                self._tclasses_cap = max(1024, 2 * len(self._tclasses))
            tclass = self._tclasses[facts] = _TClass(facts, frozenset(facts.selectors))
        return tclass

    def _find_takers(self, tclass: _TClass) -> None:
        classes = list(self._dclasses.values())
        tclass.verdicts = {d: self._verdict(tclass, d) for d in classes}
        tclass.takers = [d for d in classes if tclass.verdicts[d]]
        tclass.takers_of = self._dclasses_gen

    @staticmethod
    def _verdict(tclass: _TClass, dclass: _DClass) -> bool:
        """Whether a delegate of ``dclass`` that ``tclass`` does not name may take its
        tasks: refusal_of, judged for a stand-in whose id and name are no selector."""
        verdict = tclass.verdicts.get(dclass)
        if verdict is None:
            facts = tclass.facts
            nobody = "\0" * (1 + max(map(len, facts.selectors), default=0))
            stand_in = replace(dclass.facts, id=nobody, name=nobody)
            refused = refusal_of(stand_in, facts.type, facts.selectors, facts.place)
            verdict = tclass.verdicts[dclass] = refused is None
        return verdict
