"""The hand-out wired to the task service and the store: pushes, acks, declines, lost
streams and stale answers, with an injected clock and no sockets (a stream is a recorder of
the frames the hub sends on it)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.core.eligibility import ACCOUNT_WIDE, DelegateScope, EnvFacts
from manager.core.taskstate import WITHDRAWN
from manager.errors import Conflicting
from manager.keys.masterkey import MasterKey
from manager.records import DelegateRecord
from manager.schemas.grants import Target
from manager.schemas.tasks import TaskSubmit
from manager.store.base import StoreError
from manager.store.sqlite import SqliteStore
from manager.tasks.events import TaskEvents
from manager.tasks.handout import Handout
from manager.tasks.hub import Hub, Session
from manager.tasks.service import TaskService
from shared.limits import Timings
from shared.protocol import Heartbeat, TaskResult, TaskState

TIMINGS = Timings()
ACK_WITHIN = 2 * TIMINGS.lost_after


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Stream:
    """What the hub needs of a WebSocket: it records every frame sent."""

    def __init__(self) -> None:
        self.closed = False
        self.frames: list[dict[str, Any]] = []

    async def send_frame(self, data: bytes, opcode: object) -> None:
        self.frames.append(json.loads(data))

    async def close(self, **_: object) -> None:
        self.closed = True

    def assignments(self) -> list[tuple[str, int]]:
        return [
            (f["assignment"]["task"]["id"], f["assignment"]["attempt"])
            for f in self.frames
            if f["type"] == "assignment"
        ]

    def cancels(self) -> list[str]:
        return [f["task_id"] for f in self.frames if f["type"] == "cancel"]


class World:
    def __init__(self, store: SqliteStore, clock: Clock, tmp_path: Path) -> None:
        self.store = store
        self.clock = clock
        self.hub = Hub(
            lost_after=TIMINGS.lost_after,
            clock=clock,
            wall=clock,
            heartbeat_interval=TIMINGS.heartbeat_interval,
        )
        # No wait between tries of a withdrawal the store failed: time here is the clock's.
        self.handout = Handout(
            self.hub, ack_within=ACK_WITHIN, tick=1.0, clock=clock, retry_after=0.0
        )
        self.hub.on_dropped = self.handout.disconnected
        self.tasks = TaskService(
            store=store,
            hub=self.hub,
            handout=self.handout,
            events=TaskEvents(),
            master_key=MasterKey.load_or_create(tmp_path / "master.key"),
            timings=TIMINGS,
            clock=clock,
            wall=clock,
        )
        self.streams: dict[str, Stream] = {}

    def connect(
        self,
        name: str,
        *,
        key: str = "key-00000001",
        capacity: int = 4,
        scope: DelegateScope = ACCOUNT_WIDE,
    ) -> Session:
        """Delegate ``name``'s stream says hello with ``key``."""
        record = DelegateRecord(
            id=f"dlg_{name}",
            name=name,
            token_id="tok",
            hostname="h",
            version="2",
            protocol_version=2,
            selectors=(),
            task_types=("shell",),
            capacity=capacity,
            public_key=base64.b64encode(name.encode().ljust(32, b"k")).decode(),
            created_at=self.clock(),
            last_seen=self.clock(),
        )
        session = self.hub.session(record)
        session.scope = scope
        stream = self.streams[name] = Stream()
        session.ws = stream  # type: ignore[assignment]
        self.handout.connected(session, key, session.listed)
        return session

    def lose_stream(self, session: Session) -> None:
        assert session.ws is not None
        session.ws.closed = True  # type: ignore[misc]
        session.ws = None
        self.handout.stream_lost(session.id)

    async def submit(self, **over: object) -> str:
        req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}, **over})
        task, _ = await self.tasks.submit(req)
        await self.settle()
        return task.id

    async def settle(self) -> None:
        await self.handout.settle()
        # Frames are sent from tasks the hub spawns: let them run.
        for _ in range(3):
            await self.handout.settle()
            await asyncio.sleep(0)

    async def task(self, task_id: str) -> tuple[TaskState, int, str | None]:
        task = await self.store.get_task(task_id)
        assert task is not None
        return task.state, task.attempt, task.delegate_id

    async def held_once(self, name: str, session: Session, task_id: str) -> None:
        """``name``'s process holds attempt 1 of the task, pushed to it once, claimed once
        (a push again to the same process is answered HELD: nothing claimed anew)."""
        assert self.streams[name].assignments() == [(task_id, 1)]
        assert await self.task(task_id) == (TaskState.RUNNING, 1, session.id)
        assert len(await self.store.attempts(task_id)) == 1

    async def result(self, session: Session, task_id: str, attempt: int) -> None:
        await self.tasks.record_result(
            session, task_id, TaskResult(attempt=attempt, status="succeeded", exit_code=0)
        )
        await self.settle()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = Clock()
    store = SqliteStore(tmp_path / "t.db", lease_now=clock)
    await store.open()
    yield World(store, clock, tmp_path)
    await store.close()


async def test_a_task_is_claimed_then_pushed_whole_to_one_delegate(world: World) -> None:
    a = world.connect("a")
    task_id = await world.submit()
    # The claim is in the store before the frame went out, and the frame carries the task.
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)
    assert world.streams["a"].assignments() == [(task_id, 1)]
    assert world.streams["a"].frames[-1]["assignment"]["task"]["payload"]["script"] == "true"
    world.handout.ack(a, task_id, 1)
    await world.result(a, task_id, 1)
    assert (await world.task(task_id))[0] is TaskState.SUCCEEDED


async def test_a_declined_task_goes_to_the_next_delegate_and_the_decline_is_not_counted(
    world: World,
) -> None:
    a, b = world.connect("a"), world.connect("b")
    task_id = await world.submit(max_attempts=2)
    first = "a" if world.streams["a"].assignments() else "b"
    other = "b" if first == "a" else "a"
    decliner, taker = (a, b) if first == "a" else (b, a)
    world.handout.decline(decliner, task_id, 1, full=True)
    await world.settle()
    assert world.streams[other].assignments() == [(task_id, 2)]
    assert await world.task(task_id) == (TaskState.RUNNING, 2, taker.id)
    attempts = await world.store.attempts(task_id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN), (2, None)]
    world.handout.ack(taker, task_id, 2)
    # Its lease runs out (no heartbeat lists it): the declined attempt does not count
    # against max_attempts=2, so the task is queued again rather than failed.
    world.clock.now += TIMINGS.lost_after + TIMINGS.heartbeat_interval * 4
    # The sweep loop's first pass (a start long ago, no stall since): judging.
    world.hub.liveness.tick(world.clock.now)
    assert world.hub.liveness.judging(world.clock.now)
    await world.tasks.sweep()
    await world.settle()
    # Attempt 2 lost, attempt 1 withdrawn: one counted of two, so it is handed out again.
    assert (await world.task(task_id))[:2] == (TaskState.RUNNING, 3)
    attempts = await world.store.attempts(task_id)
    assert [x.status for x in attempts] == [WITHDRAWN, "lost", None]


async def test_a_withdrawal_the_store_failed_is_tried_again_and_the_decline_still_not_counted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restart under a decline: forgotten, the claim stayed until its lease ran
    out and counted as a lost attempt, and a task of one attempt failed without running."""
    a, b = world.connect("a"), world.connect("b")
    real_withdraw = world.tasks.withdraw
    failures = 2

    async def failing_withdraw(task_id: str, delegate_id: str, attempt: int) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise StoreError("postgres: the database system is shutting down")
        await real_withdraw(task_id, delegate_id, attempt)

    monkeypatch.setattr(world.tasks, "withdraw", failing_withdraw)
    task_id = await world.submit()  # max_attempts 1
    decliner, taker = (a, "b") if world.streams["a"].assignments() else (b, "a")
    world.handout.decline(decliner, task_id, 1, full=True)
    await world.settle()
    assert failures == 0
    attempts = await world.store.attempts(task_id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN), (2, None)]
    assert world.streams[taker].assignments() == [(task_id, 2)]


async def test_a_stream_lost_before_the_ack_is_pushed_again_to_the_same_process(
    world: World,
) -> None:
    a = world.connect("a", key="process-one")
    task_id = await world.submit()
    world.lose_stream(a)
    world.connect("a", key="process-one")
    await world.settle()
    await world.held_once("a", a, task_id)


async def test_a_stream_lost_before_the_ack_and_a_new_process_withdraws_the_attempt(
    world: World,
) -> None:
    a = world.connect("a", key="process-one")
    task_id = await world.submit()
    world.lose_stream(a)
    world.connect("a", key="process-two")
    await world.settle()
    # The new process never had it: attempt 1 withdrawn, attempt 2 pushed to it.
    assert world.streams["a"].assignments() == [(task_id, 2)]
    attempts = await world.store.attempts(task_id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN), (2, None)]


async def test_a_duplicate_ack_changes_nothing(world: World) -> None:
    a = world.connect("a")
    task_id = await world.submit()
    world.handout.ack(a, task_id, 1)
    world.handout.ack(a, task_id, 1)
    await world.settle()
    assert world.streams["a"].assignments() == [(task_id, 1)]
    assert world.streams["a"].cancels() == []
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)


async def test_a_result_for_an_older_attempt_is_refused_and_the_newer_one_recorded(
    world: World,
) -> None:
    a = world.connect("a")
    task_id = await world.submit()
    world.lose_stream(a)
    b = world.connect("b")
    # A never answers, and its session ends (no heartbeat for lost_after): the attempt is
    # withdrawn and goes to b. No timer alone withdraws it (an ack may be on its way).
    world.clock.now += ACK_WITHIN + 1
    world.handout.tick()
    await world.settle()
    assert world.streams["b"].assignments() == []
    world.handout.disconnected(a.id)
    await world.settle()
    assert world.streams["b"].assignments() == [(task_id, 2)]
    with pytest.raises(Conflicting):
        await world.tasks.record_result(
            a, task_id, TaskResult(attempt=1, status="succeeded", exit_code=0)
        )
    world.handout.ack(b, task_id, 2)
    await world.result(b, task_id, 2)
    assert await world.task(task_id) == (TaskState.SUCCEEDED, 2, b.id)


async def test_six_tasks_on_three_idle_delegates_land_two_each(world: World) -> None:
    sessions = [world.connect(n) for n in ("a", "b", "c")]
    for _ in range(6):
        await world.submit()
    assert sorted(len(world.streams[s.delegate.name].assignments()) for s in sessions) == [2, 2, 2]


async def test_an_ack_of_another_delegates_attempt_is_refused_and_told_nothing(
    world: World,
) -> None:
    a, thief = world.connect("a"), world.connect("thief", capacity=1)
    world.handout.drain(thief.id, True)
    task_id = await world.submit()
    assert world.streams["a"].assignments() == [(task_id, 1)]
    world.handout.ack(thief, task_id, 1)
    world.handout.decline(thief, task_id, 1, full=False)
    await world.settle()
    # Refused, and not answered: a cancel would tell the thief the task id is open.
    assert world.streams["thief"].frames == []
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)
    assert len(await world.store.attempts(task_id)) == 1


async def test_a_late_ack_of_an_attempt_taken_back_is_answered_with_a_cancel(
    world: World,
) -> None:
    a = world.connect("a")
    task_id = await world.submit()
    assert world.streams["a"].assignments() == [(task_id, 1)]
    b = world.connect("b")
    world.handout.decline(a, task_id, 1, full=False)
    await world.settle()
    assert world.streams["b"].assignments() == [(task_id, 2)]
    # a was handed attempt 1 and may have started it: its late ack is told to stop.
    world.handout.ack(a, task_id, 1)
    await world.settle()
    assert world.streams["a"].cancels() == [task_id]
    assert world.streams["b"].cancels() == []
    assert await world.task(task_id) == (TaskState.RUNNING, 2, b.id)


async def test_a_full_delegate_is_pushed_nothing_until_a_heartbeat_shows_a_free_slot(
    world: World,
) -> None:
    a = world.connect("a", capacity=2)
    task_id = await world.submit()
    world.handout.decline(a, task_id, 1, full=True)
    await world.settle()
    assert world.streams["a"].assignments() == [(task_id, 1)]
    assert (await world.task(task_id))[0] is TaskState.QUEUED
    world.hub.on_heartbeat(a, Heartbeat(seq=1, free_slots=1))
    world.handout.heartbeat(a, 1)
    await world.settle()
    assert world.streams["a"].assignments() == [(task_id, 1), (task_id, 2)]


async def test_a_full_decline_loop_costs_one_push_a_tick_not_one_per_heartbeat(
    world: World,
) -> None:
    """A stolen credential's delegate declining "full", then reporting free slots, over and
    over: each heartbeat would start a claim and a withdrawal."""
    a = world.connect("a", capacity=2)
    task_id = await world.submit()
    for seq in range(1, 51):
        pushed = world.streams["a"].assignments()
        world.handout.decline(a, task_id, pushed[-1][1], full=True)
        await world.settle()
        world.hub.on_heartbeat(a, Heartbeat(seq=seq, free_slots=2))
        world.handout.heartbeat(a, 2)
        await world.settle()
        world.clock.now += 0.01  # fifty heartbeats within half a second
    # Reopened once (the first heartbeat); the rest waited for the tick.
    assert len(world.streams["a"].assignments()) == 2
    world.clock.now += 1.0  # the tick (World's Handout: tick=1.0)
    world.handout.heartbeat(a, 2)
    await world.settle()
    assert len(world.streams["a"].assignments()) == 3


async def test_a_session_that_ends_requeues_what_it_had_not_acked(world: World) -> None:
    a = world.connect("a")
    task_id = await world.submit()
    world.hub.drop(a.id, code=4005, reason="lost")  # type: ignore[arg-type]
    await world.settle()
    assert (await world.task(task_id))[:2] == (TaskState.QUEUED, 1)
    b = world.connect("b")
    await world.settle()
    assert world.streams["b"].assignments() == [(task_id, 2)]
    assert await world.task(task_id) == (TaskState.RUNNING, 2, b.id)


async def test_a_long_poll_is_answered_with_a_claimed_assignment(world: World) -> None:
    a = world.connect("a")
    a.ws = None
    world.handout.stream_lost(a.id)
    poll = asyncio.ensure_future(world.handout.poll(a, "poller-key-1", 30.0))
    await asyncio.sleep(0)
    before = world.store.commits
    task_id = await world.submit()
    handed = await poll
    assert handed is not None
    assert (handed.task.id, handed.attempt) == (task_id, 1)
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)
    # Claimed after the insert (a claim written with it is for a stream only).
    assert world.store.commits - before == 2
    # Counted as acked: time passing withdraws nothing.
    world.clock.now += ACK_WITHIN + 1
    world.handout.tick()
    await world.settle()
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)


async def test_an_assignment_carries_an_id_token_request_only_for_a_task_with_an_app(
    world: World,
) -> None:
    sealed: list[str] = []

    class Attacher:
        def attach(self, handed: Any, key: str) -> Any:
            sealed.append(handed.task.id)
            return handed

    world.tasks.id_tokens = Attacher()
    world.connect("a")
    world.connect("b", scope=DelegateScope(apps=frozenset({"app_1"})))
    plain = await world.submit()
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}})
    placed, _ = await world.tasks.submit(req, target=Target("app_1", "env_1", "production"))
    await world.settle()
    assert world.streams["a"].assignments() == [(plain, 1)]
    assert world.streams["b"].assignments() == [(placed.id, 1)]
    assert sealed == [placed.id]


async def test_a_poll_left_over_when_the_stream_comes_back_takes_nothing(world: World) -> None:
    a = world.connect("a")
    a.ws = None
    world.handout.stream_lost(a.id)
    poll = asyncio.ensure_future(world.handout.poll(a, "process-key-1", 30.0))
    await asyncio.sleep(0)
    # The delegate gave the poll up for a stream that holds again (the request lingers).
    world.connect("a", key="process-key-1")
    assert await poll is None
    task_id = await world.submit()
    assert world.streams["a"].assignments() == [(task_id, 1)]


async def test_a_task_whose_environment_became_dedicated_is_not_pushed_to_a_delegate_it_left(
    world: World,
) -> None:
    # Queued while its environment took any non-production delegate; made dedicated before
    # one connected. The hand-out's facts are from the queueing: the claim judges again,
    # so neither the payload nor a secret reaches the delegate the task is no longer for.
    # The hand-out reads the service's environment index, as the app wires them.
    world.handout._envs = world.tasks.envs.facts
    world.tasks.envs.facts["env_qa"] = EnvFacts("app_1", "non_production", dedicated=False)
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "echo qa"}})
    task, _ = await world.tasks.submit(req, target=Target("app_1", "env_qa", "non_production"))
    await world.settle()
    world.tasks.envs.facts["env_qa"] = EnvFacts("app_1", "non_production", dedicated=True)

    world.connect("typed", scope=DelegateScope(env_types=frozenset({"non_production"})))
    await world.settle()
    assert world.streams["typed"].assignments() == []
    assert await world.task(task.id) == (TaskState.QUEUED, 0, None)

    # A delegate the dedicated environment names gets it, at the first attempt.
    world.connect("named", scope=DelegateScope(envs=frozenset({"env_qa"})))
    await world.settle()
    assert world.streams["named"].assignments() == [(task.id, 1)]
    assert world.streams["typed"].assignments() == []


async def _a_poll_whose_claim_waits_at_a_gate(
    world: World,
) -> tuple[Session, asyncio.Event, asyncio.Future[Any], str]:
    """Polling delegate ``a``'s poll, and a task submitted for it whose claim waits until
    the gate is set: (a, the gate, the poll, the task's id)."""
    a = world.connect("a")
    a.ws = None
    world.handout.stream_lost(a.id)
    gate = asyncio.Event()
    real_claim = world.tasks.claim

    async def slow_claim(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await real_claim(*args, **kwargs)

    world.tasks.claim = slow_claim  # type: ignore[method-assign]
    poll = asyncio.ensure_future(world.handout.poll(a, "poller-key-1", 30.0))
    await asyncio.sleep(0)
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}})
    task, _ = await world.tasks.submit(req)
    for _ in range(3):
        await asyncio.sleep(0)  # the push is at the gate, holding the poll
    return a, gate, poll, task.id


async def test_a_poll_is_never_answered_with_an_attempt_taken_back_while_it_was_claimed(
    world: World,
) -> None:
    """A poll that ends while its claim is being written declines it; a push of the same
    attempt decided before that (the next poll's) must not hand the withdrawn attempt out."""
    a, gate, first, task_id = await _a_poll_whose_claim_waits_at_a_gate(world)
    # The poller gives the first poll up for a new one while the claim is written.
    second = asyncio.ensure_future(world.handout.poll(a, "poller-key-1", 30.0))
    assert await first is None
    gate.set()
    handed = await second
    await world.settle()
    assert handed is not None
    state, attempt, holder = await world.task(task_id)
    # What the poll was handed is the attempt the store holds for it, not a withdrawn one.
    assert (state, holder) == (TaskState.RUNNING, a.id)
    assert handed.attempt == attempt


async def test_a_poll_whose_wait_ran_out_while_its_claim_was_written_is_not_answered(
    world: World,
) -> None:
    """The manager froze while a poll's claim was being written, past the poll's wait: its
    client has given up, so an answer would be lost, and, counted as taken, the attempt
    with it. The claim is taken back instead (not counted), for the next poll."""
    a, gate, poll, task_id = await _a_poll_whose_claim_waits_at_a_gate(world)
    world.clock.now += 31.0
    gate.set()
    assert await poll is None
    await world.settle()
    attempts = await world.store.attempts(task_id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN)]
    handed = await world.handout.poll(a, "poller-key-1", 30.0)
    assert handed is not None
    assert (handed.task.id, handed.attempt) == (task_id, 2)


async def test_an_answered_poll_takes_no_claim_for_a_slot_freed_before_the_next_poll(
    world: World,
) -> None:
    """A poll carries one assignment. A slot that frees between its answer and the next poll
    gets no claim for the answered poll (a claim nobody could be handed, then withdrawn);
    the next poll is handed the waiting task at its first attempt."""
    a = world.connect("a")
    a.ws = None
    world.handout.stream_lost(a.id)
    first = await world.submit()
    handed = await world.handout.poll(a, "poller-key-1", 30.0)
    assert handed is not None
    assert handed.task.id == first
    second = await world.submit()
    third = await world.submit()
    withdrawn: list[str] = []
    real_withdraw = world.tasks.withdraw

    async def counted(task_id: str, delegate_id: str, attempt: int) -> None:
        withdrawn.append(task_id)
        await real_withdraw(task_id, delegate_id, attempt)

    world.tasks.withdraw = counted  # type: ignore[method-assign]
    poll = asyncio.ensure_future(world.handout.poll(a, "poller-key-1", 30.0))
    await asyncio.sleep(0)
    # The first task's slot frees right after the poll is answered, before its handler ends.
    world.handout._polls[a.id].answer.add_done_callback(
        lambda _: world.handout.result(first, a.id, handed.attempt)
    )
    await world.settle()
    answered = await poll
    await world.settle()
    assert answered is not None
    assert answered.task.id == second
    assert withdrawn == []
    assert await world.task(third) == (TaskState.QUEUED, 0, None)
    last = await world.handout.poll(a, "poller-key-1", 30.0)
    assert last is not None
    assert (last.task.id, last.attempt) == (third, 1)


async def test_a_poll_handled_after_the_stream_opened_leaves_the_streams_slots_alone(
    world: World,
) -> None:
    # Sent before the stream opened, handled after: it answers nothing, and the delegate's
    # four slots stay four (registered as a poll, it had cut them to what it held plus one).
    a = world.connect("a", key="process-key-1", capacity=4)
    assert await world.handout.poll(a, "process-key-1", 0.0) is None
    tasks = [await world.submit() for _ in range(4)]
    assert world.streams["a"].assignments() == [(t, 1) for t in tasks]


@pytest.mark.parametrize(
    ("key", "pushed"), [("process-key-1", True), ("process-key-2", False)], ids=["same", "new"]
)
async def test_a_claim_from_before_a_restart_goes_to_its_process_if_it_never_had_it(
    world: World, tmp_path: Path, key: str, pushed: bool
) -> None:
    """The manager stopped after committing a claim, before its frame reached the delegate.
    The next manager pushes the same attempt to the same process when it comes back without
    it (no attempt is lost to the manager's restart); a new process of the delegate may be
    the old one restarted after running it, so then the lease decides."""
    a = world.connect("a", key="process-key-1")
    task_id = await world.submit()
    assert world.streams["a"].assignments() == [(task_id, 1)]
    restarted = World(world.store, world.clock, tmp_path)
    await restarted.tasks.recover()
    restarted.connect("a", key=key)
    await restarted.settle()
    assert restarted.streams["a"].assignments() == ([(task_id, 1)] if pushed else [])
    assert await restarted.task(task_id) == (TaskState.RUNNING, 1, a.id)


async def test_a_claim_pushed_again_after_a_restart_gets_a_whole_lease(
    world: World, tmp_path: Path
) -> None:
    """Found by review: a claim handed again (the store answers HELD) wrote no lease, so a
    holder that came back late was pushed an attempt whose stored lease, left from before
    the restart, ran out before its first heartbeat could list the task."""
    world.connect("a", key="process-key-1")
    task_id = await world.submit()
    restarted = World(world.store, world.clock, tmp_path)
    await restarted.tasks.recover()
    before = await world.store.get_task(task_id)
    assert before is not None
    assert before.lease_until is not None
    # The holder comes back with a few seconds of that lease left.
    world.clock.now = before.lease_until - 3
    restarted.connect("a", key="process-key-1")
    await restarted.settle()
    assert restarted.streams["a"].assignments() == [(task_id, 1)]
    after = await world.store.get_task(task_id)
    assert after is not None
    assert after.lease_until is not None
    assert after.lease_until >= world.clock.now + ACK_WITHIN


async def test_a_claim_from_before_a_restart_whose_cancel_was_asked_is_not_pushed_again(
    world: World, tmp_path: Path
) -> None:
    # Pushed again, it would start before the cancel reached its delegate.
    world.connect("a", key="process-key-1")
    task_id = await world.submit()
    assert (await world.tasks.cancel(task_id)).cancel_requested
    restarted = World(world.store, world.clock, tmp_path)
    await restarted.tasks.recover()
    restarted.connect("a", key="process-key-1")
    await restarted.settle()
    assert restarted.streams["a"].assignments() == []


async def test_a_poll_whose_client_hung_up_is_not_answered_and_its_claim_not_counted(
    world: World,
) -> None:
    """An answer written to a closed connection is lost; counted as acknowledged, the attempt
    would be lost with it (its lease runs out, the attempt counts). The claim is taken back
    instead, uncounted, and the delegate's next poll is handed the task."""
    a = world.connect("a")
    a.ws = None
    world.handout.stream_lost(a.id)
    gone = False
    poll = asyncio.ensure_future(world.handout.poll(a, "poller-key-1", 30.0, lambda: gone))
    await asyncio.sleep(0)
    gone = True  # the client closed its request before the claim was written
    task_id = await world.submit()
    await world.settle()
    assert await poll is None  # over: its client is gone
    state, attempt, _ = await world.task(task_id)
    assert (state, attempt) == (TaskState.QUEUED, 1)
    attempts = await world.store.attempts(task_id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN)]
    handed = await world.handout.poll(a, "poller-key-1", 30.0)
    assert handed is not None
    assert (handed.task.id, handed.attempt) == (task_id, 2)


async def test_a_second_poll_beside_an_answered_one_is_handed_no_more_than_the_slots(
    world: World,
) -> None:
    """A delegate of one slot whose first poll was answered, and whose second poll comes
    before it lists the first task (a poll of an earlier polling spell still out): the
    second is handed nothing (it would be refused there, and lost to its lease)."""
    a = world.connect("a", capacity=1)
    a.ws = None
    world.handout.stream_lost(a.id)
    first = await world.submit()
    await world.submit()
    handed = await world.handout.poll(a, "poller-key-1", 30.0)
    assert handed is not None
    assert handed.task.id == first
    # Its wait runs out empty (a second of the test's time).
    assert await world.handout.poll(a, "poller-key-1", 1.0) is None
