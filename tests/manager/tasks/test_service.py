"""TaskService with a fake clock: timeouts, leases and fencing, without sockets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from manager.core.eligibility import DelegateScope
from manager.errors import Conflicting, DomainError
from manager.keys.masterkey import MasterKey
from manager.records import DelegateRecord
from manager.schemas.tasks import TaskSubmit
from manager.store.sqlite import SqliteStore
from manager.tasks.dispatch import Dispatcher
from manager.tasks.events import TaskEvents
from manager.tasks.hub import Hub, Session
from manager.tasks.service import TaskService
from shared.limits import Timings
from shared.protocol import Heartbeat, HeartbeatAck, LogBatch, LogLine, TaskResult, TaskState

TIMINGS = Timings()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, store: SqliteStore, clock: Clock, tmp_path: Path) -> None:
        self.store = store
        self.clock = clock
        self.hub = Hub(lost_after=TIMINGS.lost_after, clock=clock)
        self.dispatcher = Dispatcher(self.hub, widen_after=0.5, tick=1.0, clock=clock)
        self.tasks = TaskService(
            store=store,
            hub=self.hub,
            dispatcher=self.dispatcher,
            events=TaskEvents(),
            master_key=MasterKey.load_or_create(tmp_path / "master.key"),
            timings=TIMINGS,
            clock=clock,
        )

    def delegate(self, name: str) -> Session:
        record = DelegateRecord(
            id=f"dlg_{name}",
            name=name,
            token_id="tok",
            hostname="h",
            version="1",
            protocol_version=1,
            selectors=(),
            task_types=("shell",),
            capacity=4,
            public_key=base64.b64encode(name.encode().ljust(32, b"k")).decode(),
            created_at=self.clock(),
            last_seen=self.clock(),
        )
        return self.hub.session(record)

    async def submit(self, **over: object) -> str:
        req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}, **over})
        task, _ = await self.tasks.submit(req)
        return task.id

    async def state(self, task_id: str) -> TaskState:
        task = await self.store.get_task(task_id)
        assert task is not None
        return task.state


async def beat(world: World, session: Session, running: list[str]) -> HeartbeatAck:
    """A heartbeat listing ``running``, then the batched lease renewal that follows it."""
    world.hub.on_heartbeat(session, Heartbeat(seq=1, running=running, free_slots=1))
    await world.tasks.renew_leases()
    return world.hub.on_heartbeat(session, Heartbeat(seq=2, running=running, free_slots=1))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    yield World(store, Clock(), tmp_path)
    await store.close()


async def test_a_task_nobody_takes_expires_after_its_queue_timeout(world: World) -> None:
    task_id = await world.submit(queue_timeout_s=60)
    world.clock.now += 59
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.QUEUED
    world.clock.now += 2
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.EXPIRED
    assert task_id not in world.dispatcher.queued


async def test_a_running_task_past_its_timeout_is_timed_out_by_the_backstop(world: World) -> None:
    session = world.delegate("a")
    task_id = await world.submit(timeout_s=30)
    await world.tasks.acquire(session, task_id)
    world.clock.now += 30 + TIMINGS.kill_grace + 2
    await beat(world, session, [task_id])
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.TIMED_OUT


async def test_a_lost_lease_requeues_and_the_next_attempt_fences_the_old(world: World) -> None:
    old, new = world.delegate("old"), world.delegate("new")
    task_id = await world.submit(max_attempts=2, queue_timeout_s=60)
    first = await world.tasks.acquire(old, task_id)
    world.clock.now += 600  # far past the queue timeout: the retry must still get its own
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.QUEUED
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.QUEUED
    second = await world.tasks.acquire(new, task_id)
    assert (first.attempt, second.attempt) == (1, 2)
    late = TaskResult(attempt=1, status="succeeded", exit_code=0)
    with pytest.raises(Conflicting):
        await world.tasks.record_result(old, task_id, late)
    line = LogLine(seq=0, stream="stdout", ts=0.0, text="late")
    with pytest.raises(Conflicting):
        await world.tasks.append_logs(old, task_id, LogBatch(attempt=1, lines=[line]))
    ack = await world.tasks.record_result(new, task_id, TaskResult(attempt=2, status="succeeded"))
    assert ack.recorded
    assert [a.status for a in await world.store.attempts(task_id)] == ["lost", "succeeded"]


async def test_a_lost_lease_without_attempts_left_fails_as_delegate_lost(world: World) -> None:
    session = world.delegate("a")
    task_id = await world.submit()
    await world.tasks.acquire(session, task_id)
    world.clock.now += TIMINGS.lost_after + 1
    await world.tasks.sweep()
    task = await world.store.get_task(task_id)
    assert task is not None
    assert (task.state, task.error) == (TaskState.FAILED, "delegate_lost")


async def test_heartbeats_listing_a_task_keep_its_lease(world: World) -> None:
    session = world.delegate("a")
    task_id = await world.submit()
    await world.tasks.acquire(session, task_id)
    for _ in range(10):
        world.clock.now += TIMINGS.heartbeat_interval
        await beat(world, session, [task_id])
        await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.RUNNING


async def test_recover_rebuilds_queue_leases_and_deadlines(world: World, tmp_path: Path) -> None:
    session = world.delegate("a")
    queued_id = await world.submit(queue_timeout_s=60)
    running_id = await world.submit()
    await world.tasks.acquire(session, running_id)
    restarted = World(world.store, world.clock, tmp_path)
    await restarted.tasks.recover()
    assert list(restarted.dispatcher.queued) == [queued_id]
    assert restarted.hub.leases.holder(running_id) == session.id
    world.clock.now += 61
    await restarted.tasks.sweep()
    assert await world.state(queued_id) is TaskState.EXPIRED


async def test_a_listed_task_the_delegate_does_not_hold_is_cancelled_in_the_ack(
    world: World,
) -> None:
    holder, other = world.delegate("holder"), world.delegate("other")
    task_id = await world.submit()
    await world.tasks.acquire(holder, task_id)
    ack = await beat(world, other, [task_id])
    assert ack.cancel == [task_id]
    assert (await beat(world, holder, [task_id])).cancel == []


async def test_a_lease_renewed_by_another_replica_keeps_the_task(
    world: World, tmp_path: Path
) -> None:
    # Acquired through this replica; the holder's heartbeats reach a second one.
    session = world.delegate("a")
    task_id = await world.submit()
    await world.tasks.acquire(session, task_id)
    replica = World(world.store, world.clock, tmp_path)
    remote = replica.delegate("a")
    for _ in range(10):
        world.clock.now += TIMINGS.heartbeat_interval
        await beat(replica, remote, [task_id])
        await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.RUNNING


async def test_a_stale_stranger_flag_does_not_cancel_a_fresh_acquire(world: World) -> None:
    session = world.delegate("a")
    task_id = await world.submit(max_attempts=2)
    # The delegate lists a task it does not hold (say, from before a lost lease) ...
    assert (await beat(world, session, [task_id])).cancel == [task_id]
    # ... then wins it for real: the old flag must not stop the new attempt.
    await world.tasks.acquire(session, task_id)
    ack = world.hub.on_heartbeat(session, Heartbeat(seq=3, running=[task_id], free_slots=1))
    assert ack.cancel == []


async def test_a_late_result_and_log_of_a_lost_last_attempt_are_refused(world: World) -> None:
    session = world.delegate("a")
    task_id = await world.submit()
    await world.tasks.acquire(session, task_id)
    world.clock.now += TIMINGS.lost_after + 1
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.FAILED
    with pytest.raises(Conflicting):
        await world.tasks.record_result(session, task_id, TaskResult(attempt=1, status="succeeded"))
    line = LogLine(seq=0, stream="stdout", ts=0.0, text="late")
    with pytest.raises(Conflicting):
        await world.tasks.append_logs(session, task_id, LogBatch(attempt=1, lines=[line]))
    assert await world.store.get_logs(task_id, after=None, limit=10) == []


@pytest.mark.parametrize(
    ("submitted", "change"),
    [
        ({"selectors": ["gpu"]}, None),
        ({"payload": {"type": "http", "url": "https://example.com"}}, None),
        ({}, "draining"),
        ({}, "scoped"),
    ],
    ids=["selectors", "task type", "draining", "scope"],
)
async def test_an_ineligible_acquire_gets_the_answer_for_a_missing_task(
    world: World, submitted: dict[str, object], change: str | None
) -> None:
    req = {"payload": {"type": "shell", "script": "true"}, **submitted}
    task, _ = await world.tasks.submit(TaskSubmit.model_validate(req))
    session = world.delegate("d1")
    if change == "draining":
        session.draining = True
    elif change == "scoped":
        session.scope = DelegateScope(env_types=frozenset({"non_production"}))
    with pytest.raises(DomainError) as refused:
        await world.tasks.acquire(session, task.id)
    with pytest.raises(DomainError) as missing:
        await world.tasks.acquire(session, "task_nope")
    assert type(refused.value) is type(missing.value)
    assert refused.value.code == missing.value.code
    assert str(refused.value) == str(missing.value).replace("task_nope", task.id)
    assert await world.state(task.id) is TaskState.QUEUED
    assert world.dispatcher.pick_for(session) is None
