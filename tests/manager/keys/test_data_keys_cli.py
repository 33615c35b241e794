"""``tether-manager keys rotate`` re-wraps the data keys of sealed task data, run as a real
process: the sealed rows are byte for byte what they were, and read back after it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from manager.keys.data_keys import DataKeys
from manager.keys.masterkey import MasterKey
from manager.records import AttemptRecord, LogRecord, TaskRecord
from manager.store.sqlite import SqliteStore
from manager.tasks.sealing import sealed_tasks
from shared.protocol import TaskState
from tests.manager.keys.test_keys_cli import manager

PAYLOAD = {"type": "shell", "script": "echo rotated"}
LINE = LogRecord(1, 0, "stdout", 1.0, "a line sealed before the rotation")


def rows(db: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        tasks = conn.execute("SELECT payload, outputs FROM tasks ORDER BY id").fetchall()
        logs = conn.execute("SELECT text, data FROM task_logs ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [*tasks, *logs]


async def test_rotate_rewraps_the_data_keys_and_leaves_the_sealed_rows_alone(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    db = data_dir / "tether.db"
    store = SqliteStore(db)
    await store.open()
    sealed = sealed_tasks(store, DataKeys(store, MasterKey.load_or_create(data_dir / "master.key")))
    record = TaskRecord(
        id="task_1",
        type="shell",
        state=TaskState.QUEUED,
        payload=PAYLOAD,
        selectors=(),
        timeout_s=60.0,
        queue_timeout_s=60.0,
        max_attempts=1,
        created_at=1.0,
    )
    await sealed.insert_task(record, idempotency_window=60.0)
    await sealed.update_task(
        "task_1",
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes={"state": TaskState.RUNNING, "attempt": 1, "delegate_id": "dlg_1"},
        start_attempt=AttemptRecord("task_1", 1, "dlg_1", 1.0),
    )
    assert await sealed.append_logs("task_1", 1, "dlg_1", [LINE]) == 1
    await store.close()
    before = rows(db)

    res = await manager("keys", "rotate", "--data-dir", str(data_dir))

    assert res.code == 0, res.err
    assert "Data keys under k2: 1 re-wrapped, 0 already current, 0 failed" in res.out
    assert rows(db) == before
    store = SqliteStore(db)
    await store.open()
    try:
        ((_, wrapped),) = await store.data_keys_after("", 10)
        assert MasterKey.wrapped_key_id(wrapped) == "k2"
        fresh = sealed_tasks(store, DataKeys(store, MasterKey.load(data_dir / "master.key")))
        got = await fresh.get_task("task_1")
        assert got is not None
        assert got.payload == PAYLOAD
        assert await fresh.get_logs("task_1", after=None, limit=10) == [LINE]
    finally:
        await store.close()
