"""Tasks' data sealed at rest: the store as the task services see it, with each task's
script, env values, outputs, deployment details and log lines sealed under the task's data
key (manager.keys.data_keys, owner ``task:<id>``) on the way in, and opened on the way out.

What stays clear is what the manager must read without the key to list, filter, dispatch
and time tasks: ids, type, state, attempts, times, selectors, app/env, submitter, the
delegate, exit code and error, the names of secret env (the values are sealed to the master
key already), a deployment's service and environment, and each log line's position, stream
and time (docs/operations.md, "Encryption at rest").

Formats, told apart from rows written before sealing existed (which read as they are):

- ``payload`` and ``outputs`` (JSON): ``{"$sealed": base64}``, of the JSON text;
- ``deployment``: ``{"service", "environment", "$sealed": base64}``, the rest sealed;
- a log line: ``text`` empty and ``data`` the sealed record of ``t`` + the text or ``b`` +
  the bytes. A line stored before always had text when it had data (its display form).

Each record's associated data names the task, the field and, for a line, its attempt,
stream and seq: a row copied to another task or position does not open.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
from collections.abc import Sequence
from typing import Any, cast

import structlog

from manager.core.audit_chain import AuditAppend, AuditOf
from manager.keys.data_keys import DataKey, DataKeyError, DataKeys, is_sealed
from manager.records import AttemptRecord, Claimed, LogRecord, TaskFilter, TaskRecord
from manager.store.base import BadData, Store, StoreError
from shared.limits import MAX_LOG_PAGE_BYTES
from shared.logbytes import shown
from shared.protocol import TaskState

__all__ = [
    "SEALED",
    "UNREADABLE_LINE",
    "SealedTasks",
    "open_line",
    "owner_of",
    "seal_lines",
    "sealed_tasks",
]

log = structlog.get_logger("tether.tasks")

SEALED = "$sealed"
# What a line that does not open with its task's key reads as: the page still reads.
UNREADABLE_LINE = "[this line does not open with its task's key]"
_CLEAR_DEPLOYMENT = ("service", "environment")


def owner_of(task_id: str) -> str:
    return f"task:{task_id}"


def _log_field(attempt: int, stream: str) -> str:
    return f"log:{attempt}:{stream}"


class SealedTasks:
    """The task methods of a :class:`Store`, sealing and opening; every other method is the
    store's own (``__getattr__``)."""

    def __init__(self, store: Store, keys: DataKeys) -> None:
        self._store = store
        self._keys = keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    # -- tasks ------------------------------------------------------------------------

    async def insert_task(
        self,
        task: TaskRecord,
        *,
        idempotency_window: float,
        audit: AuditOf[TaskRecord] | None = None,
        claim: Claimed | None = None,
    ) -> tuple[TaskRecord, bool]:
        # A task id is new at its insert (manager.tasks.service makes it), and so is its key.
        owner = owner_of(task.id)
        # Its key is stored by the insert, in its transaction: one commit per submission.
        key, new_key = await self._keys.made(owner)
        sealed = _seal_task(task, key)
        try:
            stored, created = await self._store.insert_task(
                sealed,
                idempotency_window=idempotency_window,
                audit=None if audit is None else _opening(audit, key, sealed, task),
                data_key=new_key,
                claim=claim,
            )
        except BaseException:
            # The key made here may not be the one stored (a row of that id was there).
            self._keys.drop_cached(owner)
            await self._drop_key_of_unmade(task.id)
            raise
        if not created:
            await self._keys.forget(owner)  # an earlier task of that key answers
        if stored is sealed:
            # The row written is the one sealed here: it reads as the task in hand, with no
            # need to open what was just sealed (a decrypt and a JSON parse per submission).
            return task, created
        return await self._open(stored), created

    async def _drop_key_of_unmade(self, task_id: str) -> None:
        """The insert failed: its key goes too, so a refused submit leaves no row behind.
        Only once the task is known not to be there (an answer lost after a commit must not
        cost the task its key); when that cannot be known, the key stays, harmless."""
        with contextlib.suppress(StoreError):
            if await self._store.get_task(task_id) is None:
                await self._keys.forget(owner_of(task_id))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        task = await self._store.get_task(task_id)
        return None if task is None else await self._open(task)

    async def list_tasks(self, flt: TaskFilter) -> list[TaskRecord]:
        return await self._open_all(await self._store.list_tasks(flt))

    async def tasks_in_states(self, states: Sequence[TaskState]) -> list[TaskRecord]:
        return await self._open_all(await self._store.tasks_in_states(states))

    async def expired_leases(self, *, limit: int = 500) -> list[TaskRecord]:
        return await self._open_all(await self._store.expired_leases(limit=limit))

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
        key = await self._keys.key(owner_of(task_id))
        sealed = dict(changes)
        if sealed.get("outputs"):
            sealed["outputs"] = _seal_json(key, "outputs", sealed["outputs"])
        if sealed.get("deployment") is not None:
            sealed["deployment"] = _seal_deployment(key, sealed["deployment"])
        updated = await self._store.update_task(
            task_id,
            expect_state=expect_state,
            expect_attempt=expect_attempt,
            changes=sealed,
            start_attempt=start_attempt,
            end_attempt_status=end_attempt_status,
            end_attempt_at=end_attempt_at,
            audit=None if audit is None else _opening(audit, key),
            skip_locked=skip_locked,
        )
        return None if updated is None else _open_task(updated, key)

    async def _open(self, task: TaskRecord) -> TaskRecord:
        if not _has_sealed(task):
            return task  # stored before sealing, or nothing to seal
        key = (await self._keys.existing([owner_of(task.id)])).get(owner_of(task.id))
        if key is None:
            raise StoreError(f"task {task.id} is sealed but has no data key")
        return _open_task(task, key)

    async def _open_all(self, tasks: list[TaskRecord]) -> list[TaskRecord]:
        owners = [owner_of(t.id) for t in tasks if _has_sealed(t)]
        keys = await self._keys.existing(owners) if owners else {}
        out = []
        for task in tasks:
            if not _has_sealed(task):
                out.append(task)
                continue
            key = keys.get(owner_of(task.id))
            if key is None:
                raise StoreError(f"task {task.id} is sealed but has no data key")
            out.append(_open_task(task, key))
        return out

    # -- logs -------------------------------------------------------------------------

    async def append_logs(
        self, task_id: str, attempt: int, delegate_id: str, lines: Sequence[LogRecord]
    ) -> int:
        owner = owner_of(task_id)
        key = (await self._keys.existing([owner])).get(owner)
        if key is None:
            # No key yet: a task submitted before sealing existed, still running; or no
            # such task, which must not leave a key behind (the store answers -1 for it).
            if await self._store.get_task(task_id) is None:
                return -1
            key = await self._keys.key(owner)
        return await self._store.append_logs(task_id, attempt, delegate_id, seal_lines(key, lines))

    async def get_logs(
        self,
        task_id: str,
        *,
        after: tuple[int, int] | None,
        limit: int,
        max_bytes: int = MAX_LOG_PAGE_BYTES,
    ) -> list[LogRecord]:
        lines = await self._store.get_logs(task_id, after=after, limit=limit, max_bytes=max_bytes)
        if not lines or (not _line_sealed(lines[-1]) and not any(map(_line_sealed, lines))):
            return lines  # written before sealing (the newest line is sealed if any is)
        owner = owner_of(task_id)
        key = (await self._keys.existing([owner])).get(owner)
        return [open_line(key, ln) if _line_sealed(ln) else ln for ln in lines]


def sealed_tasks(store: Store, keys: DataKeys) -> Store:
    """``store`` as the task services use it: typed as the store it stands for."""
    return cast(Store, SealedTasks(store, keys))


# -- records ------------------------------------------------------------------------------


def _seal_json(key: DataKey, field: str, value: Any) -> dict[str, str]:
    blob = key.seal(field, 0, json.dumps(value, separators=(",", ":")).encode())
    return {SEALED: base64.b64encode(blob).decode()}


def _sealed_blob(value: Any) -> bytes | None:
    """The sealed record in a JSON column, or None when the column holds plain data."""
    if not isinstance(value, dict) or not isinstance(value.get(SEALED), str):
        return None
    try:
        return base64.b64decode(value[SEALED], validate=True)
    except (binascii.Error, ValueError):
        return None


def _open_json(key: DataKey, field: str, blob: bytes) -> Any:
    try:
        return json.loads(key.open(field, 0, blob))
    except DataKeyError as exc:
        raise StoreError(str(exc)) from None


def _seal_deployment(key: DataKey, deployment: dict[str, Any]) -> dict[str, Any]:
    clear = {k: deployment[k] for k in _CLEAR_DEPLOYMENT if k in deployment}
    rest = {k: v for k, v in deployment.items() if k not in _CLEAR_DEPLOYMENT}
    return {**clear, **_seal_json(key, "deployment", rest)}


def _seal_task(task: TaskRecord, key: DataKey) -> TaskRecord:
    return dataclasses.replace(
        task,
        payload=_seal_json(key, "payload", task.payload),
        outputs=_seal_json(key, "outputs", task.outputs) if task.outputs else {},
        deployment=None if task.deployment is None else _seal_deployment(key, task.deployment),
    )


def _has_sealed(task: TaskRecord) -> bool:
    return any(_sealed_blob(v) is not None for v in (task.payload, task.outputs, task.deployment))


def _open_task(task: TaskRecord, key: DataKey) -> TaskRecord:
    payload, outputs, deployment = task.payload, task.outputs, task.deployment
    blob = _sealed_blob(payload)
    if blob is not None:
        payload = _open_json(key, "payload", blob)
    blob = _sealed_blob(outputs)
    if blob is not None:
        outputs = _open_json(key, "outputs", blob)
    blob = _sealed_blob(deployment)
    if deployment is not None and blob is not None:
        clear = {k: v for k, v in deployment.items() if k != SEALED}
        deployment = {**clear, **_open_json(key, "deployment", blob)}
    return dataclasses.replace(task, payload=payload, outputs=outputs, deployment=deployment)


def _opening(
    audit: AuditOf[TaskRecord],
    key: DataKey,
    sealed: TaskRecord | None = None,
    plain: TaskRecord | None = None,
) -> AuditOf[TaskRecord]:
    """``audit`` told the task as it reads, not as it is stored (it runs inside the store's
    transaction: the key is already in hand, so opening is synchronous). When the row
    written is ``sealed`` itself (an insert of it), it reads as ``plain``: nothing to open."""

    def opened(task: TaskRecord) -> AuditAppend | None:
        if plain is not None and task is sealed:
            return audit(plain)
        return audit(_open_task(task, key))

    return opened


def seal_lines(key: DataKey, lines: Sequence[LogRecord]) -> list[LogRecord]:
    try:
        plain = [
            (
                _log_field(ln.attempt, ln.stream),
                ln.seq,
                b"t" + ln.text.encode() if ln.data is None else b"b" + ln.data,
            )
            for ln in lines
        ]
    except UnicodeEncodeError:
        # What the store says of such text when it is stored clear (a 422, nothing kept).
        raise BadData("text that is not Unicode (a lone surrogate)") from None
    return [
        LogRecord(ln.attempt, ln.seq, ln.stream, ln.ts, "", blob)
        for ln, blob in zip(lines, key.seal_many(plain), strict=True)
    ]


def _line_sealed(line: LogRecord) -> bool:
    return line.text == "" and line.data is not None and is_sealed(line.data)


def open_line(key: DataKey | None, line: LogRecord) -> LogRecord:
    try:
        if key is None:
            raise DataKeyError("the task has no data key")  # noqa: TRY301 (one outcome)
        plain = key.open(_log_field(line.attempt, line.stream), line.seq, cast(bytes, line.data))
    except DataKeyError as exc:
        log.warning("log line does not open", seq=line.seq, attempt=line.attempt, reason=str(exc))
        return dataclasses.replace(line, text=UNREADABLE_LINE, data=None)
    # Built directly: dataclasses.replace costs more than the decryption on a short line.
    if plain[:1] == b"t":
        return LogRecord(line.attempt, line.seq, line.stream, line.ts, plain[1:].decode())
    raw = plain[1:]
    return LogRecord(line.attempt, line.seq, line.stream, line.ts, shown(raw), raw)
