"""Tasks, their attempts and logs, leases, delegates, profiles and presence: the SQL once.

The statements here that the backends run inside their own transactions (the idempotent
insert, the compare-and-set update) are constants too; the backends compose them.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import (
    AttemptRecord,
    Claimed,
    DelegateRecord,
    LeaseFor,
    LogRecord,
    Presence,
    ProfileRecord,
    Readable,
    TaskFilter,
    TaskRecord,
)
from manager.store.base import TaskStore
from manager.store.sql.dialect import Dialect, fields, one_of, params_of
from manager.store.sql.statements import Statements, of_first_row, of_rows
from shared.limits import MAX_LOG_PAGE_BYTES
from shared.protocol import TaskState

__all__ = [
    "CLEAR_IDEMPOTENCY_KEY",
    "END_ATTEMPT",
    "INSERT_TASK",
    "START_ATTEMPT",
    "TASK_BY_IDEMPOTENCY_KEY",
    "TaskQueries",
    "task_params",
    "task_record",
    "tasks_in_states_sql",
]

# The dynamic statements below (a filter, a SET list, states as literals) are f-strings of
# fixed column names, conditions and enum values, never of a caller's text: hence S608's


_JSON_COLUMNS = {"payload", "selectors", "secret_env_names", "outputs", "deployment", "labels"}
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
    "acquire_key",
}

GET_TASK = "SELECT {TASK_COLUMNS} FROM tasks WHERE id = :id"
TASK_BY_IDEMPOTENCY_KEY = (
    "SELECT {TASK_COLUMNS} FROM tasks WHERE idempotency_key = :idempotency_key{FOR_UPDATE}"
)
CLEAR_IDEMPOTENCY_KEY = "UPDATE tasks SET idempotency_key = NULL WHERE id = :id"
# Two submits with one new key race to the unique index (PostgreSQL): the loser's insert
# does nothing, and its next look-up returns the winner's task.
# ``lease_until`` is bound as a duration (a claim written with the task: Claimed), counted
# from now on the store's clock as every lease is; NULL for a task written queued.
_INSERT_VALUES = ", ".join(
    f"{{LEASE_NOW}} + :{name}" if name == "lease_until" else f":{name}"
    for name in fields(TaskRecord)
)
INSERT_TASK = (
    # The record's own field names (never user text), as {TASK_PARAMS} would bind them.
    f"INSERT INTO tasks({{TASK_COLUMNS}}) VALUES ({_INSERT_VALUES})"  # noqa: S608
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
)
END_ATTEMPT = (
    "UPDATE task_attempts SET finished_at = :end_at, status = :end_status"
    " WHERE task_id = :id AND attempt = :expect_attempt"
)
START_ATTEMPT = (
    "INSERT INTO task_attempts(task_id, attempt, delegate_id, started_at)"
    " VALUES (:start_task_id, :start_attempt, :start_delegate_id, :start_started_at)"
)
_EXTEND_LEASES = (
    "UPDATE tasks SET lease_until = {LEASE_NOW} + :lease_for WHERE state = 'running'"
    " AND (lease_until IS NULL OR lease_until < {LEASE_NOW} + :lease_for) RETURNING id"
)
_EXPIRED_LEASES = (
    "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'running'"
    " AND lease_until < {LEASE_NOW} ORDER BY lease_until LIMIT :limit"
)
# The rows as written: an audit event is made of them (manager.api.audit_record).
_PUT_PROFILE = (
    "INSERT INTO profiles(name, selectors, script, interpreter, updated_at)"
    " VALUES (:name, :selectors, :script, :interpreter, :updated_at)"
    " ON CONFLICT (name) DO UPDATE SET"
    " selectors = excluded.selectors, script = excluded.script,"
    " interpreter = excluded.interpreter, updated_at = excluded.updated_at"
    " RETURNING name, selectors, script, interpreter, updated_at"
)
_DELETE_PROFILE = (
    "DELETE FROM profiles WHERE name = :name"
    " RETURNING name, selectors, script, interpreter, updated_at"
)
_LIST_PROFILES = (
    "SELECT name, selectors, script, interpreter, updated_at FROM profiles ORDER BY name"
)
_PRESENCE = (
    "SELECT p.delegate_id, p.replica_id, p.mode, p.last_heartbeat"
    " FROM delegate_presence p JOIN replicas r ON r.id = p.replica_id"
    " WHERE p.last_heartbeat > :since AND r.heartbeat_at > :since"
)
_ATTEMPTS = "SELECT {ATTEMPT_COLUMNS} FROM task_attempts WHERE task_id = :task_id ORDER BY attempt"
# The same with the name of each attempt's delegate (none once the delegate is removed).
_ATTEMPTS_NAMED = """
    SELECT {A_ATTEMPT_COLUMNS}, d.name AS delegate_name
    FROM task_attempts a LEFT JOIN delegates d ON d.id = a.delegate_id
    WHERE a.task_id = :task_id ORDER BY a.attempt
"""
# A piece of a log page: at most :scan lines and :max_bytes of text. The sizes are summed
# over the keys and lengths alone, and the text fetched only for the lines kept, so neither
# the database nor this process holds more than the page. Line number :always is kept
# whatever its size (1 for a page's first line, so a page always moves its cursor on; 0 for
# none). upto is the bytes up to and including each line.
_LOG_PIECE = """
    WITH sized AS (
        SELECT attempt, seq, {LOG_BYTES} AS n FROM task_logs
        WHERE task_id = :task_id AND (attempt, seq) > (:after_attempt, :after_seq)
        ORDER BY attempt, seq LIMIT :scan
    ), running AS (
        SELECT attempt, seq, ROW_NUMBER() OVER w AS rn, SUM(n) OVER w AS upto
        FROM sized WINDOW w AS (ORDER BY attempt, seq)
    )
    SELECT {L_LOG_COLUMNS}, r.upto
    FROM running r JOIN task_logs l
        ON l.task_id = :task_id AND l.attempt = r.attempt AND l.seq = r.seq
    WHERE r.rn = :always OR r.upto <= :max_bytes
    ORDER BY l.attempt, l.seq
"""
# The first piece of a page scans this many lines; the next ones as many as the bytes left
# should hold at the sizes seen so far (and a quarter more), so a page of long lines reads
# little more than it returns (each size read means reading the line, on SQLite).
_FIRST_SCAN = 64
_UPSERT_DELEGATE = """
    INSERT INTO delegates({DELEGATE_COLUMNS}) VALUES ({DELEGATE_PARAMS})
    ON CONFLICT (public_key) DO UPDATE SET
        name = excluded.name, token_id = excluded.token_id,
        hostname = excluded.hostname, version = excluded.version,
        protocol_version = excluded.protocol_version,
        selectors = excluded.selectors, task_types = excluded.task_types,
        capacity = excluded.capacity, last_seen = excluded.last_seen,
        isolation = excluded.isolation
    WHERE delegates.token_id = excluded.token_id
    RETURNING {DELEGATE_COLUMNS}
    """
_GET_DELEGATE = "SELECT {DELEGATE_COLUMNS} FROM delegates WHERE id = :id"
_SET_DRAINING = (
    "UPDATE delegates SET draining = :draining WHERE id = :id RETURNING {DELEGATE_COLUMNS}"
)
_LIST_DELEGATES = "SELECT {DELEGATE_COLUMNS} FROM delegates ORDER BY name, created_at, id"
_DELEGATES_NAMED = (
    "SELECT {DELEGATE_COLUMNS} FROM delegates WHERE name = :name ORDER BY created_at, id"
)
_DELETE_DELEGATE = "DELETE FROM delegates WHERE id = :id RETURNING id"


def tasks_in_states_sql(states: Sequence[TaskState]) -> str:
    """The states go in as literals (enum values, never user text), not as parameters: only
    then can the planner prove that the partial index ``tasks_open`` applies."""
    values = ", ".join(f"'{TaskState(s).value}'" for s in states)
    return f"SELECT {{TASK_COLUMNS}} FROM tasks WHERE state IN ({values}) ORDER BY created_at"  # noqa: S608


def _encode(col: str, value: Any, dump: Callable[[Any], Any]) -> Any:
    if col in _JSON_COLUMNS:
        return dump(list(value) if isinstance(value, tuple) else value)
    if isinstance(value, TaskState):
        return value.value
    if col == "cancel_requested":
        return bool(value)
    if isinstance(value, LeaseFor):
        return float(value.seconds)
    return value


def task_params(
    task: TaskRecord, dump: Callable[[Any], Any], claim: Claimed | None = None
) -> dict[str, Any]:
    """An insert's parameters (INSERT_TASK): with ``claim``, its lease as a duration and its
    attempt's row (START_ATTEMPT's)."""
    params = {name: _encode(name, getattr(task, name), dump) for name in fields(TaskRecord)}
    params["lease_until"] = None if claim is None else claim.lease_for
    if claim is not None:
        params.update({f"start_{k}": v for k, v in params_of(claim.attempt).items()})
    return params


def _update_task_sql(
    task_id: str,
    expect_state: TaskState,
    expect_attempt: int,
    changes: dict[str, Any],
    dump: Callable[[Any], Any],
    *,
    skip_locked: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The compare-and-set UPDATE of ``changes``, returning the task, and its parameters.
    ``skip_locked`` (PostgreSQL only): the row is locked first, and skipped when another
    transaction holds it (TaskStore.update_task)."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    # A lease is a duration on the store's clock, never a replica's time.
    sets = ", ".join(
        f"{col} = {{LEASE_NOW}} + :set_{col}"
        if isinstance(value, LeaseFor)
        else f"{col} = :set_{col}"
        for col, value in changes.items()
    )
    params = {f"set_{col}": _encode(col, value, dump) for col, value in changes.items()}
    params.update(id=task_id, expect_state=expect_state.value, expect_attempt=expect_attempt)
    where = "id = :id AND state = :expect_state AND attempt = :expect_attempt"
    if skip_locked:
        # The row as its lock is taken, or no row at all when another transaction holds it.
        where = f"id = (SELECT id FROM tasks WHERE {where} FOR UPDATE SKIP LOCKED)"  # noqa: S608
    sql = f"UPDATE tasks SET {sets} WHERE {where} RETURNING {{TASK_COLUMNS}}"  # noqa: S608
    return sql, params


def task_record(row: Any, load: Callable[[Any], Any]) -> TaskRecord:
    d = dict(row)
    d["state"] = TaskState(d["state"])
    for name in ("payload", "outputs", "deployment", "labels"):
        d[name] = load(d[name])
    d["labels"] = d["labels"] or {}
    d["selectors"] = tuple(load(d["selectors"]))
    d["secret_env_names"] = tuple(load(d["secret_env_names"]))
    d["cancel_requested"] = bool(d["cancel_requested"])
    return TaskRecord(**d)


class TaskQueries(Statements, TaskStore):
    """The task methods that are one statement on either backend."""

    def _task(self, row: Any) -> TaskRecord:
        return task_record(row, self._load)

    def _delegate(self, row: Any) -> DelegateRecord:
        d = dict(row)
        d["selectors"] = tuple(self._load(d["selectors"]))
        d["task_types"] = tuple(self._load(d["task_types"]))
        d["draining"] = bool(d["draining"])
        return DelegateRecord(**d)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        row = await self._fetchrow(GET_TASK, {"id": task_id})
        return None if row is None else self._task(row)

    async def list_tasks(self, flt: TaskFilter) -> list[TaskRecord]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": flt.limit}
        for name, cond, value in (
            ("state", "state = :state", None if flt.state is None else flt.state.value),
            (
                "delegate_id",
                "(delegate_id = :delegate_id OR delegate_id IN"
                " (SELECT id FROM delegates WHERE name = :delegate_id))",
                flt.delegate_id,
            ),
            ("name", "name = :name", flt.name),
            # Ids are [a-z0-9_] (the API refuses other prefixes); LIKE's _ is escaped.
            (
                "id_prefix",
                "id LIKE :id_prefix ESCAPE '!'",
                None if flt.id_prefix is None else flt.id_prefix.replace("_", "!_") + "%",
            ),
            ("since", "created_at >= :since", flt.since),
            ("until", "created_at < :until", flt.until),
            ("app_id", "app_id = :app_id", flt.app_id),
            ("env_id", "env_id = :env_id", flt.env_id),
            ("service", "{SERVICE} = :service", flt.service),
        ):
            if value is not None:
                where.append(cond)
                params[name] = value
        if flt.deployments_only:
            where.append("deployment IS NOT NULL")
        if flt.readable is not None:
            where.append(_readable_sql(flt.readable, params))
        for number, (key, value) in enumerate(flt.labels):
            # The key is bound (a JSON path on SQLite), never written into the text.
            if self.dialect is Dialect.POSTGRES:
                where.append(f"labels->>:label_key{number} = :label_value{number}")
                params[f"label_key{number}"] = key
            else:
                where.append(f"json_extract(labels, :label_key{number}) = :label_value{number}")
                params[f"label_key{number}"] = f'$."{key}"'
            params[f"label_value{number}"] = value
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        # Ties (one clock tick) newest id first: ids are time-ordered.
        sql = (
            f"SELECT {{TASK_COLUMNS}} FROM tasks {clause}"  # noqa: S608
            " ORDER BY created_at DESC, id DESC LIMIT :limit"
        )
        return [self._task(r) for r in await self._fetch(sql, params)]

    async def tasks_in_states(self, states: Sequence[TaskState]) -> list[TaskRecord]:
        if not states:
            return []
        return [self._task(r) for r in await self._fetch(tasks_in_states_sql(states))]

    @abc.abstractmethod
    async def _update_task(
        self,
        update: str,
        params: dict[str, Any],
        *,
        end_attempt: bool,
        start_attempt: bool,
        audit: AuditOf[list[Any]] | None = None,
    ) -> Any:
        """Run ``update`` (the compare-and-set, returning the task's row) and, only if it hit,
        END_ATTEMPT and START_ATTEMPT as asked, and the audit event: one transaction. The
        row, or None."""

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
        audit: AuditOf[TaskRecord] | None = None,
        skip_locked: bool = False,
    ) -> TaskRecord | None:
        sql, params = _update_task_sql(
            task_id,
            expect_state,
            expect_attempt,
            changes,
            self._dump,
            # SQLite has no row locks: its one writer holds the whole file.
            skip_locked=skip_locked and self.dialect is Dialect.POSTGRES,
        )
        if end_attempt_status is not None:
            params["end_at"] = end_attempt_at or changes.get("finished_at") or time.time()
            params["end_status"] = end_attempt_status
        if start_attempt is not None:
            params.update({f"start_{k}": v for k, v in params_of(start_attempt).items()})
        params.update(self._lease_params())
        row = await self._update_task(
            sql,
            params,
            end_attempt=end_attempt_status is not None,
            start_attempt=start_attempt is not None,
            audit=of_first_row(self._task, audit),
        )
        return None if row is None else self._task(row)

    async def extend_leases(self, lease_for: float) -> int:
        params = {"lease_for": lease_for, **self._lease_params()}
        return len(await self._fetch(_EXTEND_LEASES, params))

    async def expired_leases(self, *, limit: int = 500) -> list[TaskRecord]:
        rows = await self._fetch(_EXPIRED_LEASES, {"limit": limit, **self._lease_params()})
        return [self._task(r) for r in rows]

    async def put_profile(
        self, profile: ProfileRecord, *, audit: AuditOf[ProfileRecord] | None = None
    ) -> None:
        # Selectors are JSON text on both backends here (a TEXT column).
        params = params_of(profile)
        params["selectors"] = json.dumps(list(profile.selectors))
        await self._write(_PUT_PROFILE, params, of_first_row(_profile, audit))

    async def delete_profile(
        self, name: str, *, audit: AuditOf[ProfileRecord] | None = None
    ) -> bool:
        """``audit``: of the row deleted."""
        rows = await self._write(_DELETE_PROFILE, {"name": name}, of_first_row(_profile, audit))
        return bool(rows)

    async def list_profiles(self) -> list[ProfileRecord]:
        return [_profile(r) for r in await self._fetch(_LIST_PROFILES)]

    async def presence(self, since: float) -> dict[str, Presence]:
        rows = await self._fetch(_PRESENCE, {"since": since})
        return {r["delegate_id"]: Presence(**dict(r)) for r in rows}

    async def attempts(self, task_id: str) -> list[AttemptRecord]:
        rows = await self._fetch(_ATTEMPTS, {"task_id": task_id})
        return [AttemptRecord(**dict(r)) for r in rows]

    async def attempts_named(self, task_id: str) -> tuple[list[AttemptRecord], dict[str, str]]:
        rows = [dict(r) for r in await self._fetch(_ATTEMPTS_NAMED, {"task_id": task_id})]
        names = {r["delegate_id"]: r["delegate_name"] for r in rows if r["delegate_name"]}
        for r in rows:
            del r["delegate_name"]
        return [AttemptRecord(**r) for r in rows], names

    async def get_logs(
        self,
        task_id: str,
        *,
        after: tuple[int, int] | None,
        limit: int,
        max_bytes: int = MAX_LOG_PAGE_BYTES,
    ) -> list[LogRecord]:
        lines: list[LogRecord] = []
        pos = after if after is not None else (0, -1)
        used, scan = 0, min(limit, _FIRST_SCAN)
        while True:
            rows = await self._fetch(
                _LOG_PIECE,
                {
                    "task_id": task_id,
                    "after_attempt": pos[0],
                    "after_seq": pos[1],
                    "scan": scan,
                    "always": 0 if lines else 1,
                    "max_bytes": max_bytes - used,
                },
            )
            for r in rows:
                row = dict(r)
                del row["upto"]
                lines.append(LogRecord(**row))
            # Fewer than scanned: the bytes ran out, or the log did.
            if len(rows) < scan or len(lines) >= limit:
                return lines
            used += rows[-1]["upto"]
            if used >= max_bytes:
                return lines
            pos = (lines[-1].attempt, lines[-1].seq)
            expected = (max_bytes - used) * len(lines) * 5 // (4 * max(used, 1)) + 1
            scan = min(limit - len(lines), max(_FIRST_SCAN, expected))

    async def upsert_delegate(self, delegate: DelegateRecord) -> DelegateRecord | None:
        params = params_of(delegate)
        params["selectors"] = self._dump(list(delegate.selectors))
        params["task_types"] = self._dump(list(delegate.task_types))
        # No row back: the key is another token's delegate (the WHERE of the upsert).
        row = await self._fetchrow(_UPSERT_DELEGATE, params)
        return None if row is None else self._delegate(row)

    async def get_delegate(self, delegate_id: str) -> DelegateRecord | None:
        row = await self._fetchrow(_GET_DELEGATE, {"id": delegate_id})
        return None if row is None else self._delegate(row)

    async def set_draining(self, delegate_id: str, draining: bool) -> DelegateRecord | None:
        row = await self._fetchrow(_SET_DRAINING, {"id": delegate_id, "draining": draining})
        return None if row is None else self._delegate(row)

    async def list_delegates(self) -> list[DelegateRecord]:
        return [self._delegate(r) for r in await self._fetch(_LIST_DELEGATES)]

    async def delegates_named(self, name: str) -> list[DelegateRecord]:
        return [self._delegate(r) for r in await self._fetch(_DELEGATES_NAMED, {"name": name})]

    async def delete_delegate(self, delegate_id: str) -> bool:
        return await self._fetchrow(_DELETE_DELEGATE, {"id": delegate_id}) is not None

    async def set_draining_of(
        self,
        delegate_ids: Sequence[str],
        draining: bool,
        *,
        audit: AuditOf[list[DelegateRecord]] | None = None,
    ) -> list[DelegateRecord]:
        if not delegate_ids:
            return []
        cond, params = one_of(self.dialect, "id", "ids", delegate_ids)
        # Only the rows that flip are written: a drain of drained delegates writes nothing.
        sql = (
            f"UPDATE delegates SET draining = :draining WHERE {cond}"  # noqa: S608
            " AND draining <> :draining RETURNING {DELEGATE_COLUMNS}"
        )
        params["draining"] = draining
        rows = await self._write(sql, params, of_rows(self._delegate, audit))
        return [self._delegate(r) for r in rows]

    async def delete_delegates(
        self, delegate_ids: Sequence[str], *, audit: AuditOf[list[DelegateRecord]] | None = None
    ) -> list[DelegateRecord]:
        if not delegate_ids:
            return []
        cond, params = one_of(self.dialect, "id", "ids", delegate_ids)
        sql = f"DELETE FROM delegates WHERE {cond} RETURNING {{DELEGATE_COLUMNS}}"  # noqa: S608
        rows = await self._write(sql, params, of_rows(self._delegate, audit))
        return [self._delegate(r) for r in rows]


def _profile(row: Any) -> ProfileRecord:
    return ProfileRecord(
        row["name"],
        tuple(json.loads(row["selectors"])),
        row["script"],
        row["interpreter"],
        row["updated_at"],
    )


def _in(column: str, values: frozenset[str], prefix: str, params: dict[str, Any]) -> str:
    """``column IN (...)`` over ``values``, each bound; an empty set holds nothing."""
    if not values:
        return "1 = 0"
    names = []
    for number, value in enumerate(sorted(values)):
        params[f"{prefix}{number}"] = value
        names.append(f":{prefix}{number}")
    return f"{column} IN ({', '.join(names)})"


def _readable_sql(readable: Readable, params: dict[str, Any]) -> str:
    """The tasks ``readable`` lets a reader see, as Places.target and Grants.allows judge
    them: outside any application, in an environment it may read, or in one deleted since
    (judged as production of its application)."""
    parts = [f"(app_id IS NULL OR env_id IS NULL) AND {'1 = 1' if readable.outside else '1 = 0'}"]
    parts.append(_in("env_id", readable.envs, "rd_env", params))
    if readable.gone_all or readable.gone_apps:
        gone = "1 = 1" if readable.gone_all else _in("app_id", readable.gone_apps, "rd_app", params)
        known = _in("env_id", readable.known, "rd_known", params)
        parts.append(f"NOT ({known}) AND ({gone})")
    return "(" + " OR ".join(f"({p})" for p in parts) + ")"
