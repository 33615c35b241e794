"""A task submitted while a delegate's stream has a free slot is stored claimed for it, in
the insert's own transaction, and the assignment goes out once that commits: one commit on
its way instead of two. What may happen while the insert is written (the stream lost, the
insert failing, an earlier task of the same idempotency key) leaves nothing half done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from manager.core.eligibility import DelegateScope, EnvFacts
from manager.core.taskstate import WITHDRAWN
from manager.records import TaskRecord
from manager.schemas.grants import Target
from manager.schemas.tasks import TaskSubmit
from manager.store.base import StoreError
from shared.protocol import TaskState
from tests.manager.tasks.test_handout import TIMINGS, World, world

__all__ = ["world"]  # the fixture, from the hand-out's tests


Insert = Callable[..., Awaitable[tuple[TaskRecord, bool]]]


async def _submit_failing(world: World, monkeypatch: pytest.MonkeyPatch, insert: Insert) -> None:
    """A submit whose insert is ``insert``: the caller sees its StoreError."""
    monkeypatch.setattr(world.tasks._store, "insert_task", insert)
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}})
    with pytest.raises(StoreError):
        await world.tasks.submit(req)
    await world.settle()


async def test_a_task_beside_a_free_stream_is_stored_claimed_in_one_commit(world: World) -> None:
    a = world.connect("a")
    before = world.store.commits
    task_id = await world.submit()
    assert world.store.commits - before == 1  # the insert, the claim in it
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)
    assert [(x.attempt, x.delegate_id, x.status) for x in await world.store.attempts(task_id)] == [
        (1, a.id, None)
    ]
    assert world.streams["a"].assignments() == [(task_id, 1)]
    # Its lease runs from the insert, as a claim's: long enough to reach the ack.
    stored = await world.store.get_task(task_id)
    assert stored is not None
    assert stored.lease_until is not None
    assert stored.lease_until >= world.clock.now + TIMINGS.lost_after


async def test_with_no_free_slot_the_task_is_stored_queued_and_claimed_later(
    world: World,
) -> None:
    task_id = await world.submit()
    assert await world.task(task_id) == (TaskState.QUEUED, 0, None)
    assert await world.store.attempts(task_id) == []
    a = world.connect("a")
    await world.settle()
    assert world.streams["a"].assignments() == [(task_id, 1)]
    assert await world.task(task_id) == (TaskState.RUNNING, 1, a.id)


async def test_a_session_ended_while_the_insert_is_written_gets_the_claim_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = world.connect("a")
    real_insert = world.tasks._store.insert_task
    real_withdraw = world.tasks.withdraw
    order: list[str] = []

    async def drop_then_insert(task: TaskRecord, **kw: Any) -> tuple[TaskRecord, bool]:
        assert task.state is TaskState.RUNNING  # chosen before the insert
        # Its Requeue is decided now, before the row exists: it waits for the insert.
        world.hub.drop(a.id, code=4005, reason="lost")  # type: ignore[arg-type]
        for _ in range(10):  # a slow insert: what is not held back starts meanwhile
            await asyncio.sleep(0)
        got = await real_insert(task, **kw)
        order.append("inserted")
        return got

    async def withdraw(task_id: str, delegate_id: str, attempt: int) -> None:
        order.append("withdraw")
        await real_withdraw(task_id, delegate_id, attempt)

    monkeypatch.setattr(world.tasks._store, "insert_task", drop_then_insert)
    monkeypatch.setattr(world.tasks, "withdraw", withdraw)
    task_id = await world.submit()
    assert order == ["inserted", "withdraw"]
    assert world.streams["a"].assignments() == []
    # Withdrawn once the row was in: queued again, the attempt not counted.
    assert await world.task(task_id) == (TaskState.QUEUED, 1, None)
    attempts = await world.store.attempts(task_id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN)]
    b = world.connect("b")
    await world.settle()
    assert world.streams["b"].assignments() == [(task_id, 2)]
    assert await world.task(task_id) == (TaskState.RUNNING, 2, b.id)


async def test_a_stream_lost_while_the_insert_is_written_is_pushed_the_claim_when_back(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = world.connect("a", key="process-one")
    real_insert = world.tasks._store.insert_task

    async def lose_then_insert(task: TaskRecord, **kw: Any) -> tuple[TaskRecord, bool]:
        world.lose_stream(a)
        return await real_insert(task, **kw)

    monkeypatch.setattr(world.tasks._store, "insert_task", lose_then_insert)
    task_id = await world.submit()
    assert world.streams["a"].assignments() == []  # no stream to send it on
    world.connect("a", key="process-one")
    await world.settle()
    await world.held_once("a", a, task_id)  # the same process back


async def test_an_insert_that_fails_leaves_no_seat_taken_and_nothing_to_hand_out(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = world.connect("a", capacity=1)
    real_insert = world.tasks._store.insert_task

    async def failing(task: TaskRecord, **kw: Any) -> tuple[TaskRecord, bool]:
        raise StoreError("sqlite: disk I/O error")

    await _submit_failing(world, monkeypatch, failing)
    assert world.handout.assigner.load(a.id) == 0
    assert world.streams["a"].assignments() == []
    # The one slot is free for the next task.
    monkeypatch.setattr(world.tasks._store, "insert_task", real_insert)
    task_id = await world.submit()
    assert world.streams["a"].assignments() == [(task_id, 1)]


async def test_an_idempotent_repeat_is_answered_with_the_first_task_and_claims_nothing(
    world: World,
) -> None:
    a = world.connect("a")
    first = await world.submit(idempotency_key="deploy-42")
    again = await world.submit(idempotency_key="deploy-42")
    assert again == first
    assert world.streams["a"].assignments() == [(first, 1)]
    assert world.handout.assigner.load(a.id) == 1
    assert len(await world.store.attempts(first)) == 1


async def test_the_submission_event_tells_the_task_as_submitted(world: World) -> None:
    """What was asked for: queued, as without a claim in the insert (the submit's answer is
    made from the same record)."""
    world.connect("a")
    told: list[TaskRecord] = []

    def audit(task: TaskRecord) -> None:
        told.append(task)

    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}})
    stored, created = await world.tasks.submit(req, audit=audit)
    await world.settle()
    assert created
    assert stored.state is TaskState.RUNNING
    assert [(t.id, t.state, t.attempt, t.delegate_id) for t in told] == [
        (stored.id, TaskState.QUEUED, 0, None)
    ]


async def test_a_submit_cancelled_while_its_assignment_is_built_opens_the_gate(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled (a handler at shutdown, a caller's timeout) after its row is in: the gate
    opens, and the claim nobody was sent is taken back, uncounted (found by review: the
    gate stayed shut, and the session's end never withdrew the claim)."""
    a = world.connect("a")
    building = asyncio.Event()
    real = world.tasks._assignment

    async def slow(session: Any, task: TaskRecord) -> Any:
        building.set()
        await asyncio.Event().wait()  # until cancelled

    monkeypatch.setattr(world.tasks, "_assignment", slow)
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "true"}})
    submitting = asyncio.ensure_future(world.tasks.submit(req))
    await building.wait()
    submitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitting
    monkeypatch.setattr(world.tasks, "_assignment", real)
    async with asyncio.timeout(30):  # a gate left shut hangs here
        await world.settle()
    (task,) = world.tasks.open_tasks()
    assert await world.task(task.id) == (TaskState.RUNNING, 2, a.id)  # handed out again
    attempts = await world.store.attempts(task.id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN), (2, None)]
    assert world.streams["a"].assignments() == [(task.id, 2)]


async def test_an_insert_committed_but_answered_with_an_error_does_not_burn_the_attempt(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's connection dropped after the commit (or its command timeout ran out):
    the caller sees the error, the row is in, claimed. Forgotten, the claim sat until its
    lease ran out and a task of one attempt failed without running (found by review); it is
    withdrawn instead and handed out again."""
    world.connect("a")
    real_insert = world.tasks._store.insert_task

    async def answer_lost(task: TaskRecord, **kw: Any) -> tuple[TaskRecord, bool]:
        await real_insert(task, **kw)
        raise StoreError("postgres: connection was closed in the middle of operation")

    await _submit_failing(world, monkeypatch, answer_lost)
    (row,) = await world.store.tasks_in_states([TaskState.QUEUED, TaskState.RUNNING])
    assert world.streams["a"].assignments() == [(row.id, 2)]
    attempts = await world.store.attempts(row.id)
    assert [(x.attempt, x.status) for x in attempts] == [(1, WITHDRAWN), (2, None)]


async def test_a_reconcile_during_the_insert_does_not_forget_the_queued_task(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No free slot: the task is in the hand-out's queue before its row exists, and a
    reconcile whose read is answered meanwhile drops it; the insert's answer puts it back
    (found by review: a slot that freed later was not given it)."""
    a = world.connect("a", capacity=1)
    first = await world.submit()
    world.handout.ack(a, first, 1)
    real_insert = world.tasks._store.insert_task

    async def reconcile_then_insert(task: TaskRecord, **kw: Any) -> tuple[TaskRecord, bool]:
        await world.tasks.reconcile()  # its read sees no row of the new task yet
        return await real_insert(task, **kw)

    monkeypatch.setattr(world.tasks._store, "insert_task", reconcile_then_insert)
    second = await world.submit()
    monkeypatch.undo()
    await world.result(a, first, 1)  # the one slot frees
    assert world.streams["a"].assignments() == [(first, 1), (second, 1)]


async def test_a_task_is_claimed_at_insert_only_by_a_delegate_eligible_for_it(
    world: World,
) -> None:
    """The choice made before the insert is the hand-out's own (refusal_of, on the
    environment index as it is then): a delegate of the stream with free slots but outside
    a dedicated environment gets nothing, neither the claim nor the frame."""
    world.handout._envs = world.tasks.envs.facts  # as the app wires them
    world.tasks.envs.facts["env_qa"] = EnvFacts("app_1", "non_production", dedicated=True)
    world.connect("typed", scope=DelegateScope(env_types=frozenset({"non_production"})))
    req = TaskSubmit.model_validate({"payload": {"type": "shell", "script": "echo qa"}})
    target = Target("app_1", "env_qa", "non_production")
    task, _ = await world.tasks.submit(req, target=target)
    await world.settle()
    assert world.streams["typed"].assignments() == []
    assert await world.task(task.id) == (TaskState.QUEUED, 0, None)
    assert await world.store.attempts(task.id) == []
    named = world.connect("named", scope=DelegateScope(envs=frozenset({"env_qa"})))
    second, _ = await world.tasks.submit(req, target=target)
    await world.settle()
    # The one it names takes the queued task and is claimed the next one at its insert.
    assert sorted(world.streams["named"].assignments()) == sorted([(task.id, 1), (second.id, 1)])
    assert await world.task(second.id) == (TaskState.RUNNING, 1, named.id)
