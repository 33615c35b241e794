"""A claim that skips a row another transaction holds (``update_task(skip_locked=True)``):
on PostgreSQL it answers None at once while another replica's claim holds the row, instead
of waiting for that claim to end; once the row is free it claims as any compare-and-set.
On SQLite (one writer, no row locks) it is the plain compare-and-set. Judged by who holds
the lock, never by time: a claim that waited would not return while the lock is held."""

from __future__ import annotations

import asyncio

import asyncpg

from manager.records import AttemptRecord, TaskRecord
from manager.store.base import Store
from shared.protocol import TaskState
from tests.manager.conftest import PG_URL, StoreMaker

# Far beyond a claim that does not wait; a claim that waited on the lock would hit it.
NO_WAIT_S = 30.0
CLAIM = {"state": TaskState.RUNNING, "attempt": 1, "delegate_id": "dlg_1", "started_at": 5.0}


def queued(task_id: str = "task_1") -> TaskRecord:
    return TaskRecord(
        id=task_id,
        type="shell",
        state=TaskState.QUEUED,
        payload={"type": "shell", "script": "true"},
        selectors=(),
        timeout_s=600.0,
        queue_timeout_s=300.0,
        max_attempts=1,
        created_at=1_000.0,
    )


async def claim(store: Store, task_id: str = "task_1") -> TaskRecord | None:
    return await store.update_task(
        task_id,
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes=CLAIM,
        start_attempt=AttemptRecord(task_id, 1, "dlg_1", 5.0),
        skip_locked=True,
    )


async def test_a_claim_skips_a_row_another_transaction_holds_and_takes_it_once_free(
    pg: StoreMaker,
) -> None:
    store = pg.postgres()
    await store.open()
    other = await asyncpg.connect(PG_URL, server_settings={"search_path": pg.schema})
    try:
        await store.insert_task(queued(), idempotency_window=60.0)
        holding = other.transaction()
        await holding.start()
        # Another replica's claim in flight: it holds the row until it commits.
        await other.execute("SELECT id FROM tasks WHERE id = 'task_1' FOR UPDATE")
        async with asyncio.timeout(NO_WAIT_S):
            assert await claim(store) is None
        await holding.rollback()  # that claim did not go through: the row is free
        claimed = await claim(store)
        assert claimed is not None
        assert (claimed.state, claimed.attempt, claimed.delegate_id) == (
            TaskState.RUNNING,
            1,
            "dlg_1",
        )
        assert await claim(store) is None  # a compare-and-set still: claimed once
    finally:
        await other.close()
        await store.close()


async def test_a_claim_is_a_plain_compare_and_set_on_either_store(store: Store) -> None:
    await store.insert_task(queued(), idempotency_window=60.0)
    claimed = await claim(store)
    assert claimed is not None
    assert claimed.attempt == 1
    assert await claim(store) is None
    assert await claim(store, "task_none") is None
