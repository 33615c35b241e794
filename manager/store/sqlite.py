"""The embedded store: SQLite in the data directory, nothing to install.

Every call runs on one dedicated thread that owns the connection. A whole transaction is a
single hop to that thread (a plain function over the connection), so the event loop never
blocks on SQLite and never pays one thread hop per statement.

Durability: WAL with ``synchronous=FULL``, so a transaction is on disk when its call
returns. A 2xx to a submit therefore survives ``kill -9`` of the manager, and a power cut.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from manager.core.audit_chain import (
    EVENT_FIELDS,
    AuditDraft,
    AuditEvent,
    AuditQuery,
    SavedAuditFilter,
    like_pattern,
    seal,
)
from manager.records import (
    AccessSettings,
    AllowlistEntry,
    ApiKeyRecord,
    AttemptRecord,
    DelegateRecord,
    EntityRecord,
    LogRecord,
    Presence,
    ProfileRecord,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
    TaskFilter,
    TaskRecord,
    TokenRecord,
)
from manager.store.base import (
    Conflict,
    Store,
    StoreError,
    check_envelope_versions,
    check_first_version,
    check_next_version,
)
from manager.store.sqlite_schema import MIGRATIONS
from shared.protocol import TaskState

__all__ = ["SqliteStore"]

T = TypeVar("T")

_JSON_TASK_COLUMNS = {"payload", "selectors", "secret_env_names", "outputs", "deployment"}
_TASK_COLUMNS = (
    "id, type, state, payload, selectors, timeout_s, queue_timeout_s, max_attempts, created_at,"
    " attempt, delegate_id, idempotency_key, secret_env_sealed, secret_env_names, started_at,"
    " finished_at, exit_code, outputs, error, cancel_requested, deployment, queued_at, lease_until,"
    " app_id, env_id, submitted_by"
)
_AUDIT_COLUMNS = ", ".join(EVENT_FIELDS)
_UPDATABLE = {
    "state",
    "attempt",
    "delegate_id",
    "started_at",
    "finished_at",
    "exit_code",
    "outputs",
    "error",
    "cancel_requested",
    "deployment",
    "queued_at",
    "lease_until",
}


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        # One thread, one connection: SQLite connections are not for sharing across threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")

        def call() -> T:
            try:
                with conn:  # one transaction: commit on success, roll back on error
                    return fn(conn)
            except sqlite3.IntegrityError as exc:
                raise Conflict(str(exc)) from None
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite: {exc}") from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            # Python's sqlite3 only opens transactions itself in legacy mode; we use BEGIN
            # through the `with conn` block, which needs isolation_level other than None.
            conn.isolation_level = "DEFERRED"
            _migrate(conn)
            return conn

        self._conn = await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    # -- settings -------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        def fn(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(fn)

    async def put_setting_if_absent(self, key: str, value: str) -> str:
        def fn(c: sqlite3.Connection) -> str:
            c.execute("INSERT OR IGNORE INTO settings(key, value) VALUES (?, ?)", (key, value))
            return str(c.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0])

        return await self._run(fn)

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(self, token: TokenRecord) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO tokens(id, name, token_hash, created_at, scope) VALUES (?,?,?,?,?)",
                (token.id, token.name, token.token_hash, token.created_at, token.scope),
            )

        await self._run(fn)

    async def list_tokens(self) -> list[TokenRecord]:
        def fn(c: sqlite3.Connection) -> list[TokenRecord]:
            rows = c.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
            return [TokenRecord(**dict(r)) for r in rows]

        return await self._run(fn)

    async def revoke_token(self, name: str, now: float) -> TokenRecord | None:
        def fn(c: sqlite3.Connection) -> TokenRecord | None:
            rows = c.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
                " RETURNING *",
                (now, name),
            ).fetchall()
            row = rows[0] if rows else None
            return None if row is None else TokenRecord(**dict(row))

        return await self._run(fn)

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        def fn(c: sqlite3.Connection) -> TokenRecord | None:
            row = c.execute("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)).fetchone()
            return None if row is None else TokenRecord(**dict(row))

        return await self._run(fn)

    async def token_by_id(self, token_id: str) -> TokenRecord | None:
        def fn(c: sqlite3.Connection) -> TokenRecord | None:
            row = c.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
            return None if row is None else TokenRecord(**dict(row))

        return await self._run(fn)

    async def revoked_token_ids(self, among: Iterable[str]) -> set[str]:
        ids = list(among)
        if not ids:
            return set()

        def fn(c: sqlite3.Connection) -> set[str]:
            marks = ",".join("?" * len(ids))
            rows = c.execute(
                f"SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND id IN ({marks})",  # noqa: S608
                ids,
            ).fetchall()
            return {str(r[0]) for r in rows}

        return await self._run(fn)

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO api_keys(id, name, prefix, key_hash, created_at, revoked_at, owner,"
                " owner_user_id, service_account, groups, max_qps, burst, expires_at,"
                " last_used_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key.id,
                    key.name,
                    key.prefix,
                    key.key_hash,
                    key.created_at,
                    key.revoked_at,
                    key.owner,
                    key.owner_user_id,
                    int(key.service_account),
                    json.dumps(list(key.groups)),
                    key.max_qps,
                    key.burst,
                    key.expires_at,
                    key.last_used_at,
                ),
            )

        await self._run(fn)

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        def fn(c: sqlite3.Connection) -> ApiKeyRecord | None:
            row = c.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
            return None if row is None else self._api_key(row)

        return await self._run(fn)

    # -- delegates ------------------------------------------------------------------------

    async def upsert_delegate(self, delegate: DelegateRecord) -> DelegateRecord | None:
        def fn(c: sqlite3.Connection) -> DelegateRecord | None:
            rows = c.execute(
                """
                INSERT INTO delegates(id, name, token_id, hostname, version, protocol_version,
                    selectors, task_types, capacity, public_key, created_at, last_seen)
                VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
                ON CONFLICT(public_key) DO UPDATE SET
                    name = excluded.name, token_id = excluded.token_id,
                    hostname = excluded.hostname, version = excluded.version,
                    protocol_version = excluded.protocol_version,
                    selectors = excluded.selectors, task_types = excluded.task_types,
                    capacity = excluded.capacity, last_seen = excluded.last_seen
                WHERE delegates.token_id = excluded.token_id
                RETURNING *
                """,
                (
                    delegate.id,
                    delegate.name,
                    delegate.token_id,
                    delegate.hostname,
                    delegate.version,
                    delegate.protocol_version,
                    json.dumps(list(delegate.selectors)),
                    json.dumps(list(delegate.task_types)),
                    delegate.capacity,
                    delegate.public_key,
                    delegate.created_at,
                    delegate.last_seen,
                ),
            ).fetchall()
            return _delegate(rows[0]) if rows else None

        return await self._run(fn)

    async def get_delegate(self, delegate_id: str) -> DelegateRecord | None:
        def fn(c: sqlite3.Connection) -> DelegateRecord | None:
            row = c.execute("SELECT * FROM delegates WHERE id = ?", (delegate_id,)).fetchone()
            return None if row is None else _delegate(row)

        return await self._run(fn)

    async def set_draining(self, delegate_id: str, draining: bool) -> DelegateRecord | None:
        def fn(c: sqlite3.Connection) -> DelegateRecord | None:
            rows = c.execute(
                "UPDATE delegates SET draining = ? WHERE id = ? RETURNING *",
                (int(draining), delegate_id),
            ).fetchall()
            return _delegate(rows[0]) if rows else None

        return await self._run(fn)

    async def list_delegates(self) -> list[DelegateRecord]:
        def fn(c: sqlite3.Connection) -> list[DelegateRecord]:
            rows = c.execute("SELECT * FROM delegates ORDER BY name, created_at").fetchall()
            return [_delegate(r) for r in rows]

        return await self._run(fn)

    async def delegates_named(self, name: str) -> list[DelegateRecord]:
        def fn(c: sqlite3.Connection) -> list[DelegateRecord]:
            rows = c.execute(
                "SELECT * FROM delegates WHERE name = ? ORDER BY created_at", (name,)
            ).fetchall()
            return [_delegate(r) for r in rows]

        return await self._run(fn)

    async def delete_delegate(self, delegate_id: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM delegates WHERE id = ?", (delegate_id,)).rowcount > 0

        return await self._run(fn)

    # -- tasks ----------------------------------------------------------------------------

    async def insert_task(
        self, task: TaskRecord, *, idempotency_window: float
    ) -> tuple[TaskRecord, bool]:
        def fn(c: sqlite3.Connection) -> tuple[TaskRecord, bool]:
            if task.idempotency_key is not None:
                row = c.execute(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE idempotency_key = ?",  # noqa: S608
                    (task.idempotency_key,),
                ).fetchone()
                if row is not None:
                    if task.created_at - row["created_at"] <= idempotency_window:
                        return _task(row), False
                    # Outside the window the key is free again; the old task keeps its id.
                    c.execute("UPDATE tasks SET idempotency_key = NULL WHERE id = ?", (row["id"],))
            values = _task_values(task)
            marks = ",".join("?" * len(values))
            c.execute(f"INSERT INTO tasks({_TASK_COLUMNS}) VALUES ({marks})", values)  # noqa: S608
            return task, True

        return await self._run(fn)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        def fn(c: sqlite3.Connection) -> TaskRecord | None:
            row = c.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?",  # noqa: S608
                (task_id,),
            ).fetchone()
            return None if row is None else _task(row)

        return await self._run(fn)

    async def list_tasks(self, flt: TaskFilter) -> list[TaskRecord]:
        where: list[str] = []
        args: list[Any] = []
        if flt.state is not None:
            where.append("state = ?")
            args.append(flt.state.value)
        if flt.delegate_id is not None:
            where.append("delegate_id = ?")
            args.append(flt.delegate_id)
        if flt.since is not None:
            where.append("created_at >= ?")
            args.append(flt.since)
        if flt.until is not None:
            where.append("created_at < ?")
            args.append(flt.until)
        for cond, value in (
            ("app_id = ?", flt.app_id),
            ("env_id = ?", flt.env_id),
            ("json_extract(deployment, '$.service') = ?", flt.service),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        if flt.deployments_only:
            where.append("deployment IS NOT NULL")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # Ties (one clock tick) newest id first: ids are time-ordered.
        sql = (
            f"SELECT {_TASK_COLUMNS} FROM tasks {clause}"  # noqa: S608
            " ORDER BY created_at DESC, id DESC LIMIT ?"
        )

        def fn(c: sqlite3.Connection) -> list[TaskRecord]:
            return [_task(r) for r in c.execute(sql, [*args, flt.limit]).fetchall()]

        return await self._run(fn)

    async def tasks_in_states(self, states: Sequence[TaskState]) -> list[TaskRecord]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state IN ({marks}) ORDER BY created_at"  # noqa: S608

        def fn(c: sqlite3.Connection) -> list[TaskRecord]:
            return [_task(r) for r in c.execute(sql, [s.value for s in states]).fetchall()]

        return await self._run(fn)

    async def update_task(
        self,
        task_id: str,
        *,
        expect_state: TaskState,
        expect_attempt: int,
        changes: dict[str, Any],
        start_attempt: AttemptRecord | None = None,
        end_attempt_status: str | None = None,
        end_attempt_at: float | None = None,
    ) -> TaskRecord | None:
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        cols = list(changes)
        sets = ", ".join(f"{col} = ?" for col in cols)
        values = [_encode(col, changes[col]) for col in cols]
        sql = (
            f"UPDATE tasks SET {sets} WHERE id = ? AND state = ? AND attempt = ?"  # noqa: S608
            f" RETURNING {_TASK_COLUMNS}"
        )

        def fn(c: sqlite3.Connection) -> TaskRecord | None:
            rows = c.execute(sql, [*values, task_id, expect_state.value, expect_attempt]).fetchall()
            if not rows:
                return None
            row = rows[0]
            if end_attempt_status is not None:
                c.execute(
                    "UPDATE task_attempts SET finished_at = ?, status = ?"
                    " WHERE task_id = ? AND attempt = ?",
                    (
                        end_attempt_at or changes.get("finished_at") or time.time(),
                        end_attempt_status,
                        task_id,
                        expect_attempt,
                    ),
                )
            if start_attempt is not None:
                c.execute(
                    "INSERT INTO task_attempts(task_id, attempt, delegate_id, started_at)"
                    " VALUES (?,?,?,?)",
                    (
                        start_attempt.task_id,
                        start_attempt.attempt,
                        start_attempt.delegate_id,
                        start_attempt.started_at,
                    ),
                )
            return _task(row)

        return await self._run(fn)

    async def renew_leases(self, held: Sequence[tuple[str, str]], until: float) -> set[str]:
        if not held:
            return set()

        def fn(c: sqlite3.Connection) -> set[str]:
            renewed = set()
            for task_id, delegate_id in held:
                row = c.execute(
                    "UPDATE tasks SET lease_until = ? WHERE id = ? AND delegate_id = ?"
                    " AND state = 'running' RETURNING id",
                    (until, task_id, delegate_id),
                ).fetchall()
                if row:
                    renewed.add(task_id)
            return renewed

        return await self._run(fn)

    async def extend_leases(self, until: float) -> int:
        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE tasks SET lease_until = ? WHERE state = 'running'"
                " AND (lease_until IS NULL OR lease_until < ?)",
                (until, until),
            )
            return cur.rowcount

        return await self._run(fn)

    async def expired_leases(self, now: float, *, limit: int = 500) -> list[TaskRecord]:
        sql = (
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state = 'running'"  # noqa: S608
            " AND lease_until < ? ORDER BY lease_until LIMIT ?"
        )

        def fn(c: sqlite3.Connection) -> list[TaskRecord]:
            return [_task(r) for r in c.execute(sql, (now, limit)).fetchall()]

        return await self._run(fn)

    async def put_profile(self, profile: ProfileRecord) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO profiles(name, selectors, script, interpreter, updated_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " selectors = excluded.selectors, script = excluded.script,"
                " interpreter = excluded.interpreter, updated_at = excluded.updated_at",
                (
                    profile.name,
                    json.dumps(list(profile.selectors)),
                    profile.script,
                    profile.interpreter,
                    profile.updated_at,
                ),
            )

        await self._run(fn)

    async def delete_profile(self, name: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            return c.execute("DELETE FROM profiles WHERE name = ?", (name,)).rowcount > 0

        return await self._run(fn)

    async def list_profiles(self) -> list[ProfileRecord]:
        def fn(c: sqlite3.Connection) -> list[ProfileRecord]:
            rows = c.execute("SELECT * FROM profiles ORDER BY name").fetchall()
            return [
                ProfileRecord(
                    r["name"],
                    tuple(json.loads(r["selectors"])),
                    r["script"],
                    r["interpreter"],
                    r["updated_at"],
                )
                for r in rows
            ]

        return await self._run(fn)

    async def record_presence(
        self, replica_id: str, started_at: float, now: float, seen: Sequence[Presence]
    ) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO replicas(id, started_at, heartbeat_at) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (replica_id, started_at, now),
            )
            c.executemany(
                "INSERT INTO delegate_presence(delegate_id, replica_id, mode, last_heartbeat)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(delegate_id) DO UPDATE SET"
                " replica_id = excluded.replica_id, mode = excluded.mode,"
                " last_heartbeat = excluded.last_heartbeat"
                " WHERE excluded.last_heartbeat >= delegate_presence.last_heartbeat",
                [(p.delegate_id, p.replica_id, p.mode, p.last_heartbeat) for p in seen],
            )

        await self._run(fn)

    async def presence(self, since: float) -> dict[str, Presence]:
        def fn(c: sqlite3.Connection) -> dict[str, Presence]:
            rows = c.execute(
                "SELECT p.delegate_id, p.replica_id, p.mode, p.last_heartbeat"
                " FROM delegate_presence p JOIN replicas r ON r.id = p.replica_id"
                " WHERE p.last_heartbeat > ? AND r.heartbeat_at > ?",
                (since, since),
            ).fetchall()
            return {r[0]: Presence(*r) for r in rows}

        return await self._run(fn)

    async def attempts(self, task_id: str) -> list[AttemptRecord]:
        def fn(c: sqlite3.Connection) -> list[AttemptRecord]:
            rows = c.execute(
                "SELECT * FROM task_attempts WHERE task_id = ? ORDER BY attempt", (task_id,)
            ).fetchall()
            return [AttemptRecord(**dict(r)) for r in rows]

        return await self._run(fn)

    # -- logs -----------------------------------------------------------------------------

    async def append_logs(
        self, task_id: str, attempt: int, delegate_id: str, lines: Sequence[LogRecord]
    ) -> int:
        def fn(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT attempt, delegate_id FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None or row[0] != attempt or row[1] != delegate_id:
                return -1
            before = c.total_changes
            c.executemany(
                "INSERT OR IGNORE INTO task_logs(task_id, attempt, seq, stream, ts, text)"
                " VALUES (?,?,?,?,?,?)",
                [(task_id, attempt, ln.seq, ln.stream, ln.ts, ln.text) for ln in lines],
            )
            return c.total_changes - before

        return await self._run(fn)

    async def get_logs(
        self, task_id: str, *, after: tuple[int, int] | None, limit: int
    ) -> list[LogRecord]:
        a_attempt, a_seq = after if after is not None else (0, -1)

        def fn(c: sqlite3.Connection) -> list[LogRecord]:
            rows = c.execute(
                "SELECT attempt, seq, stream, ts, text FROM task_logs"
                " WHERE task_id = ? AND (attempt > ? OR (attempt = ? AND seq > ?))"
                " ORDER BY attempt, seq LIMIT ?",
                (task_id, a_attempt, a_attempt, a_seq, limit),
            ).fetchall()
            return [LogRecord(**dict(r)) for r in rows]

        return await self._run(fn)

    # -- secret managers ------------------------------------------------------------------

    async def create_secret_manager(self, manager: SecretManagerRecord) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO secret_managers(id, name, kind, settings, credentials_secret,"
                " selectors, description, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    manager.id,
                    manager.name,
                    manager.kind,
                    json.dumps(manager.settings),
                    manager.credentials_secret,
                    json.dumps(list(manager.selectors)),
                    manager.description,
                    manager.created_at,
                    manager.updated_at,
                ),
            )

        await self._run(fn)

    async def get_secret_manager(self, manager_id: str) -> SecretManagerRecord | None:
        def fn(c: sqlite3.Connection) -> SecretManagerRecord | None:
            row = c.execute("SELECT * FROM secret_managers WHERE id = ?", (manager_id,)).fetchone()
            return None if row is None else _secret_manager(row)

        return await self._run(fn)

    async def secret_manager_by_name(self, name: str) -> SecretManagerRecord | None:
        def fn(c: sqlite3.Connection) -> SecretManagerRecord | None:
            row = c.execute("SELECT * FROM secret_managers WHERE name = ?", (name,)).fetchone()
            return None if row is None else _secret_manager(row)

        return await self._run(fn)

    async def list_secret_managers(self) -> list[SecretManagerRecord]:
        def fn(c: sqlite3.Connection) -> list[SecretManagerRecord]:
            rows = c.execute("SELECT * FROM secret_managers ORDER BY name").fetchall()
            return [_secret_manager(r) for r in rows]

        return await self._run(fn)

    async def update_secret_manager(self, manager: SecretManagerRecord) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE secret_managers SET name = ?, kind = ?, settings = ?,"
                " credentials_secret = ?, selectors = ?, description = ?, updated_at = ?"
                " WHERE id = ?",
                (
                    manager.name,
                    manager.kind,
                    json.dumps(manager.settings),
                    manager.credentials_secret,
                    json.dumps(list(manager.selectors)),
                    manager.description,
                    manager.updated_at,
                    manager.id,
                ),
            )
            return cur.rowcount > 0

        return await self._run(fn)

    async def delete_secret_manager(self, manager_id: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            (kept,) = c.execute(
                "SELECT count(*) FROM secrets WHERE manager_id = ?", (manager_id,)
            ).fetchone()
            if kept:
                raise Conflict(f"secret manager {manager_id} keeps {kept} secret(s)")
            return c.execute("DELETE FROM secret_managers WHERE id = ?", (manager_id,)).rowcount > 0

        return await self._run(fn)

    # -- secrets --------------------------------------------------------------------------

    async def create_secret(self, secret: SecretRecord, first: SecretVersionRecord) -> None:
        check_first_version(secret, first)

        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO secrets(id, name, manager_id, type, mode, current_version,"
                " description, created_by, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    secret.id,
                    secret.name,
                    secret.manager_id,
                    secret.type,
                    secret.mode,
                    secret.current_version,
                    secret.description,
                    secret.created_by,
                    secret.created_at,
                    secret.updated_at,
                ),
            )
            _insert_version(c, first)

        await self._run(fn)

    async def get_secret(self, secret_id: str) -> SecretRecord | None:
        def fn(c: sqlite3.Connection) -> SecretRecord | None:
            row = c.execute("SELECT * FROM secrets WHERE id = ?", (secret_id,)).fetchone()
            return None if row is None else SecretRecord(**dict(row))

        return await self._run(fn)

    async def secret_by_name(self, name: str) -> SecretRecord | None:
        def fn(c: sqlite3.Connection) -> SecretRecord | None:
            row = c.execute("SELECT * FROM secrets WHERE name = ?", (name,)).fetchone()
            return None if row is None else SecretRecord(**dict(row))

        return await self._run(fn)

    async def secrets_by_name(self, names: Iterable[str]) -> dict[str, SecretRecord]:
        wanted = sorted(set(names))
        if not wanted:
            return {}

        def fn(c: sqlite3.Connection) -> dict[str, SecretRecord]:
            marks = ",".join("?" * len(wanted))
            rows = c.execute(
                f"SELECT * FROM secrets WHERE name IN ({marks})",  # noqa: S608
                wanted,
            ).fetchall()
            return {r["name"]: SecretRecord(**dict(r)) for r in rows}

        return await self._run(fn)

    async def list_secrets(self, *, manager_id: str | None = None) -> list[SecretRecord]:
        def fn(c: sqlite3.Connection) -> list[SecretRecord]:
            if manager_id is None:
                rows = c.execute("SELECT * FROM secrets ORDER BY name").fetchall()
            else:
                rows = c.execute(
                    "SELECT * FROM secrets WHERE manager_id = ? ORDER BY name", (manager_id,)
                ).fetchall()
            return [SecretRecord(**dict(r)) for r in rows]

        return await self._run(fn)

    async def add_secret_version(
        self, secret: SecretRecord, version: SecretVersionRecord
    ) -> SecretRecord | None:
        check_next_version(secret, version)

        def fn(c: sqlite3.Connection) -> SecretRecord | None:
            rows = c.execute(
                "UPDATE secrets SET current_version = ?, updated_at = ?"
                " WHERE id = ? AND current_version = ? RETURNING *",
                (version.version, version.created_at, secret.id, secret.current_version),
            ).fetchall()
            if not rows:
                return None
            _insert_version(c, version)
            return SecretRecord(**dict(rows[0]))

        return await self._run(fn)

    async def secret_versions(self, secret_id: str) -> list[SecretVersionRecord]:
        def fn(c: sqlite3.Connection) -> list[SecretVersionRecord]:
            rows = c.execute(
                "SELECT * FROM secret_versions WHERE secret_id = ? ORDER BY version DESC",
                (secret_id,),
            ).fetchall()
            return [_secret_version(r) for r in rows]

        return await self._run(fn)

    async def get_secret_version(self, secret_id: str, version: int) -> SecretVersionRecord | None:
        def fn(c: sqlite3.Connection) -> SecretVersionRecord | None:
            row = c.execute(
                "SELECT * FROM secret_versions WHERE secret_id = ? AND version = ?",
                (secret_id, version),
            ).fetchone()
            return None if row is None else _secret_version(row)

        return await self._run(fn)

    async def current_versions(self, secret_ids: Iterable[str]) -> dict[str, SecretVersionRecord]:
        ids = sorted(set(secret_ids))
        if not ids:
            return {}

        def fn(c: sqlite3.Connection) -> dict[str, SecretVersionRecord]:
            marks = ",".join("?" * len(ids))
            rows = c.execute(
                "SELECT v.* FROM secrets s JOIN secret_versions v"  # noqa: S608
                " ON v.secret_id = s.id AND v.version = s.current_version"
                f" WHERE s.id IN ({marks})",
                ids,
            ).fetchall()
            return {r["secret_id"]: _secret_version(r) for r in rows}

        return await self._run(fn)

    async def delete_secret(self, secret_id: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            # The versions go with it (ON DELETE CASCADE; open() turns foreign keys on).
            return c.execute("DELETE FROM secrets WHERE id = ?", (secret_id,)).rowcount > 0

        return await self._run(fn)

    async def move_secret(
        self, secret: SecretRecord, manager_id: str, envelopes: dict[int, str], now: float
    ) -> SecretRecord | None:
        check_envelope_versions(secret, envelopes)

        def fn(c: sqlite3.Connection) -> SecretRecord | None:
            rows = c.execute(
                "UPDATE secrets SET manager_id = ?, updated_at = ?"
                " WHERE id = ? AND current_version = ? AND manager_id = ? RETURNING *",
                (manager_id, now, secret.id, secret.current_version, secret.manager_id),
            ).fetchall()
            if not rows:
                return None
            c.executemany(
                "UPDATE secret_versions SET envelope = ? WHERE secret_id = ? AND version = ?",
                [(envelope, secret.id, number) for number, envelope in envelopes.items()],
            )
            return SecretRecord(**dict(rows[0]))

        return await self._run(fn)

    async def envelopes_of_manager(self, manager_id: str) -> list[SecretVersionRecord]:
        def fn(c: sqlite3.Connection) -> list[SecretVersionRecord]:
            rows = c.execute(
                "SELECT v.* FROM secrets s JOIN secret_versions v ON v.secret_id = s.id"
                " WHERE s.manager_id = ? AND v.envelope IS NOT NULL"
                " ORDER BY v.secret_id, v.version",
                (manager_id,),
            ).fetchall()
            return [_secret_version(r) for r in rows]

        return await self._run(fn)

    async def replace_envelope(self, secret_id: str, version: int, old: str, new: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE secret_versions SET envelope = ?"
                " WHERE secret_id = ? AND version = ? AND envelope = ?",
                (new, secret_id, version, old),
            )
            return cur.rowcount > 0

        return await self._run(fn)

    async def clear_task_secret_env(self, task_id: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute("UPDATE tasks SET secret_env_sealed = NULL WHERE id = ?", (task_id,))

        await self._run(fn)

    # -- audit trail ----------------------------------------------------------------------

    async def append_audit(self, draft: AuditDraft) -> AuditEvent:
        def fn(c: sqlite3.Connection) -> AuditEvent:
            # IMMEDIATE: the write lock before the head is read, so another process on this
            # file (a host-side command) waits for this append instead of chaining on the
            # same head. A `with conn` block would only take it at the first write.
            c.execute("BEGIN IMMEDIATE")
            seq, prev_hash = c.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            event = seal(draft, int(seq) + 1, str(prev_hash))
            c.execute(
                f"INSERT INTO audit_events({_AUDIT_COLUMNS})"  # noqa: S608
                f" VALUES ({','.join('?' * len(EVENT_FIELDS))})",
                [getattr(event, name) for name in EVENT_FIELDS],
            )
            c.execute(
                "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (event.seq, event.hash)
            )
            return event

        return await self._run(fn)

    async def audit_head(self) -> tuple[int, str]:
        def fn(c: sqlite3.Connection) -> tuple[int, str]:
            seq, head_hash = c.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            return int(seq), str(head_hash)

        return await self._run(fn)

    async def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        where: list[str] = []
        args: list[Any] = []
        for cond, value in (
            ("ts >= ?", query.since),
            ("ts < ?", query.until),
            ("resource_type = ?", query.resource_type),
            ("resource_id = ?", query.resource_id),
            ("app = ?", query.app),
            ("action = ?", query.action),
            ("seq < ?", query.before),
            ("seq > ?", query.after),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        if query.actor is not None:
            where.append("(actor_id = ? OR actor_name = ?)")
            args += [query.actor, query.actor]
        if query.text:
            # LIKE is case-insensitive for ASCII letters in SQLite (ILIKE on PostgreSQL).
            where.append(
                "(summary LIKE ? ESCAPE '\\' OR resource_name LIKE ? ESCAPE '\\'"
                " OR diff LIKE ? ESCAPE '\\')"
            )
            args += [like_pattern(query.text)] * 3
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if query.ascending else "DESC"
        sql = f"SELECT {_AUDIT_COLUMNS} FROM audit_events {clause} ORDER BY seq {order} LIMIT ?"  # noqa: S608

        def fn(c: sqlite3.Connection) -> list[AuditEvent]:
            return [AuditEvent(**dict(r)) for r in c.execute(sql, [*args, query.limit])]

        return await self._run(fn)

    async def create_audit_filter(self, saved: SavedAuditFilter) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO audit_filters(id, owner, name, query, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (saved.id, saved.owner, saved.name, json.dumps(saved.query), saved.created_at),
            )

        await self._run(fn)

    async def get_audit_filter(self, owner: str, name: str) -> SavedAuditFilter | None:
        def fn(c: sqlite3.Connection) -> SavedAuditFilter | None:
            row = c.execute(
                "SELECT * FROM audit_filters WHERE owner = ? AND name = ?", (owner, name)
            ).fetchone()
            return None if row is None else _audit_filter(row)

        return await self._run(fn)

    async def list_audit_filters(self, owner: str) -> list[SavedAuditFilter]:
        def fn(c: sqlite3.Connection) -> list[SavedAuditFilter]:
            rows = c.execute(
                "SELECT * FROM audit_filters WHERE owner = ? ORDER BY name", (owner,)
            ).fetchall()
            return [_audit_filter(r) for r in rows]

        return await self._run(fn)

    async def delete_audit_filter(self, owner: str, name: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM audit_filters WHERE owner = ? AND name = ?", (owner, name))
            return cur.rowcount > 0

        return await self._run(fn)

    # -- entities ---------------------------------------------------------------------------

    async def get_entity(self, kind: str, entity_id: str) -> EntityRecord | None:
        def fn(c: sqlite3.Connection) -> EntityRecord | None:
            row = c.execute(
                "SELECT * FROM entities WHERE kind = ? AND id = ?", (kind, entity_id)
            ).fetchone()
            return None if row is None else _entity(row)

        return await self._run(fn)

    async def entity_by_key(self, kind: str, key: str) -> EntityRecord | None:
        def fn(c: sqlite3.Connection) -> EntityRecord | None:
            row = c.execute(
                "SELECT * FROM entities WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
            return None if row is None else _entity(row)

        return await self._run(fn)

    async def list_entities(self, kind: str) -> list[EntityRecord]:
        def fn(c: sqlite3.Connection) -> list[EntityRecord]:
            rows = c.execute(
                "SELECT * FROM entities WHERE kind = ? ORDER BY created_at, id", (kind,)
            ).fetchall()
            return [_entity(r) for r in rows]

        return await self._run(fn)

    async def insert_entity(self, entity: EntityRecord) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO entities(kind, id, key, body, version, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entity.kind,
                    entity.id,
                    entity.key,
                    json.dumps(entity.body),
                    entity.version,
                    entity.created_at,
                    entity.updated_at,
                ),
            )

        await self._run(fn)

    async def update_entity(self, entity: EntityRecord, expect_version: int) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE entities SET key = ?, body = ?, version = ?, updated_at = ?"
                " WHERE kind = ? AND id = ? AND version = ?",
                (
                    entity.key,
                    json.dumps(entity.body),
                    entity.version,
                    entity.updated_at,
                    entity.kind,
                    entity.id,
                    expect_version,
                ),
            )
            return cur.rowcount > 0

        return await self._run(fn)

    async def delete_entity(self, kind: str, entity_id: str) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute("DELETE FROM entities WHERE kind = ? AND id = ?", (kind, entity_id))
            return cur.rowcount > 0

        return await self._run(fn)

    # -- api keys (owners, limits) and the IP allowlist -----------------------------------

    @staticmethod
    def _api_key(row: sqlite3.Row) -> ApiKeyRecord:
        d = dict(row)
        d["service_account"] = bool(d["service_account"])
        d["groups"] = tuple(json.loads(d["groups"]))
        return ApiKeyRecord(**d)

    @staticmethod
    def _access_settings(c: sqlite3.Connection) -> AccessSettings:
        d = dict(c.execute("SELECT * FROM access_settings WHERE id = 1").fetchone())
        del d["id"]
        d["allowlist_enabled"] = bool(d["allowlist_enabled"])
        d["trusted_proxies"] = tuple(json.loads(d["trusted_proxies"]))
        return AccessSettings(**d)

    @staticmethod
    def _allowlist_entry(row: sqlite3.Row) -> AllowlistEntry:
        d = dict(row)
        d["enabled"] = bool(d["enabled"])
        return AllowlistEntry(**d)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        def fn(c: sqlite3.Connection) -> list[ApiKeyRecord]:
            rows = c.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
            return [self._api_key(r) for r in rows]

        return await self._run(fn)

    async def revoke_api_key(self, name: str, now: float) -> ApiKeyRecord | None:
        def fn(c: sqlite3.Connection) -> ApiKeyRecord | None:
            rows = c.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
                " RETURNING *",
                (now, name),
            ).fetchall()
            return self._api_key(rows[0]) if rows else None

        return await self._run(fn)

    async def touch_api_key(self, key_id: str, now: float, *, min_interval: float) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ?"
                " AND (last_used_at IS NULL OR last_used_at <= ?)",
                (now, key_id, now - min_interval),
            )

        await self._run(fn)

    async def access_settings(self) -> AccessSettings:
        def fn(c: sqlite3.Connection) -> AccessSettings:
            return self._access_settings(c)

        return await self._run(fn)

    async def update_access_settings(
        self,
        now: float,
        *,
        allowlist_enabled: bool | None = None,
        trusted_proxies: Sequence[str] | None = None,
        api_key_max_qps: float | None = None,
        api_key_burst: int | None = None,
    ) -> AccessSettings:
        changes: dict[str, Any] = {"updated_at": now}
        if allowlist_enabled is not None:
            changes["allowlist_enabled"] = int(allowlist_enabled)
        if trusted_proxies is not None:
            changes["trusted_proxies"] = json.dumps(list(trusted_proxies))
        if api_key_max_qps is not None:
            changes["api_key_max_qps"] = api_key_max_qps
        if api_key_burst is not None:
            changes["api_key_burst"] = api_key_burst
        # Column names come from the fixed set above, never from the caller.
        assignments = ", ".join(f"{name} = ?" for name in changes)

        def fn(c: sqlite3.Connection) -> AccessSettings:
            c.execute(
                f"UPDATE access_settings SET {assignments} WHERE id = 1",  # noqa: S608
                list(changes.values()),
            )
            return self._access_settings(c)

        return await self._run(fn)

    async def list_allowlist(self) -> list[AllowlistEntry]:
        def fn(c: sqlite3.Connection) -> list[AllowlistEntry]:
            rows = c.execute("SELECT * FROM allowlist ORDER BY created_at, id").fetchall()
            return [self._allowlist_entry(r) for r in rows]

        return await self._run(fn)

    async def add_allowlist_entry(self, entry: AllowlistEntry) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO allowlist(id, cidr, description, enabled, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (entry.id, entry.cidr, entry.description, int(entry.enabled), entry.created_at),
            )

        await self._run(fn)

    async def set_allowlist_entry_enabled(
        self, entry_id: str, enabled: bool
    ) -> AllowlistEntry | None:
        def fn(c: sqlite3.Connection) -> AllowlistEntry | None:
            rows = c.execute(
                "UPDATE allowlist SET enabled = ? WHERE id = ? RETURNING *",
                (int(enabled), entry_id),
            ).fetchall()
            return self._allowlist_entry(rows[0]) if rows else None

        return await self._run(fn)

    async def delete_allowlist_entry(self, entry_id: str) -> AllowlistEntry | None:
        def fn(c: sqlite3.Connection) -> AllowlistEntry | None:
            rows = c.execute("DELETE FROM allowlist WHERE id = ? RETURNING *", (entry_id,))
            found = rows.fetchall()
            return self._allowlist_entry(found[0]) if found else None

        return await self._run(fn)


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    current = row[0] or 0
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        # executescript commits first, so each migration is its own explicit transaction.
        conn.executescript(
            f"BEGIN; {sql}; INSERT INTO schema_version(version) VALUES ({version}); COMMIT;"  # noqa: S608
        )


def _encode(col: str, value: Any) -> Any:
    if col in _JSON_TASK_COLUMNS:
        return None if value is None else json.dumps(value)
    if isinstance(value, TaskState):
        return value.value
    if isinstance(value, bool):
        return int(value)
    return value


def _task_values(task: TaskRecord) -> list[Any]:
    names = [n.strip() for n in _TASK_COLUMNS.split(",")]
    out = []
    for name in names:
        value = getattr(task, name)
        if isinstance(value, tuple):
            value = list(value)
        out.append(_encode(name, value))
    return out


def _task(row: sqlite3.Row) -> TaskRecord:
    d = dict(row)
    return TaskRecord(
        id=d["id"],
        type=d["type"],
        state=TaskState(d["state"]),
        payload=json.loads(d["payload"]),
        selectors=tuple(json.loads(d["selectors"])),
        timeout_s=d["timeout_s"],
        queue_timeout_s=d["queue_timeout_s"],
        max_attempts=d["max_attempts"],
        created_at=d["created_at"],
        attempt=d["attempt"],
        delegate_id=d["delegate_id"],
        idempotency_key=d["idempotency_key"],
        secret_env_sealed=d["secret_env_sealed"],
        secret_env_names=tuple(json.loads(d["secret_env_names"])),
        started_at=d["started_at"],
        finished_at=d["finished_at"],
        exit_code=d["exit_code"],
        outputs=json.loads(d["outputs"]),
        error=d["error"],
        cancel_requested=bool(d["cancel_requested"]),
        deployment=None if d["deployment"] is None else json.loads(d["deployment"]),
        queued_at=d["queued_at"],
        lease_until=d["lease_until"],
        app_id=d["app_id"],
        env_id=d["env_id"],
        submitted_by=d["submitted_by"],
    )


def _entity(row: sqlite3.Row) -> EntityRecord:
    d = dict(row)
    d["body"] = json.loads(d["body"])
    return EntityRecord(**d)


def _delegate(row: sqlite3.Row) -> DelegateRecord:
    d = dict(row)
    d["selectors"] = tuple(json.loads(d["selectors"]))
    d["task_types"] = tuple(json.loads(d["task_types"]))
    d["draining"] = bool(d["draining"])
    return DelegateRecord(**d)


def _secret_manager(row: sqlite3.Row) -> SecretManagerRecord:
    d = dict(row)
    d["settings"] = json.loads(d["settings"])
    d["selectors"] = tuple(json.loads(d["selectors"]))
    return SecretManagerRecord(**d)


def _secret_version(row: sqlite3.Row) -> SecretVersionRecord:
    d = dict(row)
    d["ref"] = None if d["ref"] is None else json.loads(d["ref"])
    return SecretVersionRecord(**d)


def _insert_version(c: sqlite3.Connection, v: SecretVersionRecord) -> None:
    c.execute(
        "INSERT INTO secret_versions(secret_id, version, envelope, ref, size, created_by,"
        " created_at) VALUES (?,?,?,?,?,?,?)",
        (
            v.secret_id,
            v.version,
            v.envelope,
            None if v.ref is None else json.dumps(v.ref),
            v.size,
            v.created_by,
            v.created_at,
        ),
    )


def _audit_filter(row: sqlite3.Row) -> SavedAuditFilter:
    d = dict(row)
    d["query"] = json.loads(d["query"])
    return SavedAuditFilter(**d)
