"""Group commit: writes that arrive together share one transaction, each keeps its own outcome,
and no caller is answered before the commit that holds its write.

On SQLite the calls of one batch run in one transaction on the store's thread; every call
made before the loop next runs the batch writer joins the first batch, so a gather of N
calls is one commit, not N (``store.commits`` counts them). PostgreSQL commits each write on
its own pooled connection: the same calls must give the same answers there.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from manager.core.audit_chain import verify
from manager.records import TaskRecord
from manager.store.base import Conflict, DiskFull, Store, StoreError
from manager.store.health import DISK_FULL
from manager.store.postgres import PostgresStore
from manager.store.sqlite import SqliteStore, _reads
from tests.manager.conftest import PG_URL, StoreMaker
from tests.manager.store.test_audit import change
from tests.manager.store.test_audit_with_change import event_of, events
from tests.manager.store.test_store import WINDOW, task

CALLS = 40


def commits(store: Store) -> int:
    return store.commits if isinstance(store, SqliteStore) else 0


async def ids_in_db(store: Store, maker: StoreMaker) -> set[str]:
    """The task ids committed, read on a connection of the test's own (only what committed)."""
    if maker.kind == "sqlite":
        conn = sqlite3.connect(maker.path)
        try:
            return {r[0] for r in conn.execute("SELECT id FROM tasks")}
        finally:
            conn.close()
    return {r["id"] for r in await maker.fetch("SELECT id FROM tasks")}


async def test_concurrent_writes_share_one_commit_and_each_gets_its_own_answer(
    store: Store, new_store: StoreMaker
) -> None:
    before = commits(store)
    answers = await asyncio.gather(
        *(store.insert_task(task(f"task_{n}"), idempotency_window=WINDOW) for n in range(CALLS))
    )
    batched = commits(store) - before
    expected = [(f"task_{n}", True) for n in range(CALLS)]
    assert [(t.id, created) for t, created in answers] == expected
    assert await ids_in_db(store, new_store) == {f"task_{n}" for n in range(CALLS)}
    if isinstance(store, SqliteStore):
        # All were queued before the writer ran: one transaction for the forty.
        assert batched == 1


async def test_reads_in_a_batch_see_what_committed_before_it(store: Store) -> None:
    await store.insert_task(task("task_0"), idempotency_window=WINDOW)
    read, written, missing = await asyncio.gather(
        store.get_task("task_0"),
        store.insert_task(task("task_1"), idempotency_window=WINDOW),
        store.get_task("task_nope"),
    )
    assert read is not None
    assert read.id == "task_0"
    assert written[1] is True
    assert missing is None


async def test_reads_alone_take_no_transaction(sqlite_store: SqliteStore) -> None:
    """A batch of nothing but reads runs them in autocommit, as before batching: nothing to
    commit, no write lock taken from a host-side command on the same file."""
    store = sqlite_store
    await store.insert_task(task("task_0"), idempotency_window=WINDOW)
    before = store.commits
    found = await asyncio.gather(*(store.get_task("task_0") for _ in range(10)))
    assert [t.id if t else None for t in found] == ["task_0"] * 10
    assert store.commits == before


async def test_a_log_page_is_read_without_a_transaction(sqlite_store: SqliteStore) -> None:
    """A log page is one WITH ... SELECT: a read, not a write transaction per page."""
    store = sqlite_store
    await store.insert_task(task("task_0"), idempotency_window=WINDOW)
    before = store.commits
    pages = await asyncio.gather(
        *(store.get_logs("task_0", after=None, limit=10) for _ in range(3))
    )
    assert pages == [[], [], []]
    assert store.commits == before


@pytest.mark.parametrize(
    ("sql", "reads"),
    [
        ("SELECT 1", True),
        ("  with x AS (SELECT 1) SELECT * FROM x", True),
        ("WITH x AS (SELECT updated_at FROM t) SELECT * FROM x", True),
        ("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN (SELECT * FROM x)", False),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", False),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
        ("with x as (select 1) replace into t select * from x", False),
        ("INSERT INTO t VALUES (1)", False),
        ("UPDATE t SET a = 1", False),
    ],
)
def test_only_statements_that_cannot_write_are_taken_for_reads(sql: str, reads: bool) -> None:
    assert _reads(sql) is reads


async def test_a_unique_violation_fails_only_its_own_call_in_the_batch(
    store: Store, new_store: StoreMaker
) -> None:
    before = commits(store)
    first, twin, other = await asyncio.gather(
        store.insert_task(task("task_1", created_at=1.0), idempotency_window=WINDOW),
        store.insert_task(task("task_1", created_at=2.0), idempotency_window=WINDOW),
        store.insert_task(task("task_2"), idempotency_window=WINDOW),
        return_exceptions=True,
    )
    batched = commits(store) - before
    assert not isinstance(first, BaseException)
    assert not isinstance(other, BaseException)
    assert isinstance(twin, Conflict)
    assert await ids_in_db(store, new_store) == {"task_1", "task_2"}
    kept = await store.get_task("task_1")
    assert kept is not None
    assert kept.created_at == 1.0
    if isinstance(store, SqliteStore):
        assert batched == 1


async def test_a_failing_audit_callback_rolls_back_its_own_write_only(
    store: Store, new_store: StoreMaker
) -> None:
    def refuse(_written: Any) -> Any:
        raise ValueError("no event for this one")

    before = commits(store)
    refused, audited, plain, appended = await asyncio.gather(
        store.insert_task(task("task_refused"), idempotency_window=WINDOW, audit=refuse),
        store.insert_task(task("task_audited"), idempotency_window=WINDOW, audit=event_of(1)),
        store.insert_task(task("task_plain"), idempotency_window=WINDOW),
        store.append_audit(change(2)),
        return_exceptions=True,
    )
    batched = commits(store) - before
    assert isinstance(refused, ValueError)
    assert not any(isinstance(a, BaseException) for a in (audited, plain, appended))
    assert await ids_in_db(store, new_store) == {"task_audited", "task_plain"}
    chain = await events(store)
    assert sorted(e.resource_id for e in chain) == ["token_1", "token_2"]
    assert verify(chain, await store.audit_head()) is None
    if isinstance(store, SqliteStore):
        assert batched == 1


async def test_audited_writes_in_one_batch_chain_in_their_order(store: Store) -> None:
    before = commits(store)
    appended = await asyncio.gather(*(store.append_audit(change(n)) for n in range(CALLS)))
    batched = commits(store) - before
    chain = await events(store)
    assert sorted(e.seq for e in appended) == list(range(1, CALLS + 1))
    assert verify(chain, await store.audit_head()) is None
    if isinstance(store, SqliteStore):
        # One transaction, and the chain follows the order the calls were made in.
        assert [e.seq for e in appended] == list(range(1, CALLS + 1))
        assert batched == 1


async def test_an_acknowledged_write_is_already_committed(
    store: Store, new_store: StoreMaker
) -> None:
    """As each caller's await returns, a connection of the test's own (which sees only
    committed rows) finds its row: no answer runs ahead of its commit."""
    unseen: list[str] = []

    async def insert_then_look(n: int) -> None:
        await store.insert_task(task(f"task_{n}"), idempotency_window=WINDOW)
        if new_store.kind == "sqlite":
            # Synchronous, so nothing else on the loop runs between the answer and the look.
            conn = sqlite3.connect(new_store.path)
            try:
                found = conn.execute("SELECT 1 FROM tasks WHERE id = ?", (f"task_{n}",))
                seen = found.fetchone() is not None
            finally:
                conn.close()
        else:
            seen = bool(await new_store.fetch("SELECT 1 FROM tasks WHERE id = $1", f"task_{n}"))
        if not seen:
            unseen.append(f"task_{n}")

    await asyncio.gather(*(insert_then_look(n) for n in range(CALLS)))
    assert unseen == []


@pytest.fixture
async def sqlite_store(tmp_path: Any) -> Any:
    s = SqliteStore(tmp_path / "tether.db")
    await s.open()
    yield s
    await s.close()


async def test_a_failing_commit_fails_every_call_of_the_batch_and_keeps_none(
    sqlite_store: SqliteStore, tmp_path: Any
) -> None:
    """A deferred foreign key is checked at COMMIT: a row breaking it makes the commit itself
    fail, after every call of the batch ran without error."""
    store = sqlite_store
    await store._run(
        lambda c: c.execute(
            "CREATE TABLE holds (task_id TEXT REFERENCES tasks(id) DEFERRABLE INITIALLY DEFERRED)"
        ).fetchall()
    )
    before = store.commits
    answers = await asyncio.gather(
        store.insert_task(task("task_1"), idempotency_window=WINDOW),
        store._run(lambda c: c.execute("INSERT INTO holds VALUES ('task_none')").rowcount),
        store.append_audit(change(1)),
        store.insert_task(task("task_2"), idempotency_window=WINDOW),
        return_exceptions=True,
    )
    for answer in answers:
        # The store failed them all; none is told it conflicts with something of its own.
        assert isinstance(answer, StoreError), answer
        assert not isinstance(answer, Conflict), answer
    assert store.commits == before
    assert await ids_in_db(store, StoreMaker("sqlite", tmp_path / "tether.db")) == set()
    assert await events(store) == []
    # The store goes on: the next batch commits.
    await store.insert_task(task("task_3"), idempotency_window=WINDOW)
    assert await ids_in_db(store, StoreMaker("sqlite", tmp_path / "tether.db")) == {"task_3"}


async def test_a_batch_larger_than_the_bound_is_cut_into_several_commits(
    sqlite_store: SqliteStore,
) -> None:
    from manager.store.group_commit import MAX_BATCH

    store = sqlite_store
    before = store.commits
    calls = MAX_BATCH + 10
    answers = await asyncio.gather(
        *(store.insert_task(task(f"task_{n}"), idempotency_window=WINDOW) for n in range(calls))
    )
    assert all(created for _, created in answers)
    assert store.commits - before == 2


async def test_a_postgres_call_costs_one_round_trip_no_session_reset(pg: StoreMaker) -> None:
    """A pooled connection goes back to the pool without asyncpg's reset query (one more
    round trip per call): the last statement the server saw on it is the store's own."""
    name = f"gc_{pg.schema}"
    store = PostgresStore(
        PG_URL,
        server_settings={"search_path": pg.schema, "application_name": name},
        min_size=1,
        max_size=1,
    )
    await store.open()
    try:
        await store.insert_task(task("task_1"), idempotency_window=WINDOW)
        assert await store.get_task("task_1") is not None
        activity = "SELECT query FROM pg_stat_activity WHERE application_name = $1"
        rows = await pg.fetch(activity, name)
        assert len(rows) == 1
        assert rows[0]["query"].startswith("SELECT"), rows[0]["query"]
        assert "FROM tasks WHERE id" in rows[0]["query"], rows[0]["query"]
    finally:
        await store.close()


async def test_a_full_volume_fails_the_call_that_needed_room_not_its_batch(
    sqlite_store: SqliteStore,
) -> None:
    store = sqlite_store
    await store.insert_task(task("task_0"), idempotency_window=WINDOW)
    # The file may not grow: an insert that needs a new page fails (SQLITE_FULL).
    await store._run(lambda c: c.execute("PRAGMA max_page_count = 1").fetchall())
    read, big = await asyncio.gather(
        store.get_task("task_0"),
        store.insert_task(
            task("task_big", payload={"type": "shell", "script": "x" * 20_000}),
            idempotency_window=WINDOW,
        ),
        return_exceptions=True,
    )
    assert isinstance(read, TaskRecord)
    assert read.id == "task_0"
    assert isinstance(big, DiskFull)
    assert store.health.problem == DISK_FULL
    assert await store.get_task("task_big") is None
