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
from manager.tasks.events import TaskEvents
from manager.tasks.handout import Handout
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
    def __init__(
        self, store: SqliteStore, clock: Clock, tmp_path: Path, wall: Clock | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        wall = wall or clock
        self.hub = Hub(
            lost_after=TIMINGS.lost_after,
            clock=clock,
            wall=wall,
            heartbeat_interval=TIMINGS.heartbeat_interval,
            tick=TIMINGS.sweep_interval,
        )
        self.handout = Handout(
            self.hub, ack_within=TIMINGS.lost_after, tick=TIMINGS.sweep_interval, clock=clock
        )
        self.events = TaskEvents()
        self.tasks = TaskService(
            store=store,
            hub=self.hub,
            handout=self.handout,
            events=self.events,
            master_key=MasterKey.load_or_create(tmp_path / "master.key"),
            timings=TIMINGS,
            clock=clock,
            wall=wall,
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
    clock = Clock()
    # One fake clock for all: the service's durations, its timestamps, the store's leases.
    store = SqliteStore(tmp_path / "t.db", lease_now=clock)
    await store.open()
    yield World(store, clock, tmp_path)
    await store.close()


async def test_a_task_nobody_takes_expires_after_its_queue_timeout(world: World) -> None:
    task_id = await world.submit(queue_timeout_s=60)
    world.clock.now += 59
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.QUEUED
    world.clock.now += 2
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.EXPIRED
    assert task_id not in world.handout.assigner.queue()


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
    assert restarted.handout.assigner.queue() == [queued_id]
    assert restarted.hub.leases.holder(running_id) == session.id
    # The restarted manager's loop turns (it judges only on its own ticks).
    await sweeping(restarted, 61)
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


# -- the manager's own bad moments: judged on the delegates' evidence ------------------------


async def running_on(world: World, name: str, **over: object) -> tuple[Session, str]:
    """A task submitted with ``over`` and acquired by delegate ``name``."""
    session = world.delegate(name)
    task_id = await world.submit(**over)
    await world.tasks.acquire(session, task_id)
    return session, task_id


async def sweeping(world: World, seconds: float) -> None:
    """The manager's sweep loop turning normally for ``seconds``: a tick, the renewal when it
    is due, the sweep (as manager.server.app's loop does)."""
    end = world.clock.now + seconds
    while world.clock.now < end:
        world.clock.now += TIMINGS.sweep_interval
        world.hub.liveness.tick(world.clock.now)
        if world.hub.renewals.due(world.clock.now):
            await world.tasks.renew_leases()
            world.hub.renewals.done(world.clock.now)
        await world.tasks.sweep()


async def test_a_stall_longer_than_the_lease_changes_nothing_for_a_delegate_that_kept_on(
    world: World,
) -> None:
    session, task_id = await running_on(world, "a", max_attempts=2)
    await beat(world, session, [task_id])
    await sweeping(world, 5)
    # Frozen for a minute: no tick, no heartbeat counted, the stored lease runs out.
    world.clock.now += 60
    assert [t.id for t in await world.store.expired_leases()] == [task_id]
    world.hub.liveness.tick(world.clock.now)
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.RUNNING
    # The heartbeats the delegate sent meanwhile are counted as the loop turns again.
    for seq in range(10):
        world.hub.on_heartbeat(session, Heartbeat(seq=seq, running=[task_id], free_slots=3))
        await sweeping(world, TIMINGS.heartbeat_interval)
    assert await world.state(task_id) is TaskState.RUNNING
    assert [a.status for a in await world.store.attempts(task_id)] == [None]


async def test_after_a_stall_a_delegate_that_died_during_it_loses_its_task(world: World) -> None:
    session, task_id = await running_on(world, "a")
    await beat(world, session, [task_id])
    await sweeping(world, 5)
    world.clock.now += 60
    world.hub.liveness.tick(world.clock.now)
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.RUNNING
    await sweeping(world, world.hub.liveness.grace + 2 * TIMINGS.sweep_interval)
    task = await world.store.get_task(task_id)
    assert task is not None
    assert (task.state, task.error) == (TaskState.FAILED, "delegate_lost")


async def test_a_lease_the_store_lost_holds_while_the_holders_heartbeats_list_the_task(
    world: World,
) -> None:
    # The renewal could not be written (a full disk, the database away): the stored lease
    # ran out, but the delegate's heartbeat here still lists the task.
    session, task_id = await running_on(world, "a")
    world.clock.now += TIMINGS.lost_after + 1
    world.hub.on_heartbeat(session, Heartbeat(seq=1, running=[task_id], free_slots=3))
    assert [t.id for t in await world.store.expired_leases()] == [task_id]
    await world.tasks.sweep()
    assert await world.state(task_id) is TaskState.RUNNING
    assert world.hub.renewals.due(world.clock.now)  # written at the next pass


async def test_a_forward_jump_of_the_wall_clock_expires_nothing(tmp_path: Path) -> None:
    steady, wall = Clock(), Clock()
    store = SqliteStore(tmp_path / "t.db", lease_now=steady)
    await store.open()
    try:
        world = World(store, steady, tmp_path, wall=wall)
        session = world.delegate("a")
        queued_id = await world.submit(queue_timeout_s=60)
        running_id = await world.submit()
        await world.tasks.acquire(session, running_id)
        await beat(world, session, [running_id])
        wall.now += 3_600.0
        await sweeping(world, 5)
        assert await world.state(queued_id) is TaskState.QUEUED
        assert await world.state(running_id) is TaskState.RUNNING
        # Durations still run on the steady clock.
        await sweeping(world, 60)
        assert await world.state(queued_id) is TaskState.EXPIRED
    finally:
        await store.close()


async def test_a_result_waiting_in_the_spool_keeps_its_lease(world: World) -> None:
    session, task_id = await running_on(world, "a")
    await beat(world, session, [task_id])
    # The task ended while the manager could not take its result: it waits in the spool,
    # and the delegate lists it as such, for far longer than a lease.
    for seq in range(10):
        world.hub.on_heartbeat(
            session, Heartbeat(seq=seq, running=[], spooled=[task_id], free_slots=4)
        )
        await sweeping(world, TIMINGS.heartbeat_interval)
    assert await world.state(task_id) is TaskState.RUNNING
    result = TaskResult(attempt=1, status="succeeded")
    assert (await world.tasks.record_result(session, task_id, result)).recorded


async def test_a_frozen_delegate_loses_its_lease_lost_after_its_last_heartbeat(
    world: World,
) -> None:
    session, task_id = await running_on(world, "a", max_attempts=2)
    for seq in range(3):
        world.hub.on_heartbeat(session, Heartbeat(seq=seq, running=[task_id], free_slots=3))
        await sweeping(world, TIMINGS.heartbeat_interval)
    last_heartbeat = world.clock.now - TIMINGS.heartbeat_interval
    # Frozen: no more heartbeats; the sweep goes on every second, and the one that finds
    # the lease ran out comes within lost_after of the last heartbeat, never later.
    while await world.state(task_id) is TaskState.RUNNING:
        assert world.clock.now - last_heartbeat < TIMINGS.lost_after
        await sweeping(world, TIMINGS.sweep_interval)
    assert await world.state(task_id) is TaskState.QUEUED
    assert world.clock.now - last_heartbeat <= TIMINGS.lost_after
    assert world.clock.now - last_heartbeat > TIMINGS.lost_after - 2 * TIMINGS.sweep_interval


async def test_a_delegate_that_calls_but_sends_no_heartbeat_loses_its_lease_in_time(
    world: World,
) -> None:
    """Its heartbeat loop is stuck while other calls (log batches, polls) go on every
    second: the session lives, the lease does not, and the renewals that keep coming every
    interval never move it past a lease after the last heartbeat."""
    session, task_id = await running_on(world, "a", max_attempts=2)
    world.hub.on_heartbeat(session, Heartbeat(seq=1, running=[task_id], free_slots=3))
    last_heartbeat = world.clock.now
    while await world.state(task_id) is TaskState.RUNNING:
        assert world.clock.now - last_heartbeat < TIMINGS.lost_after
        world.hub.seen(session)
        await sweeping(world, TIMINGS.sweep_interval)
    assert await world.state(task_id) is TaskState.QUEUED
    assert world.clock.now - last_heartbeat <= TIMINGS.lost_after
    assert world.hub.status(session.id) != "disconnected"


# -- hand-out is idempotent for its holder -----------------------------------------------------


async def test_an_acquire_asked_again_with_its_key_hands_out_the_same_attempt(
    world: World,
) -> None:
    holder = world.delegate("a")
    task_id = await world.submit(max_attempts=3)
    first = await world.tasks.acquire(holder, task_id, "key-00000001")
    # The answer was lost; the delegate asks again with the same key.
    again = await world.tasks.acquire(holder, task_id, "key-00000001")
    assert (again.attempt, again.task.id) == (first.attempt, task_id) == (1, task_id)
    assert [a.attempt for a in await world.store.attempts(task_id)] == [1]
    # Anyone else, or the holder with another key (it restarted), is told it is taken.
    for session, key in ((world.delegate("b"), "key-00000001"), (holder, "key-00000002")):
        with pytest.raises(Conflicting) as taken:
            await world.tasks.acquire(session, task_id, key)
        assert taken.value.code == "taken"


async def test_an_acquire_asked_again_is_answered_at_full_capacity(world: World) -> None:
    holder = world.delegate("a")
    ids = [await world.submit() for _ in range(4)]
    for n, task_id in enumerate(ids):
        await world.tasks.acquire(holder, task_id, f"key-0000000{n}")
    again = await world.tasks.acquire(holder, ids[-1], "key-00000003")
    assert again.attempt == 1


async def test_a_delegate_frozen_right_after_an_acquire_loses_it_lost_after_its_last_beat(
    world: World,
) -> None:
    session = world.delegate("a")
    world.hub.on_heartbeat(session, Heartbeat(seq=1, running=[], free_slots=4))
    last_heartbeat = world.clock.now
    await sweeping(world, TIMINGS.heartbeat_interval - 1)
    task_id = await world.submit(max_attempts=2)
    await world.tasks.acquire(session, task_id)
    # Frozen before its next heartbeat could list the task.
    while await world.state(task_id) is TaskState.RUNNING:
        assert world.clock.now - last_heartbeat < TIMINGS.lost_after
        await sweeping(world, TIMINGS.sweep_interval)
    assert world.clock.now - last_heartbeat <= TIMINGS.lost_after


# -- what wakes a task list (the console's live rows): a task created, started, finished or
# asked to cancel, here or on another replica; not its log lines.


async def test_the_list_wakes_on_state_changes_and_not_on_log_lines(world: World) -> None:
    session = world.delegate("a")
    woken = world.events.listen_listed()
    task_id = await world.submit()
    assert woken.is_set()  # created
    woken = world.events.listen_listed()
    await world.tasks.acquire(session, task_id)
    assert woken.is_set()  # running
    woken = world.events.listen_listed()
    line = LogLine(seq=0, stream="stdout", ts=world.clock(), text="hello")
    await world.tasks.append_logs(session, task_id, LogBatch(attempt=1, lines=[line]))
    assert not woken.is_set()  # a log line is not the list's business
    await world.tasks.record_result(session, task_id, TaskResult(attempt=1, status="succeeded"))
    assert woken.is_set()  # finished


async def test_another_replicas_task_changes_wake_the_list_too(world: World) -> None:
    task_id = await world.submit()
    for kind, wakes in (
        ("changed", False),
        ("queued", True),
        ("dequeued", True),
        ("cancel", True),
        ("finished", True),
    ):
        woken = world.events.listen_listed()
        await world.tasks.on_remote(kind, task_id)  # type: ignore[arg-type]
        assert woken.is_set() is wakes, kind
