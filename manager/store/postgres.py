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

from manager.store.base import Conflict, Store, StoreError
from manager.store.postgres_listen import Listener
from manager.store.postgres_schema import MIGRATIONS
from manager.store.records import (
    ApiKeyRecord,
    AttemptRecord,
    DelegateRecord,
    LogRecord,
    Presence,
    ProfileRecord,
    TaskFilter,
    TaskRecord,
    TokenRecord,
)
from shared.protocol import TaskState

__all__ = ["PostgresStore", "tasks_in_states_sql"]

log = structlog.get_logger("tether.store")


def _fields(record: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(record))


# Column lists are the records' fields, in order, so a row maps straight onto its record.
_TASK_FIELDS = _fields(TaskRecord)
_TASK_COLUMNS = ", ".join(_TASK_FIELDS)
_TOKEN_COLUMNS = ", ".join(_fields(TokenRecord))
_API_KEY_COLUMNS = ", ".join(_fields(ApiKeyRecord))
_DELEGATE_FIELDS = _fields(DelegateRecord)
_DELEGATE_COLUMNS = ", ".join(_DELEGATE_FIELDS)
_ATTEMPT_COLUMNS = ", ".join(_fields(AttemptRecord))
_LOG_COLUMNS = ", ".join(_fields(LogRecord))
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
        except asyncpg.UniqueViolationError as exc:
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
            "INSERT INTO tokens(id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)",
            *(token.id, token.name, token.token_hash, token.created_at),
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
            "INSERT INTO api_keys(id, name, prefix, key_hash, created_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            *(key.id, key.name, key.prefix, key.key_hash, key.created_at),
        )

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        sql = f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1"  # noqa: S608
        row = await self._fetchrow(sql, key_hash)
        return None if row is None else ApiKeyRecord(**dict(row))

    # -- delegates ------------------------------------------------------------------------

    async def upsert_delegate(self, delegate: DelegateRecord) -> DelegateRecord:
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
            RETURNING {_DELEGATE_COLUMNS}
            """,  # noqa: S608
            *(_encode(name, getattr(delegate, name)) for name in _DELEGATE_FIELDS),
        )
        return _delegate(row)

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
        ):
            if value is not None:
                args.append(value)
                where.append(cond.format(len(args)))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        args.append(flt.limit)
        sql = (
            f"SELECT {_TASK_COLUMNS} FROM tasks {clause}"  # noqa: S608
            f" ORDER BY created_at DESC LIMIT ${len(args)}"
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
