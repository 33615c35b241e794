"""The PostgreSQL store: several manager replicas share one database.

asyncpg with a small pool. Each call is one round trip where it can be: a task update and its
attempt row are one statement (data-modifying CTEs), and a log batch is one
``INSERT ... SELECT FROM unnest(...)`` guarded by the holder check.

Task updates are the same compare-and-set as SQLite: ``UPDATE ... WHERE id AND state AND
attempt``. Under READ COMMITTED a concurrent writer of the same row waits for the row lock,
then re-checks the WHERE against the committed row, so exactly one of many concurrent claims
wins, whichever replica makes them.

Cross-replica wake-ups use LISTEN/NOTIFY over one dedicated connection per store, which is
reconnected when it drops (see :meth:`PostgresStore.listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import asyncpg
import structlog

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
from manager.store.postgres_listen import Listener
from manager.store.postgres_schema import MIGRATIONS
from shared.protocol import TaskState

__all__ = ["PostgresStore", "tasks_in_states_sql"]

log = structlog.get_logger("tether.store")


def _fields(record: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(record))


# Column lists are the records' fields, in order, so a row maps straight onto its record.
_TASK_FIELDS = _fields(TaskRecord)
_TASK_COLUMNS = ", ".join(_TASK_FIELDS)
_TOKEN_COLUMNS = ", ".join(_fields(TokenRecord))
_API_KEY_FIELDS = _fields(ApiKeyRecord)
_API_KEY_COLUMNS = ", ".join(_API_KEY_FIELDS)
_ALLOWLIST_COLUMNS = ", ".join(_fields(AllowlistEntry))
_ENTITY_COLUMNS = ", ".join(_fields(EntityRecord))
_ACCESS_COLUMNS = ", ".join(_fields(AccessSettings))
_DELEGATE_FIELDS = _fields(DelegateRecord)
_DELEGATE_COLUMNS = ", ".join(_DELEGATE_FIELDS)
_ATTEMPT_COLUMNS = ", ".join(_fields(AttemptRecord))
_LOG_COLUMNS = ", ".join(_fields(LogRecord))
_MANAGER_FIELDS = _fields(SecretManagerRecord)
_MANAGER_COLUMNS = ", ".join(_MANAGER_FIELDS)
_SECRET_FIELDS = _fields(SecretRecord)
_SECRET_COLUMNS = ", ".join(_SECRET_FIELDS)
_VERSION_FIELDS = _fields(SecretVersionRecord)
_VERSION_COLUMNS = ", ".join(_VERSION_FIELDS)
_VERSION_TYPES = {
    "secret_id": "text",
    "version": "integer",
    "created_at": "double precision",
    "envelope": "text",
    "ref": "jsonb",
    "size": "integer",
    "created_by": "text",
}
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

# Two-key advisory lock: this class id, and the hash of the schema being migrated, so replicas
# of one deployment take turns while unrelated schemas (tests in parallel) do not wait.
_MIGRATION_LOCK_CLASS = 0x7E7E

# The database is down or failed: the caller gets a StoreError (a 503), not a crash.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.ConnectionDoesNotExistError,
    OSError,
    TimeoutError,
)


class PostgresStore(Store):
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        server_settings: dict[str, str] | None = None,
        command_timeout: float | None = 30.0,
        close_timeout: float = 10.0,
        listen_timeout: float = 10.0,
        listen_reconnect_delays: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0),
        listen_check_interval: float | None = 30.0,
        on_listen_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """``server_settings`` go to every connection (``search_path`` picks a schema).

        ``on_listen_reconnect`` is called each time the LISTEN connection comes back after a
        loss: notifications sent in between are gone, so the owner re-reads what it missed.
        ``listen_check_interval`` probes an idle LISTEN connection (None: never).
        """
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._server_settings = dict(server_settings or {})
        self._command_timeout = command_timeout
        self._close_timeout = close_timeout
        self._pool: Any = None
        self._listener = Listener(
            self._connect_one,
            timeout=listen_timeout,
            reconnect_delays=listen_reconnect_delays,
            check_interval=listen_check_interval,
            on_reconnect=on_listen_reconnect,
        )

    async def _connect_one(self) -> Any:
        return await asyncpg.connect(self._dsn, server_settings=self._server_settings)

    @contextlib.asynccontextmanager
    async def _conn(self, *, tx: bool = False) -> AsyncIterator[Any]:
        """A pooled connection (in a transaction if ``tx``), with errors translated."""
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        try:
            async with pool.acquire() as conn:
                if tx:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        # A foreign key too, as SQLite's IntegrityError: a secret naming a manager that was
        # deleted meanwhile, or a manager deleted while a secret moves into it.
        except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError) as exc:
            raise Conflict(str(exc)) from exc
        except _DB_ERRORS as exc:
            raise StoreError(f"postgres: {exc}") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._conn() as c:
            return list(await c.fetch(sql, *args))

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._conn() as c:
            return await c.fetchrow(sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._conn() as c:
            return await c.fetchval(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> None:
        async with self._conn() as c:
            await c.execute(sql, *args)

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings=self._server_settings,
                command_timeout=self._command_timeout,
                init=_init_connection,
            )
        except _DB_ERRORS as exc:
            raise StoreError(f"postgres: {exc}") from exc
        try:
            async with self._conn(tx=True) as c:
                await _migrate(c)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self._listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._close_timeout)
            except TimeoutError:
                pool.terminate()

    # -- settings -------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        value = await self._fetchval("SELECT value FROM settings WHERE key = $1", key)
        return None if value is None else str(value)

    async def put_setting_if_absent(self, key: str, value: str) -> str:
        async with self._conn() as c:
            stored = await c.fetchval(
                "INSERT INTO settings(key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO NOTHING RETURNING value",
                key,
                value,
            )
            if stored is None:
                # A separate statement: its snapshot sees the row that won the race.
                stored = await c.fetchval("SELECT value FROM settings WHERE key = $1", key)
        return str(stored)

    # -- tokens ---------------------------------------------------------------------------

    async def create_token(self, token: TokenRecord) -> None:
        await self._execute(
            "INSERT INTO tokens(id, name, token_hash, created_at, scope)"
            " VALUES ($1, $2, $3, $4, $5)",
            *(token.id, token.name, token.token_hash, token.created_at, token.scope),
        )

    async def list_tokens(self) -> list[TokenRecord]:
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created_at, seq"  # noqa: S608
        return [TokenRecord(**dict(r)) for r in await self._fetch(sql)]

    async def revoke_token(self, name: str, now: float) -> TokenRecord | None:
        row = await self._fetchrow(
            "UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL"  # noqa: S608
            f" RETURNING {_TOKEN_COLUMNS}",
            *(now, name),
        )
        return None if row is None else TokenRecord(**dict(row))

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = $1"  # noqa: S608
        row = await self._fetchrow(sql, token_hash)
        return None if row is None else TokenRecord(**dict(row))

    async def token_by_id(self, token_id: str) -> TokenRecord | None:
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = $1"  # noqa: S608
        row = await self._fetchrow(sql, token_id)
        return None if row is None else TokenRecord(**dict(row))

    async def revoked_token_ids(self, among: Iterable[str]) -> set[str]:
        ids = list(among)
        if not ids:
            return set()
        rows = await self._fetch(
            "SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND id = ANY($1::text[])", ids
        )
        return {str(r[0]) for r in rows}

    # -- API keys -------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKeyRecord) -> None:
        await self._execute(
            f"INSERT INTO api_keys({_API_KEY_COLUMNS}) VALUES ({_marks(len(_API_KEY_FIELDS))})",  # noqa: S608
            *(_encode(name, getattr(key, name)) for name in _API_KEY_FIELDS),
        )

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        sql = f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"  # noqa: S608
        row = await self._fetchrow(sql, key_hash)
        return None if row is None else self._api_key(row)

    # -- delegates ------------------------------------------------------------------------

    async def upsert_delegate(self, delegate: DelegateRecord) -> DelegateRecord | None:
        row = await self._fetchrow(
            f"""
            INSERT INTO delegates({_DELEGATE_COLUMNS})
            VALUES ({", ".join(f"${i}" for i in range(1, len(_DELEGATE_FIELDS) + 1))})
            ON CONFLICT (public_key) DO UPDATE SET
                name = excluded.name, token_id = excluded.token_id,
                hostname = excluded.hostname, version = excluded.version,
                protocol_version = excluded.protocol_version,
                selectors = excluded.selectors, task_types = excluded.task_types,
                capacity = excluded.capacity, last_seen = excluded.last_seen
            WHERE delegates.token_id = excluded.token_id
            RETURNING {_DELEGATE_COLUMNS}
            """,  # noqa: S608
            *(_encode(name, getattr(delegate, name)) for name in _DELEGATE_FIELDS),
        )
        return None if row is None else _delegate(row)

    async def get_delegate(self, delegate_id: str) -> DelegateRecord | None:
        sql = f"SELECT {_DELEGATE_COLUMNS} FROM delegates WHERE id = $1"  # noqa: S608
        row = await self._fetchrow(sql, delegate_id)
        return None if row is None else _delegate(row)

    async def set_draining(self, delegate_id: str, draining: bool) -> DelegateRecord | None:
        row = await self._fetchrow(
            f"UPDATE delegates SET draining = $1 WHERE id = $2 RETURNING {_DELEGATE_COLUMNS}",  # noqa: S608
            draining,
            delegate_id,
        )
        return None if row is None else _delegate(row)

    async def list_delegates(self) -> list[DelegateRecord]:
        sql = f"SELECT {_DELEGATE_COLUMNS} FROM delegates ORDER BY name, created_at, id"  # noqa: S608
        return [_delegate(r) for r in await self._fetch(sql)]

    async def delegates_named(self, name: str) -> list[DelegateRecord]:
        sql = f"SELECT {_DELEGATE_COLUMNS} FROM delegates WHERE name = $1 ORDER BY created_at, id"  # noqa: S608
        return [_delegate(r) for r in await self._fetch(sql, name)]

    async def delete_delegate(self, delegate_id: str) -> bool:
        rows = await self._fetch("DELETE FROM delegates WHERE id = $1 RETURNING id", delegate_id)
        return bool(rows)

    # -- tasks ----------------------------------------------------------------------------

    async def insert_task(
        self, task: TaskRecord, *, idempotency_window: float
    ) -> tuple[TaskRecord, bool]:
        values = [_encode(name, getattr(task, name)) for name in _TASK_FIELDS]
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        # Two submits with one new key race to the unique index: the loser's insert does
        # nothing, and its next look-up (a new snapshot) returns the winner's task.
        insert = (
            f"INSERT INTO tasks({_TASK_COLUMNS}) VALUES ({marks})"  # noqa: S608
            " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
        )
        key = task.idempotency_key
        if key is None:
            await self._execute(insert, *values)
            return task, True
        async with self._conn(tx=True) as c:
            for _ in range(3):
                row = await c.fetchrow(
                    f"SELECT {_TASK_COLUMNS} FROM tasks WHERE idempotency_key = $1 FOR UPDATE",  # noqa: S608
                    key,
                )
                if row is not None:
                    if task.created_at - row["created_at"] <= idempotency_window:
                        return _task(row), False
                    # Outside the window the key is free again; the old task keeps its id.
                    await c.execute(
                        "UPDATE tasks SET idempotency_key = NULL WHERE id = $1", row["id"]
                    )
                if await c.fetchval(insert, *values) is not None:
                    return task, True
        raise Conflict(f"idempotency key {key!r} keeps changing hands")

    async def get_task(self, task_id: str) -> TaskRecord | None:
        sql = f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = $1"  # noqa: S608
        row = await self._fetchrow(sql, task_id)
        return None if row is None else _task(row)

    async def list_tasks(self, flt: TaskFilter) -> list[TaskRecord]:
        where: list[str] = []
        args: list[Any] = []
        for cond, value in (
            ("state = ${}", None if flt.state is None else flt.state.value),
            ("delegate_id = ${}", flt.delegate_id),
            ("created_at >= ${}", flt.since),
            ("created_at < ${}", flt.until),
            ("app_id = ${}", flt.app_id),
            ("env_id = ${}", flt.env_id),
            ("deployment->>'service' = ${}", flt.service),
        ):
            if value is not None:
                args.append(value)
                where.append(cond.format(len(args)))
        if flt.deployments_only:
            where.append("deployment IS NOT NULL")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        args.append(flt.limit)
        sql = (
            f"SELECT {_TASK_COLUMNS} FROM tasks {clause}"  # noqa: S608
            f" ORDER BY created_at DESC, id DESC LIMIT ${len(args)}"
        )
        return [_task(r) for r in await self._fetch(sql, *args)]

    async def tasks_in_states(self, states: Sequence[TaskState]) -> list[TaskRecord]:
        if not states:
            return []
        return [_task(r) for r in await self._fetch(tasks_in_states_sql(states))]

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
        args: list[Any] = [_encode(col, value) for col, value in changes.items()]
        sets = ", ".join(f"{col} = ${i}" for i, col in enumerate(changes, 1))
        args += [task_id, expect_state.value, expect_attempt]
        n_id, n_attempt = len(args) - 2, len(args)
        sql = (
            f"UPDATE tasks SET {sets}"  # noqa: S608
            f" WHERE id = ${n_id} AND state = ${n_id + 1} AND attempt = ${n_attempt}"
            f" RETURNING {_TASK_COLUMNS}"
        )
        # The attempt rows ride in the same statement, each written only if the update hit.
        ctes = [f"u AS ({sql})"]
        if end_attempt_status is not None:
            args += [
                end_attempt_at or changes.get("finished_at") or time.time(),
                end_attempt_status,
            ]
            ctes.append(
                f"e AS (UPDATE task_attempts SET finished_at = ${len(args) - 1},"  # noqa: S608
                f" status = ${len(args)} WHERE task_id = ${n_id} AND attempt = ${n_attempt}"
                " AND EXISTS (SELECT 1 FROM u))"
            )
        if start_attempt is not None:
            a = start_attempt
            args += [a.task_id, a.attempt, a.delegate_id, a.started_at]
            k = len(args) - 3
            ctes.append(
                "s AS (INSERT INTO task_attempts(task_id, attempt, delegate_id, started_at)"  # noqa: S608
                f" SELECT ${k}::text, ${k + 1}::integer, ${k + 2}::text,"
                f" ${k + 3}::double precision FROM u)"
            )
        if len(ctes) > 1:
            sql = f"WITH {', '.join(ctes)} SELECT {_TASK_COLUMNS} FROM u"  # noqa: S608
        row = await self._fetchrow(sql, *args)
        return None if row is None else _task(row)

    async def renew_leases(self, held: Sequence[tuple[str, str]], until: float) -> set[str]:
        if not held:
            return set()
        rows = await self._fetch(
            "UPDATE tasks AS t SET lease_until = $1"
            " FROM unnest($2::text[], $3::text[]) AS h(id, delegate_id)"
            " WHERE t.id = h.id AND t.delegate_id = h.delegate_id AND t.state = 'running'"
            " RETURNING t.id",
            until,
            [task_id for task_id, _ in held],
            [delegate_id for _, delegate_id in held],
        )
        return {str(r["id"]) for r in rows}

    async def extend_leases(self, until: float) -> int:
        rows = await self._fetch(
            "UPDATE tasks SET lease_until = $1 WHERE state = 'running'"
            " AND (lease_until IS NULL OR lease_until < $1) RETURNING id",
            until,
        )
        return len(rows)

    async def expired_leases(self, now: float, *, limit: int = 500) -> list[TaskRecord]:
        sql = (
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state = 'running'"  # noqa: S608
            " AND lease_until < $1 ORDER BY lease_until LIMIT $2"
        )
        return [_task(r) for r in await self._fetch(sql, now, limit)]

    async def put_profile(self, profile: ProfileRecord) -> None:
        await self._execute(
            "INSERT INTO profiles(name, selectors, script, interpreter, updated_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET"
            " selectors = excluded.selectors, script = excluded.script,"
            " interpreter = excluded.interpreter, updated_at = excluded.updated_at",
            profile.name,
            json.dumps(list(profile.selectors)),
            profile.script,
            profile.interpreter,
            profile.updated_at,
        )

    async def delete_profile(self, name: str) -> bool:
        rows = await self._fetch("DELETE FROM profiles WHERE name = $1 RETURNING name", name)
        return bool(rows)

    async def list_profiles(self) -> list[ProfileRecord]:
        rows = await self._fetch("SELECT * FROM profiles ORDER BY name")
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

    async def record_presence(
        self, replica_id: str, started_at: float, now: float, seen: Sequence[Presence]
    ) -> None:
        await self._execute(
            "WITH r AS (INSERT INTO replicas(id, started_at, heartbeat_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at)"
            " INSERT INTO delegate_presence(delegate_id, replica_id, mode, last_heartbeat)"
            " SELECT d, $1, m, t FROM unnest($4::text[], $5::text[], $6::float8[]) AS x(d, m, t)"
            " ON CONFLICT (delegate_id) DO UPDATE SET replica_id = excluded.replica_id,"
            " mode = excluded.mode, last_heartbeat = excluded.last_heartbeat"
            " WHERE excluded.last_heartbeat >= delegate_presence.last_heartbeat",
            replica_id,
            started_at,
            now,
            [p.delegate_id for p in seen],
            [p.mode for p in seen],
            [p.last_heartbeat for p in seen],
        )

    async def presence(self, since: float) -> dict[str, Presence]:
        rows = await self._fetch(
            "SELECT p.delegate_id, p.replica_id, p.mode, p.last_heartbeat"
            " FROM delegate_presence p JOIN replicas r ON r.id = p.replica_id"
            " WHERE p.last_heartbeat > $1 AND r.heartbeat_at > $1",
            since,
        )
        return {r["delegate_id"]: Presence(**dict(r)) for r in rows}

    async def attempts(self, task_id: str) -> list[AttemptRecord]:
        sql = f"SELECT {_ATTEMPT_COLUMNS} FROM task_attempts WHERE task_id = $1 ORDER BY attempt"  # noqa: S608
        return [AttemptRecord(**dict(r)) for r in await self._fetch(sql, task_id)]

    # -- logs -----------------------------------------------------------------------------

    async def append_logs(
        self, task_id: str, attempt: int, delegate_id: str, lines: Sequence[LogRecord]
    ) -> int:
        # One statement: the holder check takes a share lock on the task row, so a requeue
        # (an update of that row) waits until this batch is in, and the batch goes in only
        # if the check passed.
        row = await self._fetchrow(
            """
                WITH holder AS (
                    SELECT 1 FROM tasks
                    WHERE id = $1 AND attempt = $2 AND delegate_id = $3 FOR SHARE
                ), ins AS (
                    INSERT INTO task_logs(task_id, attempt, seq, stream, ts, text)
                    SELECT $1::text, $2::integer, l.seq, l.stream, l.ts, l.text
                    FROM unnest($4::bigint[], $5::text[], $6::double precision[], $7::text[])
                        AS l(seq, stream, ts, text)
                    WHERE EXISTS (SELECT 1 FROM holder)
                    ON CONFLICT DO NOTHING
                    RETURNING 1
                )
                SELECT (SELECT count(*) FROM holder) AS held, (SELECT count(*) FROM ins) AS new
                """,
            *(task_id, attempt, delegate_id),
            *([getattr(ln, col) for ln in lines] for col in ("seq", "stream", "ts", "text")),
        )
        return int(row["new"]) if row["held"] else -1

    async def get_logs(
        self, task_id: str, *, after: tuple[int, int] | None, limit: int
    ) -> list[LogRecord]:
        a_attempt, a_seq = after if after is not None else (0, -1)
        rows = await self._fetch(
            f"SELECT {_LOG_COLUMNS} FROM task_logs"  # noqa: S608
            " WHERE task_id = $1 AND (attempt, seq) > ($2, $3) ORDER BY attempt, seq LIMIT $4",
            *(task_id, a_attempt, a_seq, limit),
        )
        return [LogRecord(**dict(r)) for r in rows]

    # -- secret managers ------------------------------------------------------------------

    async def create_secret_manager(self, manager: SecretManagerRecord) -> None:
        await self._execute(
            f"INSERT INTO secret_managers({_MANAGER_COLUMNS})"  # noqa: S608
            f" VALUES ({_marks(len(_MANAGER_FIELDS))})",
            *(_encode(name, getattr(manager, name)) for name in _MANAGER_FIELDS),
        )

    async def get_secret_manager(self, manager_id: str) -> SecretManagerRecord | None:
        sql = f"SELECT {_MANAGER_COLUMNS} FROM secret_managers WHERE id = $1"  # noqa: S608
        row = await self._fetchrow(sql, manager_id)
        return None if row is None else _secret_manager(row)

    async def secret_manager_by_name(self, name: str) -> SecretManagerRecord | None:
        sql = f"SELECT {_MANAGER_COLUMNS} FROM secret_managers WHERE name = $1"  # noqa: S608
        row = await self._fetchrow(sql, name)
        return None if row is None else _secret_manager(row)

    async def list_secret_managers(self) -> list[SecretManagerRecord]:
        # COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
        sql = f'SELECT {_MANAGER_COLUMNS} FROM secret_managers ORDER BY name COLLATE "C"'  # noqa: S608
        return [_secret_manager(r) for r in await self._fetch(sql)]

    async def update_secret_manager(self, manager: SecretManagerRecord) -> bool:
        row = await self._fetchrow(
            "UPDATE secret_managers SET name = $2, kind = $3, settings = $4,"
            " credentials_secret = $5, selectors = $6, description = $7, updated_at = $8"
            " WHERE id = $1 RETURNING id",
            manager.id,
            manager.name,
            manager.kind,
            manager.settings,
            manager.credentials_secret,
            list(manager.selectors),
            manager.description,
            manager.updated_at,
        )
        return row is not None

    async def delete_secret_manager(self, manager_id: str) -> bool:
        async with self._conn(tx=True) as c:
            # The row lock waits for secrets being added to it (their foreign key check
            # holds a share lock on this row), so the count below sees them.
            found = await c.fetchval(
                "SELECT id FROM secret_managers WHERE id = $1 FOR UPDATE", manager_id
            )
            if found is None:
                return False
            kept = await c.fetchval(
                "SELECT count(*) FROM secrets WHERE manager_id = $1", manager_id
            )
            if kept:
                raise Conflict(f"secret manager {manager_id} keeps {kept} secret(s)")
            await c.execute("DELETE FROM secret_managers WHERE id = $1", manager_id)
        return True

    # -- secrets --------------------------------------------------------------------------

    async def create_secret(self, secret: SecretRecord, first: SecretVersionRecord) -> None:
        check_first_version(secret, first)
        await self._execute(
            f"WITH s AS (INSERT INTO secrets({_SECRET_COLUMNS})"  # noqa: S608
            f" VALUES ({_marks(len(_SECRET_FIELDS))}) RETURNING id)"
            f" INSERT INTO secret_versions({_VERSION_COLUMNS})"
            f" SELECT s.id, {_version_marks(len(_SECRET_FIELDS) + 1)} FROM s",
            *(getattr(secret, name) for name in _SECRET_FIELDS),
            *(getattr(first, name) for name in _VERSION_FIELDS[1:]),
        )

    async def get_secret(self, secret_id: str) -> SecretRecord | None:
        sql = f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE id = $1"  # noqa: S608
        row = await self._fetchrow(sql, secret_id)
        return None if row is None else SecretRecord(**dict(row))

    async def secret_by_name(self, name: str) -> SecretRecord | None:
        sql = f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE name = $1"  # noqa: S608
        row = await self._fetchrow(sql, name)
        return None if row is None else SecretRecord(**dict(row))

    async def secrets_by_name(self, names: Iterable[str]) -> dict[str, SecretRecord]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        sql = f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE name = ANY($1::text[])"  # noqa: S608
        return {r["name"]: SecretRecord(**dict(r)) for r in await self._fetch(sql, wanted)}

    async def list_secrets(self, *, manager_id: str | None = None) -> list[SecretRecord]:
        # In byte order, as SQLite sorts (see list_secret_managers).
        if manager_id is None:
            sql = f'SELECT {_SECRET_COLUMNS} FROM secrets ORDER BY name COLLATE "C"'  # noqa: S608
            rows = await self._fetch(sql)
        else:
            sql = (
                f"SELECT {_SECRET_COLUMNS} FROM secrets WHERE manager_id = $1"  # noqa: S608
                ' ORDER BY name COLLATE "C"'
            )
            rows = await self._fetch(sql, manager_id)
        return [SecretRecord(**dict(r)) for r in rows]

    async def add_secret_version(
        self, secret: SecretRecord, version: SecretVersionRecord
    ) -> SecretRecord | None:
        check_next_version(secret, version)
        # One statement: the version goes in only if the compare-and-set hit.
        row = await self._fetchrow(
            f"""
            WITH u AS (
                UPDATE secrets SET current_version = $2 + 1, updated_at = $3
                WHERE id = $1 AND current_version = $2
                RETURNING {_SECRET_COLUMNS}
            ), v AS (
                INSERT INTO secret_versions({_VERSION_COLUMNS})
                SELECT u.id, {_version_marks(4)} FROM u
            )
            SELECT {_SECRET_COLUMNS} FROM u
            """,  # noqa: S608
            secret.id,
            secret.current_version,
            version.created_at,
            *(getattr(version, name) for name in _VERSION_FIELDS[1:]),
        )
        return None if row is None else SecretRecord(**dict(row))

    async def secret_versions(self, secret_id: str) -> list[SecretVersionRecord]:
        sql = (
            f"SELECT {_VERSION_COLUMNS} FROM secret_versions"  # noqa: S608
            " WHERE secret_id = $1 ORDER BY version DESC"
        )
        return [SecretVersionRecord(**dict(r)) for r in await self._fetch(sql, secret_id)]

    async def get_secret_version(self, secret_id: str, version: int) -> SecretVersionRecord | None:
        sql = (
            f"SELECT {_VERSION_COLUMNS} FROM secret_versions"  # noqa: S608
            " WHERE secret_id = $1 AND version = $2"
        )
        row = await self._fetchrow(sql, secret_id, version)
        return None if row is None else SecretVersionRecord(**dict(row))

    async def current_versions(self, secret_ids: Iterable[str]) -> dict[str, SecretVersionRecord]:
        ids = sorted(set(secret_ids))
        if not ids:
            return {}
        columns = ", ".join(f"v.{name}" for name in _VERSION_FIELDS)
        rows = await self._fetch(
            f"SELECT {columns} FROM secrets s JOIN secret_versions v"  # noqa: S608
            " ON v.secret_id = s.id AND v.version = s.current_version"
            " WHERE s.id = ANY($1::text[])",
            ids,
        )
        return {r["secret_id"]: SecretVersionRecord(**dict(r)) for r in rows}

    async def delete_secret(self, secret_id: str) -> bool:
        rows = await self._fetch("DELETE FROM secrets WHERE id = $1 RETURNING id", secret_id)
        return bool(rows)

    async def move_secret(
        self, secret: SecretRecord, manager_id: str, envelopes: dict[int, str], now: float
    ) -> SecretRecord | None:
        check_envelope_versions(secret, envelopes)
        # One statement, as add_secret_version: the envelopes change only if the move hit.
        row = await self._fetchrow(
            f"""
            WITH u AS (
                UPDATE secrets SET manager_id = $4, updated_at = $5
                WHERE id = $1 AND current_version = $2 AND manager_id = $3
                RETURNING {_SECRET_COLUMNS}
            ), e AS (
                UPDATE secret_versions AS v SET envelope = n.envelope
                FROM unnest($6::integer[], $7::text[]) AS n(version, envelope)
                WHERE v.secret_id = $1 AND v.version = n.version AND EXISTS (SELECT 1 FROM u)
            )
            SELECT {_SECRET_COLUMNS} FROM u
            """,  # noqa: S608
            secret.id,
            secret.current_version,
            secret.manager_id,
            manager_id,
            now,
            list(envelopes),
            list(envelopes.values()),
        )
        return None if row is None else SecretRecord(**dict(row))

    async def envelopes_of_manager(self, manager_id: str) -> list[SecretVersionRecord]:
        columns = ", ".join(f"v.{name}" for name in _VERSION_FIELDS)
        rows = await self._fetch(
            f"SELECT {columns} FROM secrets s JOIN secret_versions v ON v.secret_id = s.id"  # noqa: S608
            " WHERE s.manager_id = $1 AND v.envelope IS NOT NULL"
            " ORDER BY v.secret_id, v.version",
            manager_id,
        )
        return [SecretVersionRecord(**dict(r)) for r in rows]

    async def replace_envelope(self, secret_id: str, version: int, old: str, new: str) -> bool:
        row = await self._fetchrow(
            "UPDATE secret_versions SET envelope = $4"
            " WHERE secret_id = $1 AND version = $2 AND envelope = $3 RETURNING version",
            *(secret_id, version, old, new),
        )
        return row is not None

    async def clear_task_secret_env(self, task_id: str) -> None:
        await self._execute("UPDATE tasks SET secret_env_sealed = NULL WHERE id = $1", task_id)

    # -- audit trail ----------------------------------------------------------------------

    async def append_audit(self, draft: AuditDraft) -> AuditEvent:
        n = len(EVENT_FIELDS)
        async with self._conn(tx=True) as c:
            # The head row's lock orders appends from every replica: a second one waits
            # here, then (READ COMMITTED re-reads a locked row) sees the first one's head.
            head = await c.fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
            event = seal(draft, int(head["seq"]) + 1, str(head["hash"]))
            await c.execute(
                # seq and hash are the first and last of the event's own values.
                f"WITH h AS (UPDATE audit_head SET seq = $1, hash = ${n} WHERE id = 1)"  # noqa: S608
                f" INSERT INTO audit_events({_AUDIT_COLUMNS}) VALUES ({_marks(n)})",
                *(getattr(event, name) for name in EVENT_FIELDS),
            )
        return event

    async def audit_head(self) -> tuple[int, str]:
        row = await self._fetchrow("SELECT seq, hash FROM audit_head WHERE id = 1")
        return int(row["seq"]), str(row["hash"])

    async def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        where: list[str] = []
        args: list[Any] = []
        for cond, value in (
            ("ts >= ${}", query.since),
            ("ts < ${}", query.until),
            ("resource_type = ${}", query.resource_type),
            ("resource_id = ${}", query.resource_id),
            ("app = ${}", query.app),
            ("action = ${}", query.action),
            ("seq < ${}", query.before),
            ("seq > ${}", query.after),
            ("(actor_id = ${0} OR actor_name = ${0})", query.actor),
            (
                "(summary ILIKE ${0} ESCAPE '\\' OR resource_name ILIKE ${0} ESCAPE '\\'"
                " OR diff ILIKE ${0} ESCAPE '\\')",
                like_pattern(query.text) if query.text else None,
            ),
        ):
            if value is not None:
                args.append(value)
                where.append(cond.format(len(args)))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        args.append(query.limit)
        order = "ASC" if query.ascending else "DESC"
        sql = (
            f"SELECT {_AUDIT_COLUMNS} FROM audit_events {clause}"  # noqa: S608
            f" ORDER BY seq {order} LIMIT ${len(args)}"
        )
        return [AuditEvent(**dict(r)) for r in await self._fetch(sql, *args)]

    async def create_audit_filter(self, saved: SavedAuditFilter) -> None:
        await self._execute(
            "INSERT INTO audit_filters(id, owner, name, query, created_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            *(saved.id, saved.owner, saved.name, saved.query, saved.created_at),
        )

    async def get_audit_filter(self, owner: str, name: str) -> SavedAuditFilter | None:
        row = await self._fetchrow(
            "SELECT id, owner, name, query, created_at FROM audit_filters"
            " WHERE owner = $1 AND name = $2",
            *(owner, name),
        )
        return None if row is None else SavedAuditFilter(**dict(row))

    async def list_audit_filters(self, owner: str) -> list[SavedAuditFilter]:
        rows = await self._fetch(
            "SELECT id, owner, name, query, created_at FROM audit_filters"
            ' WHERE owner = $1 ORDER BY name COLLATE "C"',
            owner,
        )
        return [SavedAuditFilter(**dict(r)) for r in rows]

    async def delete_audit_filter(self, owner: str, name: str) -> bool:
        rows = await self._fetch(
            "DELETE FROM audit_filters WHERE owner = $1 AND name = $2 RETURNING id", owner, name
        )
        return bool(rows)

    # -- entities ---------------------------------------------------------------------------

    async def get_entity(self, kind: str, entity_id: str) -> EntityRecord | None:
        row = await self._fetchrow(
            f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE kind = $1 AND id = $2",  # noqa: S608
            *(kind, entity_id),
        )
        return None if row is None else EntityRecord(**dict(row))

    async def entity_by_key(self, kind: str, key: str) -> EntityRecord | None:
        row = await self._fetchrow(
            f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE kind = $1 AND key = $2",  # noqa: S608
            *(kind, key),
        )
        return None if row is None else EntityRecord(**dict(row))

    async def list_entities(self, kind: str) -> list[EntityRecord]:
        rows = await self._fetch(
            f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE kind = $1"  # noqa: S608
            " ORDER BY created_at, id",
            kind,
        )
        return [EntityRecord(**dict(r)) for r in rows]

    async def insert_entity(self, entity: EntityRecord) -> None:
        await self._execute(
            f"INSERT INTO entities({_ENTITY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",  # noqa: S608
            *(getattr(entity, f) for f in _fields(EntityRecord)),
        )

    async def update_entity(self, entity: EntityRecord, expect_version: int) -> bool:
        row = await self._fetchrow(
            "UPDATE entities SET key = $1, body = $2, version = $3, updated_at = $4"
            " WHERE kind = $5 AND id = $6 AND version = $7 RETURNING id",
            *(entity.key, entity.body, entity.version, entity.updated_at),
            *(entity.kind, entity.id, expect_version),
        )
        return row is not None

    async def delete_entity(self, kind: str, entity_id: str) -> bool:
        row = await self._fetchrow(
            "DELETE FROM entities WHERE kind = $1 AND id = $2 RETURNING id", kind, entity_id
        )
        return row is not None

    # -- api keys (owners, limits) and the IP allowlist -----------------------------------

    @staticmethod
    def _api_key(row: Any) -> ApiKeyRecord:
        d = dict(row)
        d["groups"] = tuple(d["groups"])
        return ApiKeyRecord(**d)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        sql = f"SELECT {_API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"  # noqa: S608
        return [self._api_key(r) for r in await self._fetch(sql)]

    async def revoke_api_key(self, name: str, now: float) -> ApiKeyRecord | None:
        row = await self._fetchrow(
            "UPDATE api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL"  # noqa: S608
            f" RETURNING {_API_KEY_COLUMNS}",
            *(now, name),
        )
        return None if row is None else self._api_key(row)

    async def touch_api_key(self, key_id: str, now: float, *, min_interval: float) -> None:
        await self._execute(
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2"
            " AND (last_used_at IS NULL OR last_used_at <= $3)",
            *(now, key_id, now - min_interval),
        )

    async def access_settings(self) -> AccessSettings:
        sql = f"SELECT {_ACCESS_COLUMNS} FROM access_settings WHERE id = 1"  # noqa: S608
        return self._access_settings(await self._fetchrow(sql))

    @staticmethod
    def _access_settings(row: Any) -> AccessSettings:
        d = dict(row)
        d["trusted_proxies"] = tuple(d["trusted_proxies"])
        return AccessSettings(**d)

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
            changes["allowlist_enabled"] = allowlist_enabled
        if trusted_proxies is not None:
            changes["trusted_proxies"] = list(trusted_proxies)
        if api_key_max_qps is not None:
            changes["api_key_max_qps"] = api_key_max_qps
        if api_key_burst is not None:
            changes["api_key_burst"] = api_key_burst
        # Column names come from the fixed set above, never from the caller.
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, 1))
        row = await self._fetchrow(
            f"UPDATE access_settings SET {assignments} WHERE id = 1"  # noqa: S608
            f" RETURNING {_ACCESS_COLUMNS}",
            *changes.values(),
        )
        return self._access_settings(row)

    async def list_allowlist(self) -> list[AllowlistEntry]:
        sql = f"SELECT {_ALLOWLIST_COLUMNS} FROM allowlist ORDER BY created_at, id"  # noqa: S608
        return [AllowlistEntry(**dict(r)) for r in await self._fetch(sql)]

    async def add_allowlist_entry(self, entry: AllowlistEntry) -> None:
        await self._execute(
            f"INSERT INTO allowlist({_ALLOWLIST_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",  # noqa: S608
            *(entry.id, entry.cidr, entry.description, entry.enabled, entry.created_at),
        )

    async def set_allowlist_entry_enabled(
        self, entry_id: str, enabled: bool
    ) -> AllowlistEntry | None:
        row = await self._fetchrow(
            f"UPDATE allowlist SET enabled = $1 WHERE id = $2 RETURNING {_ALLOWLIST_COLUMNS}",  # noqa: S608
            *(enabled, entry_id),
        )
        return None if row is None else AllowlistEntry(**dict(row))

    async def delete_allowlist_entry(self, entry_id: str) -> AllowlistEntry | None:
        row = await self._fetchrow(
            f"DELETE FROM allowlist WHERE id = $1 RETURNING {_ALLOWLIST_COLUMNS}",  # noqa: S608
            entry_id,
        )
        return None if row is None else AllowlistEntry(**dict(row))

    # -- cross-replica notification -------------------------------------------------------

    async def notify(self, channel: str, payload: str) -> None:
        """Send ``payload`` to every listener on ``channel``, on every replica."""
        await self._execute("SELECT pg_notify($1, $2)", channel, payload)

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` on the loop for each notification on ``channel``.

        Returns once the LISTEN is active, so a notify sent after it is delivered; raises
        :class:`StoreError` (and forgets the callback) if that takes over ``listen_timeout``.
        All channels share one dedicated connection, reconnected with backoff when it drops;
        notifications sent while it is down are lost (``on_listen_reconnect`` says when).
        """
        if self._pool is None:
            raise StoreError("store is not open")
        if not await self._listener.listen(channel, callback):
            raise StoreError(f"postgres: could not LISTEN on {channel!r}")


def tasks_in_states_sql(states: Sequence[TaskState]) -> str:
    """The states go in as literals (enum values, never user text), not as a bound array:
    only then can the planner prove that the partial index ``tasks_open`` applies."""
    values = ", ".join(f"'{TaskState(s).value}'" for s in states)
    return f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state IN ({values}) ORDER BY created_at"  # noqa: S608


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


async def _migrate(conn: Any) -> None:
    """Apply pending migrations in the caller's transaction, one replica at a time."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext(current_schema()))", _MIGRATION_LOCK_CLASS
    )
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
        " applied_at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now()))"
    )
    current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_version(version) VALUES ($1)", version)
        log.info("postgres migration applied", version=version)


def _encode(col: str, value: Any) -> Any:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, TaskState):
        return value.value
    if col == "cancel_requested":
        return bool(value)
    return value


def _task(row: Any) -> TaskRecord:
    d = dict(row)
    d["state"] = TaskState(d["state"])
    d["selectors"] = tuple(d["selectors"])
    d["secret_env_names"] = tuple(d["secret_env_names"])
    return TaskRecord(**d)


def _delegate(row: Any) -> DelegateRecord:
    d = dict(row)
    d["selectors"] = tuple(d["selectors"])
    d["task_types"] = tuple(d["task_types"])
    return DelegateRecord(**d)


def _marks(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


def _version_marks(start: int) -> str:
    """Placeholders for a version's columns after ``secret_id``, from ``$start``. They carry
    their types: in INSERT ... SELECT, unlike VALUES, the target columns do not lend theirs."""
    return ", ".join(
        f"${i}::{_VERSION_TYPES[name]}" for i, name in enumerate(_VERSION_FIELDS[1:], start)
    )


def _secret_manager(row: Any) -> SecretManagerRecord:
    d = dict(row)
    d["selectors"] = tuple(d["selectors"])
    return SecretManagerRecord(**d)
