"""A full volume on every backend: writes fail as DiskFull, the store's health says so (told
once when it starts and once when it ends), and the next write that goes through clears it.

SQLite is filled for real: ``PRAGMA max_page_count`` makes the database file unable to grow,
which SQLite reports with the same code as a full disk (SQLITE_FULL). A PostgreSQL server
cannot be filled here (other tests share it), so a trigger raises PostgreSQL's own
``disk_full`` error (SQLSTATE 53100) on the tasks table, which is what a full data
directory makes an insert raise.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from manager.store.base import DiskFull, Store
from manager.store.health import DISK_FULL
from manager.store.postgres import PostgresStore
from manager.store.sqlite import SqliteStore
from tests.manager.conftest import StoreMaker
from tests.manager.store.test_store import WINDOW, task

# Big enough that one more task needs a new page of the file.
SCRIPT = "x" * 20_000


async def _fill(store: Store, maker: StoreMaker) -> None:
    if isinstance(store, SqliteStore):
        # The file may not grow past the pages it has: the next insert that needs one fails.
        await store._run(lambda c: c.execute("PRAGMA max_page_count = 1").fetchall())
        return
    assert isinstance(store, PostgresStore)
    await maker.fetch(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'could not extend file: No space left on device'"
        " USING ERRCODE = 'disk_full'; END $$"
    )
    await maker.fetch("CREATE TRIGGER volume_full BEFORE INSERT ON tasks EXECUTE FUNCTION refuse()")


async def _free(store: Store, maker: StoreMaker) -> None:
    if isinstance(store, SqliteStore):
        await store._run(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
        return
    await maker.fetch("DROP TRIGGER volume_full ON tasks")


def _big(n: int) -> Any:
    return task(f"task_{n}", payload={"type": "shell", "script": SCRIPT})


async def test_a_full_volume_is_reported_once_and_clears_at_the_next_write(
    store: Store, new_store: StoreMaker
) -> None:
    await store.insert_task(_big(0), idempotency_window=WINDOW)
    assert store.health.problem is None
    await _fill(store, new_store)
    with structlog.testing.capture_logs() as logs:
        for n in range(1, 4):
            with pytest.raises(DiskFull):
                await store.insert_task(_big(n), idempotency_window=WINDOW)
        assert store.health.problem == DISK_FULL
        # Reads still answer, and do not count as a write that went through.
        assert (await store.get_task("task_0")) is not None
        assert store.health.problem == DISK_FULL
        await _free(store, new_store)
        await store.insert_task(_big(4), idempotency_window=WINDOW)
        assert store.health.problem is None
    said = [(e["log_level"], e["event"]) for e in logs]
    # Three refused writes, one line; one more when it ended.
    assert said == [
        ("error", "data volume full: writes are refused until space is freed"),
        ("warning", "data volume has room again: writes succeed"),
    ]
    assert logs[1]["writes_refused"] == 3
    # Nothing refused was half written.
    assert [await store.get_task(f"task_{n}") is not None for n in range(5)] == [
        True,
        False,
        False,
        False,
        True,
    ]
