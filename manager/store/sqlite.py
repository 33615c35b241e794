"""The embedded store: SQLite in the data directory, nothing to install.

Every call runs on one dedicated thread that owns the connection. A call is a plain function
over the connection; the calls that arrive while one batch commits form the next batch: one
hop to that thread and ONE transaction for all of them, each call in a savepoint of its own
(manager.store.group_commit, manager.store.sqlite_batch). The event loop never blocks on
SQLite, and a burst of writes pays one WAL append and fsync instead of one each.

Durability: WAL with ``synchronous=FULL``, and a call returns only after its batch's commit.
A 2xx to a submit therefore survives ``kill -9`` of the manager, and a power cut.

The SQL is :mod:`manager.store.sql`'s; here is only what SQLite does its own way: the
thread, transactions of several statements where PostgreSQL writes one, row-at-a-time
batches, and the write lock that orders audit appends.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from manager.core.audit_chain import AuditAppend, AuditDraft, AuditEvent, AuditOf, ChainKey, seal
from manager.records import (
    Claimed,
    LogRecord,
    Presence,
    SecretRecord,
    SecretVersionRecord,
    TaskRecord,
)
from manager.store import migrations
from manager.store.base import (
    EntityWrite,
    NewDataKey,
    StoreError,
    check_envelope_versions,
    check_first_version,
    check_next_version,
)
from manager.store.entity_cache import EntityCache
from manager.store.group_commit import GroupCommit, Outcome
from manager.store.health import WriteHealth
from manager.store.sql import audit, data_keys, secrets, tasks
from manager.store.sql.dialect import Dialect, params_of, render
from manager.store.sql.statements import Missed, Params, Step, hit, of_first_step, of_value
from manager.store.sql.store import SqlStore
from manager.store.sqlite_batch import BatchRunner, Call, Read

__all__ = ["SqliteStore", "lease_clock"]

T = TypeVar("T")

_RENEW_LEASE = (
    "UPDATE tasks SET lease_until = :lease_now + :lease_for"
    " WHERE id = :id AND delegate_id = :delegate_id AND state = 'running' RETURNING id"
)
_UPSERT_REPLICA = (
    "INSERT INTO replicas(id, started_at, heartbeat_at) VALUES (:id, :started_at, :now)"
    " ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
)
_UPSERT_PRESENCE = (
    "INSERT INTO delegate_presence(delegate_id, replica_id, mode, last_heartbeat)"
    " VALUES (:delegate_id, :replica_id, :mode, :last_heartbeat)"
    " ON CONFLICT(delegate_id) DO UPDATE SET replica_id = excluded.replica_id,"
    " mode = excluded.mode, last_heartbeat = excluded.last_heartbeat"
    " WHERE excluded.last_heartbeat >= delegate_presence.last_heartbeat"
)
_HOLDER = "SELECT attempt, delegate_id FROM tasks WHERE id = :id"
_INSERT_LOG = (
    "INSERT OR IGNORE INTO task_logs(task_id, attempt, seq, stream, ts, text, data)"
    " VALUES (:task_id, :attempt, :seq, :stream, :ts, :text, :data)"
)


def _sql(sql: str) -> str:
    return render(sql, Dialect.SQLITE)[0]


# A write's verb anywhere in a statement (a WITH may lead to one); "updated_at" is no match.
_WRITE_VERB = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|UPSERT)\b", re.IGNORECASE)


@functools.lru_cache(maxsize=512)
def _reads(text: str) -> bool:
    """Whether a statement only reads: a SELECT, or a WITH whose statement is a SELECT (a
    write begins INSERT, UPDATE, DELETE or a WITH before one of them; SQLite has no SELECT
    that writes). A log page is a WITH: taken for a write, it ran in a write transaction of
    its own, a BEGIN IMMEDIATE and a COMMIT for every page a follower read."""
    head = text.lstrip()[:6].upper()
    if head == "SELECT":
        return True
    return head.startswith("WITH") and _WRITE_VERB.search(text) is None


def lease_clock() -> Callable[[], float]:
    """The clock SQLite's leases are counted on: the wall time when it was made, moved on
    by the monotonic clock only.

    One manager writes and judges these leases, so within a run they need a clock no one can
    set: a jump of the wall clock, either way, neither ends nor stretches a lease. A monotonic
    reading alone would not do as a stored value: it starts again at boot and means nothing
    to the next process. On the epoch scale, what the last run stored still reads roughly
    right at the next start, where every running task's lease is extended anyway
    (TaskService.recover), so a lease is never judged across a restart on old values alone.
    """
    wall, start = time.time(), time.monotonic()
    return lambda: wall + (time.monotonic() - start)


class SqliteStore(SqlStore):
    dialect = Dialect.SQLITE

    def __init__(
        self,
        path: Path,
        *,
        entity_cache: EntityCache | None = None,
        lease_now: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(entity_cache=entity_cache)
        self._path = path
        self._lease_now = lease_now if lease_now is not None else lease_clock()
        self._conn: sqlite3.Connection | None = None
        self.health = WriteHealth()
        # One thread, one connection: SQLite connections are not for sharing across threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._batches: BatchRunner | None = None
        self._group: GroupCommit[Call] | None = None

    @property
    def commits(self) -> int:
        """Transactions committed since open: fewer than the calls when they were batched."""
        return 0 if self._batches is None else self._batches.commits

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in the next batch's transaction (a savepoint of its own); its value once
        that transaction committed. Reads go the same way: they see only what committed
        and cost no fsync, and a read never waits behind more than one commit."""
        if self._group is None:
            raise StoreError("store is not open")
        return cast(T, await self._group.submit(fn))

    def _start_batch(self, calls: list[Call]) -> asyncio.Future[Sequence[Outcome]]:
        runner = self._batches
        if runner is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, runner, calls)

    def _lease_params(self) -> dict[str, Any]:
        return {"lease_now": self._lease_now()}

    async def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        text = _sql(sql)

        def fn(c: sqlite3.Connection) -> list[Any]:
            return c.execute(text, params or {}).fetchall()

        return await self._run(Read(fn) if _reads(text) else fn)

    async def _fetch_audited(
        self, sql: str, params: Params | None, audit: AuditOf[list[Any]]
    ) -> list[Any]:
        text = _sql(sql)

        def fn(c: sqlite3.Connection) -> list[Any]:
            rows = c.execute(text, params or {}).fetchall()
            if (entry := audit(rows)) is not None:
                _chain(c, entry)
            return rows

        return await self._run(fn)

    async def _write_together(
        self, steps: Sequence[Step], audit: AuditOf[list[list[Any]]] | None
    ) -> list[list[Any]] | None:
        texts = [(_sql(step.sql), step) for step in steps]

        def fn(c: sqlite3.Connection) -> list[list[Any]]:
            done = []
            for text, step in texts:
                rows = c.execute(text, step.params).fetchall()
                done.append(hit(step, rows))  # a miss rolls the transaction back
            if audit is not None and (entry := audit(done)) is not None:
                _chain(c, entry)
            return done

        try:
            return await self._run(fn)
        except Missed:
            return None

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            # Made 0600 before SQLite opens it: SQLite gives the -wal and -shm files the
            # database file's mode, whatever the umask.
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            # isolation_level=None: sqlite3 opens no transaction of its own; each batch
            # begins and commits its own (manager.store.sqlite_batch).
            try:
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        self._conn = conn
        self._batches = BatchRunner(conn, self.health)
        self._group = GroupCommit(self._start_batch)

    async def close(self) -> None:
        group, self._group = self._group, None
        if group is not None:
            await group.drain()  # calls already made are answered, not dropped
        conn, self._conn, self._batches = self._conn, None, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    # -- tasks: several statements, one transaction -----------------------------------------

    async def insert_task(
        self,
        task: TaskRecord,
        *,
        idempotency_window: float,
        audit: AuditOf[TaskRecord] | None = None,
        data_key: NewDataKey | None = None,
        claim: Claimed | None = None,
    ) -> tuple[TaskRecord, bool]:
        params = tasks.task_params(task, self._dump, claim)
        params.update(self._lease_params())

        def fn(c: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            if task.idempotency_key is not None:
                row = c.execute(_sql(tasks.TASK_BY_IDEMPOTENCY_KEY), params).fetchone()
                if row is not None:
                    if task.created_at - row["created_at"] <= idempotency_window:
                        return self._task(row), False
                    # Outside the window the key is free again; the old task keeps its id.
                    c.execute(_sql(tasks.CLEAR_IDEMPOTENCY_KEY), {"id": row["id"]})
            if data_key is not None:  # only with a new row: an earlier task answers without
                c.execute(_sql(data_keys.ADD_WITH_RECORD), data_keys.key_params(data_key))
            c.execute(_sql(tasks.INSERT_TASK), params).fetchall()
            if claim is not None:
                c.execute(_sql(tasks.START_ATTEMPT), params)
            if audit is not None and (entry := audit(task)) is not None:
                _chain(c, entry)
            return task, True

        return await self._run(fn)

    async def _update_task(
        self,
        update: str,
        params: dict[str, Any],
        *,
        end_attempt: bool,
        start_attempt: bool,
        audit: AuditOf[list[Any]] | None = None,
    ) -> Any:
        def fn(c: sqlite3.Connection) -> Any:
            rows = c.execute(_sql(update), params).fetchall()
            if not rows:
                return None
            if end_attempt:
                c.execute(_sql(tasks.END_ATTEMPT), params)
            if start_attempt:
                c.execute(_sql(tasks.START_ATTEMPT), params)
            if audit is not None and (entry := audit(rows)) is not None:
                _chain(c, entry)
            return rows[0]

        return await self._run(fn)

    async def renew_leases(self, held: Sequence[tuple[str, str, float]]) -> set[str]:
        if not held:
            return set()
        now = self._lease_now()

        def fn(c: sqlite3.Connection) -> set[str]:
            renewed = set()
            for task_id, delegate_id, lease_for in held:
                params = {
                    "lease_now": now,
                    "lease_for": lease_for,
                    "id": task_id,
                    "delegate_id": delegate_id,
                }
                if c.execute(_RENEW_LEASE, params).fetchall():
                    renewed.add(task_id)
            return renewed

        return await self._run(fn)

    async def record_presence(
        self, replica_id: str, started_at: float, now: float, seen: Sequence[Presence]
    ) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(_UPSERT_REPLICA, {"id": replica_id, "started_at": started_at, "now": now})
            c.executemany(_UPSERT_PRESENCE, [params_of(p) for p in seen])

        await self._run(fn)

    async def append_logs(
        self, task_id: str, attempt: int, delegate_id: str, lines: Sequence[LogRecord]
    ) -> int:
        def fn(c: sqlite3.Connection) -> int:
            row = c.execute(_HOLDER, {"id": task_id}).fetchone()
            if row is None or row[0] != attempt or row[1] != delegate_id:
                return -1
            before = c.total_changes
            c.executemany(
                _INSERT_LOG,
                [{**params_of(ln), "task_id": task_id, "attempt": attempt} for ln in lines],
            )
            return c.total_changes - before

        return await self._run(fn)

    # -- secrets: several statements, one transaction (with their event) --------------------

    async def create_secret(
        self,
        secret: SecretRecord,
        first: SecretVersionRecord,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretRecord] | None = None,
    ) -> None:
        check_first_version(secret, first)
        steps = [
            Step(secrets.INSERT_SECRET, params_of(secret)),
            Step(secrets.INSERT_VERSION, self._version_params(first)),
        ]
        await self._with_entities(steps, entities, of_value(secret, audit))

    async def add_secret_version(
        self,
        secret: SecretRecord,
        version: SecretVersionRecord,
        *,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord | None:
        check_next_version(secret, version)
        bump = {
            "id": secret.id,
            "current_version": secret.current_version,
            "updated_at": version.created_at,
        }
        steps = [
            Step(secrets.BUMP_VERSION, bump, must_hit=True),
            Step(secrets.INSERT_VERSION, self._version_params(version)),
        ]
        done = await self._write_together(steps, of_first_step(secrets.secret_record, audit))
        return None if done is None else secrets.secret_record(done[0][0])

    async def move_secret(
        self,
        secret: SecretRecord,
        manager_id: str,
        envelopes: dict[int, str],
        now: float,
        *,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord | None:
        check_envelope_versions(secret, envelopes)
        move = {**params_of(secret), "to_manager_id": manager_id, "updated_at": now}
        steps = [
            Step(secrets.MOVE_SECRET, move, must_hit=True),
            *(
                Step(secrets.SET_ENVELOPE, {"id": secret.id, "version": n, "envelope": envelope})
                for n, envelope in envelopes.items()
            ),
        ]
        done = await self._write_together(steps, of_first_step(secrets.secret_record, audit))
        return None if done is None else secrets.secret_record(done[0][0])

    # -- audit ------------------------------------------------------------------------------

    async def append_audit(self, draft: AuditDraft, key: ChainKey | None = None) -> AuditEvent:
        return await self._run(lambda c: _chain(c, AuditAppend(draft, key)))


def _chain(c: sqlite3.Connection, entry: AuditAppend) -> AuditEvent:
    """Append ``entry`` to the chain in the open transaction. Every batch begins IMMEDIATE
    (manager.store.sqlite_batch): the head is read under the write lock, and the appends of
    one batch chain in their order, each on the head the one before it wrote."""
    seq, prev_hash = c.execute(_sql(audit.HEAD)).fetchone()
    event = seal(entry.draft, int(seq) + 1, str(prev_hash), entry.key)
    params = params_of(event)
    try:
        c.execute(_sql(audit.INSERT_EVENT), params)
    except sqlite3.IntegrityError as exc:
        # Not the change's Conflict (a name in use): the event could not be written.
        raise StoreError(f"sqlite: audit event not written: {exc}") from None
    c.execute(_sql(audit.SET_HEAD), params)
    return event


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version, read without writing (0: never migrated)."""
    # Asked, not inferred from an error: a locked or damaged file must not read as new.
    table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    if conn.execute(table).fetchone() is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _migrate(conn: sqlite3.Connection) -> None:
    current = schema_version(conn)
    todo = migrations.pending(  # refuses a newer schema before any write
        current, migrations.for_dialect(Dialect.SQLITE, migrations.MIGRATIONS)
    )
    if not todo:
        return
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    for version, sql in todo:
        # executescript commits first, so each migration is its own explicit transaction;
        # on an error it stops inside that transaction, which is rolled back here.
        try:
            conn.executescript(
                f"BEGIN; {sql}; INSERT INTO schema_version(version) VALUES ({version}); COMMIT;"  # noqa: S608 (our own migration text)
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise migrations.failed(version, current, exc) from None
        current = version
