"""Task reads: log reads take turns (a page is counted until it has been written out), and a
task's attempts name their own delegates."""

from __future__ import annotations

import pytest

from manager.errors import Unavailable
from manager.records import AttemptRecord
from manager.store.base import Store
from manager.tasks.reads import TaskReads
from shared.protocol import TaskState
from tests.manager.store.test_store import WINDOW, delegate, task


async def test_a_reader_past_the_turns_is_told_to_come_back_and_a_turn_frees(
    store: Store,
) -> None:
    reads = TaskReads(store, log_reads_at_once=1, log_read_wait=0.01)
    async with reads.log_page("task_1", after=None, limit=10):
        # The one turn is held while the first page is being written out.
        with pytest.raises(Unavailable) as refused:
            async with reads.log_page("task_1", after=None, limit=10):
                pass
        assert refused.value.code == "busy"
    async with reads.log_page("task_1", after=None, limit=10) as lines:
        assert lines == []


async def test_attempts_name_their_own_delegates_and_not_the_rest_of_the_fleet(
    store: Store,
) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    for i in range(1, 4):
        await store.upsert_delegate(delegate(f"dlg_{i}", f"pk{i}" * 11, name=f"build-0{i}"))
    for attempt, dlg in ((1, "dlg_2"), (2, "dlg_gone")):
        running = await store.update_task(
            "task_1",
            expect_state=TaskState.QUEUED,
            expect_attempt=attempt - 1,
            changes={"state": TaskState.RUNNING, "attempt": attempt, "delegate_id": dlg},
            start_attempt=AttemptRecord("task_1", attempt, dlg, 1_000.0 + attempt),
        )
        assert running is not None
        if attempt == 1:
            back = await store.update_task(
                "task_1",
                expect_state=TaskState.RUNNING,
                expect_attempt=1,
                changes={"state": TaskState.QUEUED, "delegate_id": None},
                end_attempt_status="lost",
            )
            assert back is not None
    attempts, names = await TaskReads(store).attempts("task_1")
    assert [(a.attempt, a.delegate_id) for a in attempts] == [(1, "dlg_2"), (2, "dlg_gone")]
    # A delegate removed since has no name; the others of the fleet are not in the answer.
    assert names == {"dlg_2": "build-02"}


async def test_a_task_never_run_names_no_delegate(store: Store) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    await store.upsert_delegate(delegate())
    assert await TaskReads(store).attempts("task_1") == ([], {})
