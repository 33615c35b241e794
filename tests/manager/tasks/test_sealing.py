"""Tasks' data sealed at rest (manager.tasks.sealing), on both stores: what is stored is
sealed, what is read is the original, rows written before sealing still read, rows copied
between tasks or positions do not open, and filtering by the clear columns still works."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from manager.keys.data_keys import DataKeys
from manager.keys.masterkey import MasterKey
from manager.records import AttemptRecord, LogRecord, TaskFilter, TaskRecord
from manager.store.base import BadData, Conflict, Store, StoreError
from manager.tasks.sealing import SEALED, UNREADABLE_LINE, sealed_tasks
from shared.logbytes import shown
from shared.protocol import TaskState
from tests.manager.conftest import StoreMaker

WINDOW = 3600.0
MARK = "zq-marker-4711"
PAYLOAD = {"type": "shell", "script": f"echo {MARK}", "env": {"MODE": f"{MARK}-env"}}
RAW = b"\xff" + MARK.encode()
DEPLOYMENT = {"service": "web", "environment": "prod", "artifact": f"{MARK}.tgz", "version": "7"}


def task(task_id: str, **kw: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "type": "shell",
        "state": TaskState.QUEUED,
        "payload": PAYLOAD,
        "selectors": ("linux",),
        "timeout_s": 600.0,
        "queue_timeout_s": 300.0,
        "max_attempts": 2,
        "app_id": "app_1",
        "env_id": "env_1",
        "deployment": DEPLOYMENT,
    }
    fields.update(kw)
    return TaskRecord(id=task_id, created_at=1_000.0, **fields)


@pytest.fixture
async def sealed(store: Store, tmp_path: Path) -> Store:
    return sealed_tasks(store, DataKeys(store, MasterKey.load_or_create(tmp_path / "master.key")))


async def acquire(s: Store, task_id: str) -> None:
    updated = await s.update_task(
        task_id,
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes={"state": TaskState.RUNNING, "attempt": 1, "delegate_id": "dlg_1"},
        start_attempt=AttemptRecord(task_id, 1, "dlg_1", 1_010.0),
    )
    assert updated is not None


async def execute(maker: StoreMaker, sql: str) -> None:
    """Raw SQL against the store's database, as someone with the database would."""
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()
    else:
        await maker.fetch(sql)


async def test_a_task_is_stored_sealed_and_reads_as_submitted(store: Store, sealed: Store) -> None:
    seen: list[TaskRecord] = []

    def audit(t: TaskRecord) -> None:
        seen.append(t)

    stored, created = await sealed.insert_task(
        task("task_1"), idempotency_window=WINDOW, audit=audit
    )
    assert created
    assert (stored.payload, stored.deployment) == (PAYLOAD, DEPLOYMENT)
    assert [t.payload for t in seen] == [PAYLOAD]  # the audit is told what was submitted
    await acquire(sealed, "task_1")
    done = await sealed.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=1,
        changes={"state": TaskState.SUCCEEDED, "outputs": {"OUT": f"{MARK}-out"}},
    )
    assert done is not None
    assert done.outputs == {"OUT": f"{MARK}-out"}

    raw = await store.get_task("task_1")
    assert raw is not None
    assert MARK not in repr(raw)
    assert set(raw.payload) == {SEALED}
    assert set(raw.outputs) == {SEALED}
    # What deployments are listed and filtered by stays clear.
    assert raw.deployment is not None
    assert (raw.deployment["service"], raw.deployment["environment"]) == ("web", "prod")
    got = await sealed.get_task("task_1")
    assert got is not None
    assert (got.payload, got.outputs, got.deployment) == (
        PAYLOAD,
        {"OUT": f"{MARK}-out"},
        DEPLOYMENT,
    )


async def test_listing_and_filtering_by_the_clear_columns_still_work(sealed: Store) -> None:
    await sealed.insert_task(task("task_1"), idempotency_window=WINDOW)
    await sealed.insert_task(
        task("task_2", app_id="app_2", deployment=None), idempotency_window=WINDOW
    )
    for flt, ids in (
        (TaskFilter(app_id="app_1"), ["task_1"]),
        (TaskFilter(state=TaskState.QUEUED), ["task_2", "task_1"]),
        (TaskFilter(service="web"), ["task_1"]),
        (TaskFilter(deployments_only=True), ["task_1"]),
    ):
        found = await sealed.list_tasks(flt)
        assert [t.id for t in found] == ids
        assert all(t.payload == PAYLOAD for t in found)


async def test_log_lines_are_stored_sealed_and_read_back_text_and_bytes(
    store: Store, sealed: Store
) -> None:
    await sealed.insert_task(task("task_1"), idempotency_window=WINDOW)
    await acquire(sealed, "task_1")
    lines = [
        LogRecord(1, 0, "stdout", 1.0, f"{MARK} one"),
        LogRecord(1, 1, "stderr", 2.0, shown(RAW), RAW),
        LogRecord(1, 2, "stdout", 3.0, ""),
    ]
    assert await sealed.append_logs("task_1", 1, "dlg_1", lines) == 3

    raw = await store.get_logs("task_1", after=None, limit=10)
    assert all(r.text == "" and r.data is not None for r in raw)
    assert not any(MARK.encode() in (r.data or b"") for r in raw)
    assert await sealed.get_logs("task_1", after=None, limit=10) == lines
    # Paging keeps its cursor.
    assert await sealed.get_logs("task_1", after=(1, 0), limit=1) == lines[1:2]


async def test_rows_written_before_sealing_read_as_they_are(store: Store, sealed: Store) -> None:
    await store.insert_task(task("task_old", outputs={"A": "b"}), idempotency_window=WINDOW)
    await acquire(store, "task_old")
    old_lines = [
        LogRecord(1, 0, "stdout", 1.0, "plain"),
        LogRecord(1, 1, "stdout", 2.0, shown(b"\xff"), b"\xff"),
    ]
    await store.append_logs("task_old", 1, "dlg_1", old_lines)

    got = await sealed.get_task("task_old")
    assert got is not None
    assert (got.payload, got.outputs) == (PAYLOAD, {"A": "b"})
    assert await sealed.get_logs("task_old", after=None, limit=10) == old_lines
    # Lines added now to that old task are sealed (its key is made then), the old stay.
    new = LogRecord(1, 2, "stdout", 3.0, "later")
    assert await sealed.append_logs("task_old", 1, "dlg_1", [new]) == 1
    assert await sealed.get_logs("task_old", after=None, limit=10) == [*old_lines, new]
    # No key is made for a task that does not exist.
    assert await sealed.append_logs("task_none", 1, "dlg_1", [new]) == -1
    assert await store.data_keys_of(["task:task_none"]) == {}


async def test_rows_copied_between_tasks_or_positions_do_not_open(
    new_store: StoreMaker, store: Store, sealed: Store
) -> None:
    for task_id in ("task_a", "task_b"):
        await sealed.insert_task(task(task_id), idempotency_window=WINDOW)
        await acquire(sealed, task_id)
        lines = [LogRecord(1, s, "stdout", 1.0, f"{task_id} {s}") for s in range(2)]
        await sealed.append_logs(task_id, 1, "dlg_1", lines)
    # B's line 0 over A's line 0; A's line 1 moved to seq 5 of A.
    await execute(
        new_store,
        "UPDATE task_logs SET data = (SELECT data FROM task_logs"
        " WHERE task_id = 'task_b' AND seq = 0) WHERE task_id = 'task_a' AND seq = 0",
    )
    await execute(new_store, "UPDATE task_logs SET seq = 5 WHERE task_id = 'task_a' AND seq = 1")
    got = await sealed.get_logs("task_a", after=None, limit=10)
    assert [(ln.seq, ln.text) for ln in got] == [(0, UNREADABLE_LINE), (5, UNREADABLE_LINE)]
    assert [ln.text for ln in await sealed.get_logs("task_b", after=None, limit=10)] == [
        "task_b 0",
        "task_b 1",
    ]
    # B's script in A's row: A does not read, with a reason and no data.
    await execute(
        new_store,
        "UPDATE tasks SET payload = (SELECT payload FROM tasks WHERE id = 'task_b')"
        " WHERE id = 'task_a'",
    )
    with pytest.raises(StoreError, match="does not open") as err:
        await sealed.get_task("task_a")
    assert MARK not in str(err.value)


async def test_a_repeated_idempotent_submit_leaves_no_key_behind(
    store: Store, sealed: Store
) -> None:
    _, created = await sealed.insert_task(
        task("task_1", idempotency_key="k"), idempotency_window=WINDOW
    )
    again, created_again = await sealed.insert_task(
        task("task_2", idempotency_key="k"), idempotency_window=WINDOW
    )
    assert (created, created_again, again.id) == (True, False, "task_1")
    assert again.payload == PAYLOAD
    assert [owner for owner, _ in await store.data_keys_after("", 10)] == ["task:task_1"]


async def test_a_submission_stores_its_key_with_the_task_in_one_transaction(
    store: Store, sealed: Store, tmp_path: Path
) -> None:
    """The task's data key goes in the insert's own transaction: it is there, it opens the
    task for a process that never held it in memory, and on SQLite the two are one commit."""
    commits = getattr(store, "commits", None)
    await sealed.insert_task(task("task_1"), idempotency_window=WINDOW)
    if commits is not None:
        assert store.commits == commits + 1  # type: ignore[attr-defined]
    assert list(await store.data_keys_of(["task:task_1"])) == ["task:task_1"]
    fresh = sealed_tasks(store, DataKeys(store, MasterKey.load_or_create(tmp_path / "master.key")))
    got = await fresh.get_task("task_1")
    assert got is not None
    assert got.payload == PAYLOAD


async def test_a_refused_submission_leaves_no_key_behind(store: Store, sealed: Store) -> None:
    await sealed.insert_task(task("task_1"), idempotency_window=WINDOW)
    with pytest.raises(Conflict):  # the same id again: the insert is refused
        await sealed.insert_task(task("task_1"), idempotency_window=WINDOW)
    assert [owner for owner, _ in await store.data_keys_after("", 10)] == ["task:task_1"]
    got = await sealed.get_task("task_1")  # the refused insert's key did not displace its own
    assert got is not None
    assert got.payload == PAYLOAD
    with pytest.raises(BadData):
        await sealed.insert_task(task("task_2", max_attempts=2**70), idempotency_window=WINDOW)
    assert [owner for owner, _ in await store.data_keys_after("", 10)] == ["task:task_1"]
