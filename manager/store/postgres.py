"""The PostgreSQL store: several manager replicas share one database.

asyncpg with a small pool. Each call is one round trip where it can be: a task update and its
attempt row are one statement (data-modifying CTEs), and a log batch is one
``INSERT ... SELECT FROM unnest(...)`` guarded by the holder check.

Task updates are the same compare-and-set as SQLite: ``UPDATE ... WHERE id AND state AND
attempt``. Under READ COMMITTED a concurrent writer of the same row waits for the row lock,
then re-checks the WHERE against the committed row, so exactly one of many concurrent claims
wins, whichever replica makes them.

Cross-replica wake-ups use LISTEN/NOTIFY over one dedicated connection per store, which is
reconnected when it drops (see :meth:`PostgresStore.listen`). So do the notices of committed
changes to what replicas cache (groups, applications, environments, API keys, the access
settings: :meth:`PostgresStore.watch_changes`), sent once a change commits.

The SQL is :mod:`manager.store.sql`'s; here is only what PostgreSQL does its own way: the
pool, statements that compose several of those texts as CTEs, batches as arrays
(``unnest``), row locks, and LISTEN/NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from secrets import token_hex
from typing import Any

import asyncpg
import structlog

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
    EVERYTHING,
    BadData,
    ChangeWatcher,
    Conflict,
    DiskFull,
    EntityWrite,
    NewDataKey,
    StoreError,
    check_envelope_versions,
    check_first_version,
    check_next_version,
)
from manager.store.entity_cache import EntityCache
from manager.store.health import WriteHealth
from manager.store.postgres_listen import Listener
from manager.store.sql import audit, data_keys, secrets, tasks
from manager.store.sql.dialect import Dialect, bind, fields, params_of, render
from manager.store.sql.statements import Missed, Params, Step, hit, of_first_row, of_value
from manager.store.sql.store import SqlStore

__all__ = ["PostgresStore"]

log = structlog.get_logger("tether.store")

# Committed changes to what replicas cache (manager.store.base.AccessStore.watch_changes).
CHANGES_CHANNEL = "tether_changes"
# Two-key advisory lock: this class id, and the hash of the schema being migrated, so replicas
# of one deployment take turns while unrelated schemas (tests in parallel) do not wait.
_MIGRATION_LOCK_CLASS = 0x7E7E

# The database is down or failed: the caller gets a StoreError (a 503), not a crash. An
# InterfaceError is the client's side of the same ("connection is closed" while PostgreSQL
# restarts, a pool closing), and so is an InternalClientError: a query sent on a connection
# the server has just terminated meets one about one time in ten ("cannot switch to state").
_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# A value the database refuses: class 22 (data exception; asyncpg raises it too for a value
# it cannot encode) and 54 (a program limit, e.g. an index row too large). Bad data, not an
# outage: BadData (a 422).
_BAD_DATA: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
)
# What a refused value was, by SQLSTATE: the driver's message may quote the value itself.
_BAD_DATA_KINDS = {
    "22021": "text with a NUL byte or bytes that are not UTF-8",
    "22P05": "text the database cannot hold (a NUL byte, \\u0000 in JSON)",
    "22000": "a value the database driver cannot encode (a lone surrogate in text?)",
    "54000": "a value too large for the database",
}


def _bad_data(exc: BaseException) -> BadData:
    state = str(getattr(exc, "sqlstate", "") or "")
    return BadData(_BAD_DATA_KINDS.get(state, f"a value out of range or malformed ({state})"))


# Statements composed here are f-strings or sums of manager.store.sql's constant texts and
# fixed fragments, never of a caller's value: hence S608's noqa on them.

# In INSERT ... SELECT, unlike VALUES, the target columns do not lend their types to the
# parameters: these carry them. ``v_``: the version's, apart from the secret's.
_VERSION_TYPES = {
    "version": "integer",
    "created_at": "double precision",
    "envelope": "text",
    "ref": "jsonb",
    "size": "integer",
    "created_by": "text",
}
# The version's columns after secret_id, in {VERSION_COLUMNS}' order.
_TYPED_VERSION = ", ".join(
    f":v_{name}::{_VERSION_TYPES[name]}" for name in fields(SecretVersionRecord)[1:]
)
_RENEW_LEASES = (
    "UPDATE tasks AS t SET lease_until = {LEASE_NOW} + h.lease_for"
    " FROM unnest(:ids::text[], :delegate_ids::text[], :lease_fors::float8[])"
    " AS h(id, delegate_id, lease_for)"
    " WHERE t.id = h.id AND t.delegate_id = h.delegate_id AND t.state = 'running'"
    " RETURNING t.id"
)
_RECORD_PRESENCE = (
    "WITH r AS (INSERT INTO replicas(id, started_at, heartbeat_at)"
    " VALUES (:replica_id, :started_at, :now)"
    " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at)"
    " INSERT INTO delegate_presence(delegate_id, replica_id, mode, last_heartbeat)"
    " SELECT d, :replica_id, m, t"
    " FROM unnest(:delegate_ids::text[], :modes::text[], :times::float8[]) AS x(d, m, t)"
    " ON CONFLICT (delegate_id) DO UPDATE SET replica_id = excluded.replica_id,"
    " mode = excluded.mode, last_heartbeat = excluded.last_heartbeat"
    " WHERE excluded.last_heartbeat >= delegate_presence.last_heartbeat"
)
# One statement: the holder check takes a share lock on the task row, so a requeue (an
# update of that row) waits until this batch is in, and the batch goes in only if the check
# passed.
_APPEND_LOGS = """
    WITH holder AS (
        SELECT 1 FROM tasks
        WHERE id = :task_id AND attempt = :attempt AND delegate_id = :delegate_id FOR SHARE
    ), ins AS (
        INSERT INTO task_logs(task_id, attempt, seq, stream, ts, text, data)
        SELECT :task_id::text, :attempt::integer, l.seq, l.stream, l.ts, l.text, l.data
        FROM unnest(
            :seqs::bigint[], :streams::text[], :tss::double precision[], :texts::text[],
            :datas::bytea[]
        ) AS l(seq, stream, ts, text, data)
        WHERE EXISTS (SELECT 1 FROM holder)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM holder) AS held, (SELECT count(*) FROM ins) AS new
    """
# The secret and its first version, one statement.
_CREATE_SECRET = (
    "WITH s AS (" + secrets.INSERT_SECRET + " RETURNING id)"  # noqa: S608
    " INSERT INTO secret_versions({VERSION_COLUMNS})"
    " SELECT s.id, " + _TYPED_VERSION + " FROM s"
)
# One statement: the version goes in only if the compare-and-set hit.
_ADD_SECRET_VERSION = (
    "WITH u AS (" + secrets.BUMP_VERSION + "), v AS ("  # noqa: S608
    " INSERT INTO secret_versions({VERSION_COLUMNS})"
    " SELECT u.id, " + _TYPED_VERSION + " FROM u)"
    " SELECT {SECRET_COLUMNS} FROM u"
)
# One statement, as add_secret_version: the envelopes change only if the move hit.
_MOVE_SECRET = (
    "WITH u AS (" + secrets.MOVE_SECRET + "), e AS ("  # noqa: S608
    " UPDATE secret_versions AS v SET envelope = n.envelope"
    " FROM unnest(:versions::integer[], :envelopes::text[]) AS n(version, envelope)"
    " WHERE v.secret_id = :id AND v.version = n.version AND EXISTS (SELECT 1 FROM u))"
    " SELECT {SECRET_COLUMNS} FROM u"
)
# The head's new values ride with the event's insert.
_APPEND_AUDIT = "WITH h AS (" + audit.SET_HEAD + ") " + audit.INSERT_EVENT


class PostgresStore(SqlStore):
    dialect = Dialect.POSTGRES

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
        entity_cache: EntityCache | None = None,
    ) -> None:
        """``server_settings`` go to every connection (``search_path`` picks a schema).

        ``on_listen_reconnect`` is called each time the LISTEN connection comes back after a
        loss: notifications sent in between are gone, so the owner re-reads what it missed.
        ``listen_check_interval`` probes an idle LISTEN connection (None: never).
        """
        super().__init__(entity_cache=entity_cache)
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._server_settings = dict(server_settings or {})
        self._command_timeout = command_timeout
        self._close_timeout = close_timeout
        self._pool: Any = None
        self.health = WriteHealth()
        self._listener = Listener(
            self._connect_one,
            timeout=listen_timeout,
            reconnect_delays=listen_reconnect_delays,
            check_interval=listen_check_interval,
            on_reconnect=self._listen_restored,
        )
        self._on_listen_reconnect = on_listen_reconnect
        # Tells this store's own change notices from the other replicas'.
        self._me = token_hex(6)
        self._watching = False

    def _listen_restored(self) -> None:
        # Notices sent while the connection was down are gone: whatever was cached may be old.
        if self._watching:
            self._heard(EVERYTHING)
        if self._on_listen_reconnect is not None:
            self._on_listen_reconnect()

    async def _changed(self, what: str) -> None:
        await super()._changed(what)
        try:
            await self.notify(CHANGES_CHANNEL, f"{self._me}|{what}")
        except StoreError as exc:
            # The change is committed; other replicas see it when their caches age out.
            log.warning("change notice not sent", what=what, error=str(exc))

    async def watch_changes(self, watcher: ChangeWatcher) -> None:
        await super().watch_changes(watcher)
        if not self._watching:
            await self.listen(CHANGES_CHANNEL, self._change_notice)
            self._watching = True

    def _change_notice(self, payload: str) -> None:
        sender, _, what = payload.partition("|")
        if sender != self._me and what:
            self._heard(what)

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
        except asyncpg.DiskFullError as exc:
            self.health.full(str(exc))
            raise DiskFull(f"postgres: {exc}") from exc
        # A foreign key too, as SQLite's IntegrityError: a secret naming a manager that was
        # deleted meanwhile, or a manager deleted while a secret moves into it.
        except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError) as exc:
            raise Conflict(str(exc)) from exc
        except _BAD_DATA as exc:
            raise _bad_data(exc) from None
        except _DB_ERRORS as exc:
            raise StoreError(f"postgres: {exc}") from exc

    async def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        text, names = render(sql, Dialect.POSTGRES)
        async with self._conn() as c:
            rows = list(await c.fetch(text, *bind(names, params or {})))
        if _writes(text):
            self.health.wrote()
        return rows

    async def _fetch_audited(
        self, sql: str, params: Params | None, audit: AuditOf[list[Any]]
    ) -> list[Any]:
        text, names = render(sql, Dialect.POSTGRES)
        async with self._conn(tx=True) as c:
            rows = list(await c.fetch(text, *bind(names, params or {})))
            if (entry := audit(rows)) is not None:
                await _chain(c, entry)
        return rows

    async def _write_together(
        self, steps: Sequence[Step], audit: AuditOf[list[list[Any]]] | None
    ) -> list[list[Any]] | None:
        rendered = [(*render(step.sql, Dialect.POSTGRES), step) for step in steps]
        try:
            async with self._conn(tx=True) as c:
                done = []
                for text, names, step in rendered:
                    rows = list(await c.fetch(text, *bind(names, step.params)))
                    done.append(hit(step, rows))  # a miss rolls the transaction back
                if audit is not None and (entry := audit(done)) is not None:
                    await _chain(c, entry)
        except Missed:
            return None
        self.health.wrote()
        return done

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                server_settings=self._server_settings,
                command_timeout=self._command_timeout,
                init=_init_connection,
                reset=_keep_session,
            )
        except _DB_ERRORS as exc:
            raise StoreError(f"postgres: {exc}") from exc
        try:
            async with self._conn() as c:
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

    # -- tasks: one statement each, where SQLite runs several --------------------------------

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
        text = tasks.INSERT_TASK
        ctes = []
        if data_key is not None:
            # The key rides in the insert's statement: one round trip and one commit.
            ctes.append(f"k AS ({data_keys.ADD_WITH_RECORD})")
            params.update(data_keys.key_params(data_key))
        key = task.idempotency_key
        if claim is not None and key is None:
            # So does the attempt's row: with no key, the insert cannot be a conflict.
            ctes.append(f"a AS ({tasks.START_ATTEMPT})")
        if ctes:
            text = f"WITH {', '.join(ctes)} {text}"
        insert, names = render(text, Dialect.POSTGRES)
        if key is None:
            await self._write(text, params, of_value(task, audit))
            return task, True
        by_key, key_names = render(tasks.TASK_BY_IDEMPOTENCY_KEY, Dialect.POSTGRES)
        clear = render(tasks.CLEAR_IDEMPOTENCY_KEY, Dialect.POSTGRES)[0]
        async with self._conn(tx=True) as c:
            for _ in range(3):
                row = await c.fetchrow(by_key, *bind(key_names, params))
                if row is not None:
                    if task.created_at - row["created_at"] <= idempotency_window:
                        return self._task(row), False
                    # Outside the window the key is free again; the old task keeps its id.
                    await c.execute(clear, row["id"])
                if await c.fetchval(insert, *bind(names, params)) is not None:
                    if claim is not None:
                        start, start_names = render(tasks.START_ATTEMPT, Dialect.POSTGRES)
                        await c.execute(start, *bind(start_names, params))
                    if audit is not None and (entry := audit(task)) is not None:
                        await _chain(c, entry)
                    return task, True
        raise Conflict(f"idempotency key {key!r} keeps changing hands")

    async def _update_task(
        self,
        update: str,
        params: dict[str, Any],
        *,
        end_attempt: bool,
        start_attempt: bool,
        audit: AuditOf[list[Any]] | None = None,
    ) -> Any:
        # The attempt rows ride in the same statement, each written only if the update hit.
        ctes = [f"u AS ({update})"]
        if end_attempt:
            ctes.append(f"e AS ({tasks.END_ATTEMPT} AND EXISTS (SELECT 1 FROM u))")  # noqa: S608
        if start_attempt:
            ctes.append(
                "s AS (INSERT INTO task_attempts(task_id, attempt, delegate_id, started_at)"
                " SELECT :start_task_id::text, :start_attempt::integer,"
                " :start_delegate_id::text, :start_started_at::double precision FROM u)"
            )
        sql = update
        if len(ctes) > 1:
            sql = f"WITH {', '.join(ctes)} SELECT {{TASK_COLUMNS}} FROM u"  # noqa: S608
        rows = await self._write(sql, params, audit)
        return rows[0] if rows else None

    async def renew_leases(self, held: Sequence[tuple[str, str, float]]) -> set[str]:
        if not held:
            return set()
        params = {
            "ids": [task_id for task_id, _, _ in held],
            "delegate_ids": [delegate_id for _, delegate_id, _ in held],
            "lease_fors": [float(lease_for) for _, _, lease_for in held],
        }
        return {str(r["id"]) for r in await self._fetch(_RENEW_LEASES, params)}

    async def record_presence(
        self, replica_id: str, started_at: float, now: float, seen: Sequence[Presence]
    ) -> None:
        params = {
            "replica_id": replica_id,
            "started_at": started_at,
            "now": now,
            "delegate_ids": [p.delegate_id for p in seen],
            "modes": [p.mode for p in seen],
            "times": [p.last_heartbeat for p in seen],
        }
        await self._fetch(_RECORD_PRESENCE, params)

    async def append_logs(
        self, task_id: str, attempt: int, delegate_id: str, lines: Sequence[LogRecord]
    ) -> int:
        params = {
            "task_id": task_id,
            "attempt": attempt,
            "delegate_id": delegate_id,
            "seqs": [ln.seq for ln in lines],
            "streams": [ln.stream for ln in lines],
            "tss": [ln.ts for ln in lines],
            "texts": [ln.text for ln in lines],
            "datas": [ln.data for ln in lines],
        }
        row = await self._fetchrow(_APPEND_LOGS, params)
        return int(row["new"]) if row["held"] else -1

    # -- secrets ------------------------------------------------------------------------------

    async def create_secret(
        self,
        secret: SecretRecord,
        first: SecretVersionRecord,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretRecord] | None = None,
    ) -> None:
        check_first_version(secret, first)
        step = Step(_CREATE_SECRET, {**_version_params(self, first), **params_of(secret)})
        await self._with_entities([step], entities, of_value(secret, audit))

    async def add_secret_version(
        self,
        secret: SecretRecord,
        version: SecretVersionRecord,
        *,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord | None:
        check_next_version(secret, version)
        params = {
            **_version_params(self, version),
            "id": secret.id,
            "current_version": secret.current_version,
            "updated_at": version.created_at,
        }
        rows = await self._write(
            _ADD_SECRET_VERSION, params, of_first_row(secrets.secret_record, audit)
        )
        return secrets.secret_record(rows[0]) if rows else None

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
        params = {
            **params_of(secret),
            "to_manager_id": manager_id,
            "updated_at": now,
            "versions": list(envelopes),
            "envelopes": list(envelopes.values()),
        }
        rows = await self._write(_MOVE_SECRET, params, of_first_row(secrets.secret_record, audit))
        return secrets.secret_record(rows[0]) if rows else None

    # -- audit trail --------------------------------------------------------------------------

    async def append_audit(self, draft: AuditDraft, key: ChainKey | None = None) -> AuditEvent:
        async with self._conn(tx=True) as c:
            return await _chain(c, AuditAppend(draft, key))

    # -- cross-replica notification -------------------------------------------------------

    async def notify(self, channel: str, payload: str) -> None:
        """Send ``payload`` to every listener on ``channel``, on every replica."""
        await self._fetch(
            "SELECT pg_notify(:channel, :payload)", {"channel": channel, "payload": payload}
        )

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


@functools.lru_cache(maxsize=512)
def _writes(sql: str) -> bool:
    """Whether a statement writes (so its success shows the database has room again)."""
    return _WRITE.search(sql) is not None


# A data-modifying statement, alone or in a CTE (not a row lock's FOR UPDATE).
_WRITE = re.compile(
    r"\b(INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+(\s+AS\s+\w+)?\s+SET)\b", re.IGNORECASE
)


async def _chain(c: Any, entry: AuditAppend) -> AuditEvent:
    """Append ``entry`` to the chain in the transaction open on ``c``. Last in it: the head
    row's lock orders appends from every replica (a second one waits here, then, as READ
    COMMITTED re-reads a locked row, sees the first one's head), and it is held from here
    to the commit only, never while a change waits for a row of its own."""
    head, _ = render(audit.HEAD, Dialect.POSTGRES)
    append, names = render(_APPEND_AUDIT, Dialect.POSTGRES)
    row = await c.fetchrow(head)
    event = seal(entry.draft, int(row["seq"]) + 1, str(row["hash"]), entry.key)
    try:
        await c.execute(append, *bind(names, params_of(event)))
    except asyncpg.IntegrityConstraintViolationError as exc:
        # Not the change's Conflict (a name in use): the event could not be written.
        raise StoreError(f"postgres: audit event not written: {exc}") from exc
    return event


def _version_params(store: PostgresStore, version: SecretVersionRecord) -> dict[str, Any]:
    return {f"v_{name}": value for name, value in store._version_params(version).items()}


async def _keep_session(_conn: Any) -> None:
    """What a pooled connection is reset with when it is released: nothing more than
    asyncpg's own clean-up (an open transaction rolled back). asyncpg's default also sends
    ``RESET ALL; UNLISTEN *; CLOSE ALL; pg_advisory_unlock_all()``, one more round trip per
    store call, for session state the store never leaves on a pooled connection: LISTEN
    has a connection of its own, no statement SETs a session value or keeps a cursor, and
    the migration's advisory lock is released by the migration itself."""


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


async def schema_version(conn: Any) -> int:
    """The schema's version, read without writing (0: never migrated)."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def _migrate(conn: Any) -> None:
    """Apply pending migrations, one transaction each, one replica at a time."""
    # A session lock across the transactions: replicas starting together take turns.
    await conn.execute(
        "SELECT pg_advisory_lock($1, hashtext(current_schema()))", _MIGRATION_LOCK_CLASS
    )
    try:
        current = await schema_version(conn)
        todo = migrations.pending(  # refuses a newer schema before any write
            current, migrations.for_dialect(Dialect.POSTGRES, migrations.MIGRATIONS)
        )
        if todo:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
                " applied_at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now()))"
            )
        for version, sql in todo:
            try:
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_version(version) VALUES ($1)", version)
            except asyncpg.PostgresError as exc:
                raise migrations.failed(version, current, exc) from None
            current = version
            log.info("postgres migration applied", version=version)
    finally:
        await conn.execute(
            "SELECT pg_advisory_unlock($1, hashtext(current_schema()))", _MIGRATION_LOCK_CLASS
        )
