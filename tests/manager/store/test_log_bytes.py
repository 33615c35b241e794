"""A task's output kept byte for byte on both stores, and what a store answers when it cannot
keep a value (bad data: a BadData, never "unavailable") or loses its connection (a
StoreError, never a driver's own exception).
"""

from __future__ import annotations

import sqlite3

import pytest

from manager.records import LogRecord
from manager.store import migrations as migration_list
from manager.store.base import BadData, Store, StoreError
from shared.logbytes import shown
from tests.manager.conftest import StoreMaker
from tests.manager.store.test_store import WINDOW, acquired, line, task

ODD = b"a\x00b\xffc\n\r\x1b[2J" + bytes(range(256))
SECRET = "hunter2-not-in-any-message"


def odd(seq: int, raw: bytes = ODD) -> LogRecord:
    return LogRecord(1, seq, "stderr", 1_000.0 + seq, shown(raw), raw)


async def test_lines_of_any_bytes_are_stored_and_read_back_exactly(store: Store) -> None:
    await acquired(store)
    lines = [line(0, "plain text"), odd(1), odd(2, b"\x00"), odd(3, b"\xff" * 16 * 1024)]

    assert await store.append_logs("task_1", 1, "dlg_1", lines) == 4
    got = await store.get_logs("task_1", after=None, limit=10)

    assert got == lines
    assert got[1].data == ODD
    assert "\x00" not in got[1].text
    # Resent, the batch inserts nothing and changes nothing.
    assert await store.append_logs("task_1", 1, "dlg_1", lines) == 0
    assert await store.get_logs("task_1", after=None, limit=10) == lines


async def test_the_migration_keeps_the_lines_stored_before_it(
    new_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = new_store.migrations
    assert (16, "ALTER TABLE task_logs ADD COLUMN data {BYTES}") in every
    # The release before migration 16 (later ones are appended after it).
    monkeypatch.setattr(migration_list, "MIGRATIONS", [m for m in every if m[0] < 16])
    before = new_store()
    await before.open()
    await acquired(before)
    await before.close()
    insert = (
        "INSERT INTO task_logs(task_id, attempt, seq, stream, ts, text)"
        " VALUES ('task_1', 1, 0, 'stdout', 1.5, 'from before')"
    )
    if new_store.kind == "sqlite":
        conn = sqlite3.connect(new_store.path)
        with conn:
            conn.execute(insert)
        conn.close()
    else:
        await new_store.fetch(insert)

    monkeypatch.setattr(migration_list, "MIGRATIONS", every)
    after = new_store()
    await after.open()
    try:
        assert await after.get_logs("task_1", after=None, limit=10) == [
            LogRecord(1, 0, "stdout", 1.5, "from before")
        ]
        assert await after.append_logs("task_1", 1, "dlg_1", [odd(1)]) == 1
        assert (await after.get_logs("task_1", after=(1, 0), limit=10)) == [odd(1)]
    finally:
        await after.close()


async def test_text_no_store_can_hold_is_bad_data_that_quotes_no_value(store: Store) -> None:
    await acquired(store)
    # A lone surrogate: neither driver can encode it (PostgreSQL's would quote it back).
    bad = line(0, f"{SECRET}\udcff")

    with pytest.raises(BadData) as caught:
        await store.append_logs("task_1", 1, "dlg_1", [line(1, "fine"), bad])

    message = str(caught.value)
    assert message.startswith("the database refused a value in this request: ")
    assert SECRET not in message
    assert "\n" not in message
    # One statement: the good line of the batch went nowhere either.
    assert await store.get_logs("task_1", after=None, limit=10) == []


async def test_a_nul_in_text_or_json_is_bad_data_on_postgres(pg: StoreMaker) -> None:
    store = pg()
    await store.open()
    try:
        await acquired(store)
        with pytest.raises(BadData, match="NUL byte"):
            await store.append_logs("task_1", 1, "dlg_1", [line(0, f"{SECRET}\x00")])
        payload = {"type": "shell", "script": f"echo {SECRET}\x00"}
        with pytest.raises(BadData, match="NUL byte") as caught:
            await store.insert_task(task("task_2", payload=payload), idempotency_window=WINDOW)
        assert SECRET not in str(caught.value)
    finally:
        await store.close()


async def test_a_pool_closed_under_the_store_is_unavailable_not_a_driver_error(
    pg: StoreMaker,
) -> None:
    store = pg.postgres()
    await store.open()
    await store._pool.close()  # asyncpg answers InterfaceError("pool is closed")

    with pytest.raises(StoreError) as caught:
        await store.get_task("task_1")

    assert not isinstance(caught.value, BadData)
    await store.close()


async def test_connections_killed_under_the_store_are_unavailable_then_it_recovers(
    pg: StoreMaker,
) -> None:
    # One connection, so each next call uses the one just killed, as a restart kills them.
    # asyncpg then fails in one of several ways, some of them its internal errors.
    store = pg.postgres(min_size=1, max_size=1)
    await store.open()
    try:
        for _ in range(20):
            [row] = await store._fetch("SELECT pg_backend_pid() AS pid")
            await pg.fetch("SELECT pg_terminate_backend($1)", row["pid"])
            try:
                await store.get_task("task_1")
            except BadData:
                raise
            except StoreError:
                pass  # "unavailable": the pool reconnects for the next call
        assert await store.get_task("task_1") is None
    finally:
        await store.close()
