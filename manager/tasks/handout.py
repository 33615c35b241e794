"""Hand-out (protocol v2): one assignment per task, carried out for the :class:`Assigner`.

:class:`~manager.core.assignment.Assigner` decides (plain code, events in, actions out);
this module feeds it every event of this replica (tasks queued, delegates connected, acks,
declines, results, capacity, drain, the time) and carries out what it returns:

- ``Push``: the claim is committed first (``Claims.claim``: taskstate's compare-and-set,
  HELD for a push again to the same holder), then the assignment goes out whole, on the
  delegate's stream or as the answer to its long-poll. Nothing is sent before the commit; a
  claim the store refuses comes back to the Assigner as ``gone``.
- ``Requeue``: the unacknowledged claim is withdrawn (``Claims.withdraw``, taskstate's
  ``on_withdraw``: not counted against max_attempts), again while the store fails.
- ``Refuse``: a stale ack is answered with a cancel of that task, unless this delegate
  holds a newer attempt of it.

Actions on one task are carried out in the order they were decided (a withdraw finishes
before the next claim of the same task starts); actions on different tasks run side by
side, so a slow store write for one does not hold up the others.

A long-poll is a link that carries one assignment: while it waits, its delegate is a seat
with one free slot beyond what it holds; the answer counts as acknowledged (a lost answer
is the lease's to judge: the task is not in the delegate's heartbeats, its lease runs out
and the sweep requeues it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from manager.core.assignment import Action, Assigner, Push, Queued, Refuse, Requeue
from manager.core.eligibility import EnvFacts, TaskFacts, place_of
from manager.errors import Unavailable
from manager.records import TaskRecord
from manager.store.base import StoreError
from manager.tasks.hub import Hub, Session
from shared.protocol import AcquireResponse, TaskAssigned, TaskCancel

__all__ = ["Claims", "Handout", "Reserved"]

log = structlog.get_logger("tether.handout")

# A withdrawal the store failed is tried again this many times in all, waiting from
# ``retry_after`` doubling up to WITHDRAW_RETRY_MAX between tries: about 15 s, the length of
# a database restart on a loaded machine. Forgotten instead, the claim would stay until its
# lease ran out and count as a lost attempt: a task of one attempt, declined by a full
# delegate during a restart, failed without ever running.
WITHDRAW_TRIES = 12
WITHDRAW_RETRY_MAX = 2.0


class Claims(Protocol):
    """What carrying out an action needs from the task service."""

    async def claim(
        self, session: Session, task_id: str, attempt: int, key: str
    ) -> AcquireResponse | None:
        """Commit attempt ``attempt`` of the task for ``session`` under ``key`` (or find it
        already held so), and build its assignment; None when the store refuses."""
        ...

    async def withdraw(self, task_id: str, delegate_id: str, attempt: int) -> None:
        """Take back the unacknowledged claim of ``attempt`` (nothing if it moved on)."""
        ...


@dataclass(frozen=True, slots=True)
class Reserved:
    """A new task's place in the hand-out until its insert is answered (Handout.reserve):
    the gate every action on it waits behind, and the push to claim in the insert."""

    gate: asyncio.Future[None]
    push: Push | None
    session: Session | None


@dataclass(frozen=True, slots=True)
class _Poll:
    """A waiting long-poll: its answer, and whether its client has hung up (its connection
    closed). An answer written to a gone client would be lost, and, counted as
    acknowledged, the attempt with it (its lease runs out, and it counts)."""

    answer: asyncio.Future[AcquireResponse]
    hung_up: Callable[[], bool]
    # When its wait is over (the manager's monotonic clock). Its client gives up soon
    # after; a manager that froze past it (its handler has not run since) must not answer
    # into a request nobody waits for any more.
    until: float

    def open(self, now: float) -> bool:
        return not self.answer.done() and now <= self.until and not self.hung_up()


class Handout:
    """``ack_within``: how long a pushed assignment may go unanswered; ``clock`` is
    monotonic (every deadline here is a duration)."""

    def __init__(
        self,
        hub: Hub,
        *,
        ack_within: float,
        tick: float,
        clock: Callable[[], float] = time.monotonic,
        envs: Mapping[str, EnvFacts] | None = None,
        retry_after: float = 0.1,
    ) -> None:
        self._hub = hub
        self._retry_after = retry_after
        self._clock = clock
        self._tick = tick
        self._envs: Mapping[str, EnvFacts] = {} if envs is None else envs
        # The claim's lease: long enough to reach the ack and the first heartbeat listing it.
        self.ack_within = ack_within
        # No timer withdraws an assignment: one withdrawn while its ack was on the way (a
        # loaded machine) ran twice. An unanswered one goes back when the delegate's
        # session ends (no heartbeat for lost_after) or another process of it says hello;
        # one that a live delegate never acks is not listed by its heartbeats, so its
        # lease runs out and the sweep requeues it, the attempt counted, as any lost lease.
        self.assigner = Assigner(ack_within=math.inf)
        self._claims: Claims | None = None
        # Delegates whose long-poll is waiting: the poll.
        self._polls: dict[str, _Poll] = {}
        # The last action carried out per task, so the next waits for it.
        self._chains: dict[str, asyncio.Future[None]] = {}
        # Delegates that declined for want of a slot: a heartbeat with free slots reopens them,
        # at most once a tick each (when it was last reopened), so a delegate that declines
        # "full" and then reports free slots, again and again, costs a claim and a withdrawal
        # a tick, not one per heartbeat it cares to send.
        self._full: set[str] = set()
        self._reopened: dict[str, float] = {}
        # The delegates each open task was handed to: only they may be running an attempt
        # of it, so only their stale acks are answered with a cancel. Anyone else's is
        # dropped without an answer: a cancel would tell them the task id is open.
        self._handed: dict[str, set[str]] = {}
        # What happened, for the bench and /metrics.
        self.pushed = 0
        self.declined = 0

    def bind(self, claims: Claims) -> None:
        self._claims = claims

    def queued_count(self) -> int:
        return len(self.assigner.queue())

    # -- events: tasks -----------------------------------------------------------------------

    def _queued(self, task: TaskRecord) -> Queued:
        place = place_of(task.app_id, task.env_id, self._envs)
        return Queued(task.id, TaskFacts(task.type, task.selectors, place), task.attempt)

    def queued(self, task: TaskRecord) -> None:
        """The task is in the queue at ``task.attempt`` (submitted, requeued, recovered, or
        queued through another replica)."""
        self._carry(self.assigner.queued(self._queued(task), self._clock()))

    def reserve(self, task: TaskRecord) -> Reserved:
        """A new task, about to be stored: it enters the queue now, so that a delegate of the
        stream with a free slot can be chosen for it and claimed in the insert's own
        transaction (one commit fewer on its way, and no window in which it is queued).

        Every action on the task waits until :meth:`inserted` or :meth:`not_inserted` is
        called (the task is not in the store before): the caller must call one of them.
        ``push`` is set when the Assigner pushed it at once to a delegate whose stream is up:
        the caller writes that claim with the task (taskstate's ``on_acquire``) and then
        calls :meth:`inserted` with its assignment. A push to a poller is left to the usual
        claim, after the insert."""
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chains[task.id] = gate
        gate.add_done_callback(functools.partial(self._done, task.id))
        actions = self.assigner.queued(self._queued(task), self._clock())
        push = next((a for a in actions if isinstance(a, Push) and a.task_id == task.id), None)
        session = None if push is None else self._hub.sessions.get(push.delegate_id)
        if push is None or session is None or session.mode != "stream":
            push, session = None, None
        self._carry([a for a in actions if a is not push])
        return Reserved(gate, push, session)

    def inserted(self, reserved: Reserved, handed: AcquireResponse | None) -> None:
        """The task is stored; ``handed``: the assignment of the claim written with it, to
        send now (None: it was stored queued). Actions decided meanwhile run from here."""
        push = reserved.push
        self._open_gate(reserved)
        if handed is None or push is None or not self._current(push):
            # Not claimed with it, or taken back while the insert was written (the stream
            # was lost): the Requeue decided meanwhile, free to run now, withdraws the claim.
            return
        session = self._hub.sessions.get(push.delegate_id)
        if session is None:
            return  # dropped since: disconnected() requeued it already, or will
        self.pushed += 1
        self._handed.setdefault(push.task_id, set()).add(push.delegate_id)
        # As _push: on a lost stream the frame is lost, and the Assigner pushes it again to
        # the same process when it is back, or requeues it.
        self._hub.send(session, TaskAssigned(assignment=handed))

    def not_inserted(
        self, reserved: Reserved, task_id: str, *, maybe_written: bool = False
    ) -> None:
        """The insert failed, or found an earlier task of the same idempotency key: the task
        is no one's to hand out. ``maybe_written``: its claim may be stored all the same;
        it is withdrawn (nothing when there is no such row)."""
        push = reserved.push
        self._open_gate(reserved)
        if maybe_written and push is not None and self._current(push):
            # As a push nobody took: a Requeue, whose withdrawal finds no row (then the
            # task is forgotten) or takes the claim back uncounted and hands it out again.
            now = self._clock()
            self._carry(
                self.assigner.decline(
                    task_id, push.delegate_id, push.attempt, now, passed=False, push=push.push
                )
            )
            return
        self._carry(self.assigner.gone(task_id, self._clock()))

    def _open_gate(self, reserved: Reserved) -> None:
        if not reserved.gate.done():
            reserved.gate.set_result(None)

    def adopt(self, task: TaskRecord) -> None:
        """A task the store holds running from before this process started (recovery)."""
        if task.delegate_id is None or task.acquire_key is None:
            return  # taken by id through acquire: nobody's assignment
        if task.cancel_requested:
            # Pushed again, it would start before the cancel reached it; left to its lease,
            # a holder that never had it ends it as cancelled (taskstate.on_lease_lost).
            return
        self.assigner.adopt(self._queued(task), task.delegate_id, task.acquire_key)
        self._handed.setdefault(task.id, set()).add(task.delegate_id)

    def gone(self, task_id: str) -> None:
        """The task is final, or held outside this replica's assignments."""
        self._handed.pop(task_id, None)
        self._carry(self.assigner.gone(task_id, self._clock()))

    def result(self, task_id: str, delegate_id: str, attempt: int) -> None:
        """The store recorded (or already had) the attempt's result: its slot frees. A stale
        result was refused by the store already, so a Refuse here has nothing left to do."""
        actions = self.assigner.result(task_id, delegate_id, attempt, self._clock())
        if not any(isinstance(a, Refuse) for a in actions):
            self._handed.pop(task_id, None)
        self._carry([a for a in actions if not isinstance(a, Refuse)])

    # -- events: delegates ---------------------------------------------------------------------

    def connected(
        self, session: Session, key: str, held: Iterable[str], spooled: Iterable[str] = ()
    ) -> None:
        """``session``'s stream answered its hello: ``key`` names the process, ``held`` the
        tasks it runs, ``spooled`` those it ran whose results wait in its spool."""
        self._full.discard(session.id)
        # A long-poll left over from polling (the delegate moved to the stream) takes no
        # assignment: its answer would go to a request the delegate gave up.
        self._drop_poll(session.id)
        actions = self.assigner.connected(
            session.facts, session.delegate.capacity, key, self._clock(), held, spooled
        )
        self._carry(actions)

    def stream_lost(self, delegate_id: str) -> None:
        self._carry(self.assigner.stream_lost(delegate_id, self._clock()))

    def disconnected(self, delegate_id: str) -> None:
        """The session is over (lost, revoked, deleted)."""
        self._full.discard(delegate_id)
        self._reopened.pop(delegate_id, None)
        self._drop_poll(delegate_id)
        self._carry(self.assigner.disconnected(delegate_id, self._clock()))

    def heartbeat(self, session: Session, free_slots: int) -> None:
        """A delegate that declined as full and now reports a free slot is pushed to again."""
        if free_slots > 0 and session.id in self._full:
            now = self._clock()
            if now - self._reopened.get(session.id, -math.inf) < self._tick:
                return
            self._reopened[session.id] = now
            self._full.discard(session.id)
            self._carry(
                self.assigner.capacity(session.id, session.delegate.capacity, self._clock())
            )

    def drain(self, delegate_id: str, draining: bool) -> None:
        self._carry(self.assigner.drain(delegate_id, draining, self._clock()))

    def ack(self, session: Session, task_id: str, attempt: int) -> None:
        self._carry(self.assigner.ack(task_id, session.id, attempt, self._clock()))

    def decline(self, session: Session, task_id: str, attempt: int, *, full: bool) -> None:
        self.declined += 1
        if full:
            self._full.add(session.id)
        actions = self.assigner.decline(task_id, session.id, attempt, self._clock(), full=full)
        self._carry(actions)

    def tick(self) -> None:
        self._carry(self.assigner.tick(self._clock()))

    async def run(self) -> None:
        """Requeue assignments left unanswered past their deadline."""
        while True:
            await asyncio.sleep(self._tick)
            try:
                self.tick()
            except Exception:  # a bug here must not stop hand-out for everyone
                log.exception("hand-out tick failed")

    # -- long-polls ---------------------------------------------------------------------------

    async def poll(
        self,
        session: Session,
        key: str,
        wait: float,
        hung_up: Callable[[], bool] = lambda: False,
    ) -> AcquireResponse | None:
        """Wait up to ``wait`` seconds for an assignment claimed for this polling delegate;
        ``hung_up`` says whether its client is gone."""
        if session.mode == "stream":
            # A poll sent before the delegate's stream opened, handled after: its assignments
            # go over the stream. Registered, it would cut the stream's seat to one slot.
            await self._idle(session, wait)
            return None
        self._drop_poll(session.id)
        answer: asyncio.Future[AcquireResponse] = asyncio.get_running_loop().create_future()
        poll = self._polls[session.id] = _Poll(answer, hung_up, self._clock() + wait)
        # One free slot beyond what it holds: a poll carries one assignment.
        capacity = min(self.assigner.load(session.id) + 1, session.delegate.capacity)
        self._full.discard(session.id)
        self._carry(
            self.assigner.connected(
                session.facts,
                capacity,
                key,
                self._clock(),
                session.listed,
                session.spooled,
                # What a poll knows the delegate has is its last heartbeat's listing here.
                listing=self._hub.liveness.last_beat(session.id) is not None,
            )
        )
        try:
            await self._idle(session, wait, answer)
        finally:
            if self._polls.get(session.id) is poll:
                del self._polls[session.id]
                mode: str = session.mode  # read again: it may have changed while waiting
                if mode != "stream":
                    self._carry(self.assigner.stream_lost(session.id, self._clock()))
        if answer.done() and not answer.cancelled():
            # Answered (maybe as the wait ended): the attempt is this poller's.
            return answer.result()
        answer.cancel()
        return None

    @staticmethod
    async def _idle(
        session: Session, wait: float, answer: asyncio.Future[AcquireResponse] | None = None
    ) -> None:
        """Wait up to ``wait`` seconds, until ``answer`` is set or the hub wakes the session
        (it ended, or the manager stops)."""
        session.wake.clear()
        waker: asyncio.Future[object] = asyncio.ensure_future(session.wake.wait())
        try:
            waiting: set[asyncio.Future[object]] = {waker}
            if answer is not None:
                waiting.add(answer)  # type: ignore[arg-type]
            await asyncio.wait(waiting, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()

    async def settle(self) -> None:
        """Wait until every action decided so far (and those they led to) is carried out."""
        while self._chains:
            await asyncio.gather(*list(self._chains.values()), return_exceptions=True)

    # -- carrying out ---------------------------------------------------------------------------

    def _carry(self, actions: list[Action]) -> None:
        for action in actions:
            before = self._chains.get(action.task_id)
            step = asyncio.ensure_future(self._after(before, action))
            self._chains[action.task_id] = step
            step.add_done_callback(functools.partial(self._done, action.task_id))

    def _done(self, task_id: str, step: asyncio.Future[None]) -> None:
        if self._chains.get(task_id) is step:
            del self._chains[task_id]

    async def _after(self, before: asyncio.Future[None] | None, action: Action) -> None:
        if before is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(before)
        try:
            if isinstance(action, Push):
                await self._push(action)
            elif isinstance(action, Requeue):
                assert self._claims is not None, "bound at start"
                log.debug(
                    "assignment withdrawn",
                    task_id=action.task_id,
                    delegate_id=action.delegate_id,
                    attempt=action.attempt,
                    reason=action.reason,
                )
                await self._withdraw(action)
            else:
                self._refuse(action)
        except Exception as exc:
            # The store failed: forget the task here; the sweep and reconcile put it back.
            log.warning(
                "hand-out action failed",
                task_id=action.task_id,
                action=type(action).__name__,
                error=f"{type(exc).__name__}: {exc}",
            )
            self._carry(self.assigner.gone(action.task_id, self._clock()))

    async def _withdraw(self, requeue: Requeue) -> None:
        """Take the claim back, trying again while the store fails (WITHDRAW_TRIES); the
        actions decided after it on the same task (its next push) wait for it meanwhile."""
        assert self._claims is not None, "bound at start"
        delay = self._retry_after
        for _ in range(WITHDRAW_TRIES - 1):
            try:
                await self._claims.withdraw(requeue.task_id, requeue.delegate_id, requeue.attempt)
                return
            except (StoreError, Unavailable) as exc:
                log.warning(
                    "withdrawal failed; trying again",
                    task_id=requeue.task_id,
                    retry_in_s=delay,
                    error=f"{type(exc).__name__}: {exc}",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, WITHDRAW_RETRY_MAX)
        # The last try: its failure is the caller's (the task is forgotten here).
        await self._claims.withdraw(requeue.task_id, requeue.delegate_id, requeue.attempt)

    def _current(self, push: Push) -> bool:
        """``push`` is still the Assigner's last word on its task. A push is carried out after
        the actions decided before it on the same task; one decided before a decline or a
        withdrawal of its attempt (a poll replaced while the claim was written, and the next
        poll's push of the same attempt) is stale by then: handed out, it would run an attempt
        the store has taken back. One followed by a push again of the same claim (the poll
        ended, the next poll came) leaves the hand-out to that later push."""
        return self.assigner.current(push)

    async def _push(self, push: Push) -> None:
        assert self._claims is not None, "bound at start"
        session = self._hub.sessions.get(push.delegate_id)
        if session is None:
            # Dropped since: disconnected() requeued it already, or will.
            return
        if not self._current(push):
            return
        poll = None if session.mode == "stream" else self._polls.get(push.delegate_id)
        handed = await self._claims.claim(session, push.task_id, push.attempt, push.key)
        if handed is None:
            self._carry(self.assigner.gone(push.task_id, self._clock()))
            return
        if not self._current(push):
            # Taken back while the claim was written: the Requeue chained after this push
            # withdraws the claim.
            return
        self.pushed += 1
        self._handed.setdefault(push.task_id, set()).add(push.delegate_id)
        if poll is not None:
            if self._polls.get(push.delegate_id) is poll and poll.open(self._clock()):
                poll.answer.set_result(handed)
                # Answered: counted as acknowledged (see the module).
                now = self._clock()
                self._carry(self.assigner.ack(push.task_id, push.delegate_id, push.attempt, now))
                # A poll carries one assignment: no slot for more until the next poll opens
                # one. Left open until the handler's clean-up, the seat took a claim for each
                # result that freed a slot meanwhile, and each was taken back (most of the
                # polling path's cost).
                self._carry(self.assigner.capacity(push.delegate_id, 0, now))
            else:
                # The poll ended while the claim was written, or its client hung up: nobody
                # has it; take it back, and let the poller's next poll have it.
                if self._polls.get(push.delegate_id) is poll:
                    # Hung up: the poll is over (left open, it would be pushed the task
                    # again at once, and again).
                    self._drop_poll(push.delegate_id)
                    self._carry(self.assigner.stream_lost(push.delegate_id, self._clock()))
                self._carry(
                    self.assigner.decline(
                        push.task_id,
                        push.delegate_id,
                        push.attempt,
                        self._clock(),
                        passed=False,
                        push=push.push,
                    )
                )
            return
        # On a lost stream the frame is lost; the Assigner pushes it again to the same
        # process when it is back, or requeues it.
        self._hub.send(session, TaskAssigned(assignment=handed))

    def _drop_poll(self, delegate_id: str) -> None:
        """The delegate's waiting poll, if any, is over unanswered."""
        poll = self._polls.pop(delegate_id, None)
        if poll is not None and not poll.answer.done():
            poll.answer.cancel()

    def _refuse(self, refuse: Refuse) -> None:
        if refuse.delegate_id not in self._handed.get(refuse.task_id, ()):
            # Never handed this task: it runs nothing of it. No answer, and no line per frame.
            log.debug("ack of a task never handed out refused", delegate_id=refuse.delegate_id)
            return
        log.info(
            "stale ack refused",
            task_id=refuse.task_id,
            delegate_id=refuse.delegate_id,
            attempt=refuse.attempt,
        )
        if self.assigner.holder(refuse.task_id) == refuse.delegate_id:
            return  # it holds a newer attempt of the same task: a cancel would stop that
        session = self._hub.sessions.get(refuse.delegate_id)
        if session is not None:
            self._hub.send(session, TaskCancel(task_id=refuse.task_id))
