"""The embedded store: SQLite in the data directory, nothing to install.

Every call runs on one dedicated thread that owns the connection. A whole transaction is a
single hop to that thread (a plain function over the connection), so the event loop never
blocks on SQLite and never pays one thread hop per statement.

Durability: WAL with ``synchronous=FULL``, so a transaction is on disk when its call
returns. A 2xx to a submit therefore survives ``kill -9`` of the manager, and a power cut.

The SQL is :mod:`manager.store.sql`'s; here is only what SQLite does its own way: the
thread, transactions of several statements where PostgreSQL writes one, row-at-a-time
batches, and the write lock that orders audit appends.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from manager.core.audit_chain import AuditAppend, AuditDraft, AuditEvent, AuditOf, ChainKey, seal
from manager.records import (
    LogRecord,
    Presence,
    SecretRecord,
    SecretVersionRecord,
    TaskRecord,
)
from manager.store import migrations
from manager.store.base import (
    BadData,
    Conflict,
    DiskFull,
    EntityWrite,
    StoreError,
    check_envelope_versions,
    check_first_version,
    check_next_version,
)
from manager.store.entity_cache import EntityCache
from manager.store.health import WriteHealth
from manager.store.sql import audit, secrets, tasks
from manager.store.sql.dialect import Dialect, params_of, render
from manager.store.sql.statements import Missed, Params, Step, hit, of_first_step, of_value
from manager.store.sql.store import SqlStore

__all__ = ["SqliteStore"]

T = TypeVar("T")

_RENEW_LEASE = (
    "UPDATE tasks SET lease_until = :until WHERE id = :id AND delegate_id = :delegate_id"
    " AND state = 'running' RETURNING id"
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


class SqliteStore(SqlStore):
    dialect = Dialect.SQLITE

    def __init__(self, path: Path, *, entity_cache: EntityCache | None = None) -> None:
        super().__init__(entity_cache=entity_cache)
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self.health = WriteHealth()
        # One thread, one connection: SQLite connections are not for sharing across threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")

        def call() -> T:
            changes = conn.total_changes
            try:
                with conn:  # one transaction: commit on success, roll back on error
                    result = fn(conn)
            except sqlite3.IntegrityError as exc:
                raise Conflict(str(exc)) from None
            # A value SQLite refuses ("string or blob too big") or Python cannot hand it (a
            # lone surrogate in text, an integer over 64 bits): bad data, not an outage.
            except sqlite3.DataError:
                raise BadData("a value too large for the database") from None
            except UnicodeEncodeError:
                raise BadData("text that is not Unicode (a lone surrogate)") from None
            except OverflowError:
                raise BadData("a number too large for the database") from None
            except sqlite3.Error as exc:
                if _is_full(exc):
                    self.health.full(str(exc))
                    raise DiskFull(f"sqlite: {exc}") from None
                raise StoreError(f"sqlite: {exc}") from None
            if conn.total_changes != changes:  # committed a write: there was room for it
                self.health.wrote()
            return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        text = _sql(sql)
        return await self._run(lambda c: c.execute(text, params or {}).fetchall())

    async def _fetch_audited(
        self, sql: str, params: Params | None, audit: AuditOf[list[Any]]
    ) -> list[Any]:
        text = _sql(sql)

        def fn(c: sqlite3.Connection) -> list[Any]:
            _begin_chained(c)
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
            _begin_chained(c)
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
            # Python's sqlite3 only opens transactions itself in legacy mode; we use BEGIN
            # through the `with conn` block, which needs isolation_level other than None.
            conn.isolation_level = "DEFERRED"
            try:
                _migrate(conn)
            except BaseException:
                conn.close()
                raise
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
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
    ) -> tuple[TaskRecord, bool]:
        params = tasks.task_params(task, self._dump)

        def fn(c: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            if audit is not None:
                _begin_chained(c)
            if task.idempotency_key is not None:
                row = c.execute(_sql(tasks.TASK_BY_IDEMPOTENCY_KEY), params).fetchone()
                if row is not None:
                    if task.created_at - row["created_at"] <= idempotency_window:
                        return self._task(row), False
                    # Outside the window the key is free again; the old task keeps its id.
                    c.execute(_sql(tasks.CLEAR_IDEMPOTENCY_KEY), {"id": row["id"]})
            c.execute(_sql(tasks.INSERT_TASK), params).fetchall()
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
            if audit is not None:
                _begin_chained(c)
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

    async def renew_leases(self, held: Sequence[tuple[str, str]], until: float) -> set[str]:
        if not held:
            return set()

        def fn(c: sqlite3.Connection) -> set[str]:
            renewed = set()
            for task_id, delegate_id in held:
                params = {"until": until, "id": task_id, "delegate_id": delegate_id}
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
        def fn(c: sqlite3.Connection) -> AuditEvent:
            _begin_chained(c)
            return _chain(c, AuditAppend(draft, key))

        return await self._run(fn)


def _begin_chained(c: sqlite3.Connection) -> None:
    """Begin a transaction that may append to the audit chain. IMMEDIATE: the write lock
    before the head is read, so another process on this file (a host-side command) waits
    for this append instead of chaining on the same head. A `with conn` block would only
    take it at the first write."""
    c.execute("BEGIN IMMEDIATE")


def _chain(c: sqlite3.Connection, entry: AuditAppend) -> AuditEvent:
    """Append ``entry`` to the chain in the open transaction (begun by _begin_chained)."""
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


# SQLite's result code for a full disk (or a database at its max_page_count); the
# extended codes keep it in their low byte.
_SQLITE_FULL = 13


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == _SQLITE_FULL
    return "database or disk is full" in str(exc)


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
