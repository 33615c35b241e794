"""Retention's SQL once (manager.retention): bounded pages of finished tasks, their log lines
deleted a bounded batch at a time, and the audit trail cut behind a signed checkpoint.

Every statement here touches at most ``limit`` rows and runs in a transaction of its own, so
a purge never holds the database (SQLite's one writer, PostgreSQL's row locks) for long: the
task path's writes wait behind one short batch at most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from manager.core.audit_checkpoint import AuditCheckpoint
from manager.store.base import PurgeCandidate, RetentionStore
from manager.store.sql.statements import Statements, Step

__all__ = ["RetentionQueries"]

# Only finished states are ever purged (the IN lists below): a task still queued or running
# is never touched.
_FINISHED = frozenset({"succeeded", "failed", "cancelled", "timed_out", "expired"})

_PAGE = (
    "SELECT t.id, t.created_at, t.state, t.finished_at, p.task_id AS purged FROM tasks t"
    " LEFT JOIN task_logs_purged p ON p.task_id = t.id"
    " WHERE {PLACE} AND t.created_at < :cutoff"
    " AND (t.created_at > :after_ts OR (t.created_at = :after_ts AND t.id > :after_id))"
    " ORDER BY t.created_at, t.id LIMIT :limit"
)
_IN_ENV = "t.app_id = :app_id AND t.env_id = :env_id"
_NOWHERE = "t.app_id IS NULL AND t.env_id IS NULL"
_DELETE_LOGS = (
    "DELETE FROM task_logs WHERE task_id = :task_id AND (attempt, seq) IN"
    " (SELECT attempt, seq FROM task_logs WHERE task_id = :task_id"
    " ORDER BY attempt, seq LIMIT :limit) RETURNING seq"
)
# Only for a finished task: one still running keeps writing lines.
_LOGS_PURGED = (
    "INSERT INTO task_logs_purged(task_id, purged_at) SELECT id, :now FROM tasks"
    " WHERE id = :task_id"
    " AND state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'expired')"
    " ON CONFLICT (task_id) DO NOTHING RETURNING task_id"
)
_FORGET_PURGED = "DELETE FROM task_logs_purged WHERE task_id = :task_id RETURNING task_id"
_DELETE_ATTEMPTS = "DELETE FROM task_attempts WHERE task_id = :task_id RETURNING attempt"
_DELETE_TASK = (
    "DELETE FROM tasks WHERE id = :task_id"
    " AND state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'expired') RETURNING id"
)

# The purged task's data key goes with it (crypto-shredding: a copy of its sealed rows in a
# backup no longer opens once backups of the key age out too), only once the task row is gone.
_FORGET_DATA_KEY = (
    "DELETE FROM data_keys WHERE owner = 'task:' || :task_id"
    " AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = :task_id) RETURNING owner"
)

_CHECKPOINTS = "SELECT seq, hash, key_id, created_at, signature FROM audit_checkpoints ORDER BY seq"
_ADD_CHECKPOINT = (
    "INSERT INTO audit_checkpoints(seq, hash, key_id, created_at, signature)"
    " VALUES (:seq, :hash, :key_id, :created_at, :signature)"
)
_FIRST_SEQ = "SELECT MIN(seq) AS seq FROM audit_events"
_LAST_BEFORE = "SELECT MAX(seq) AS seq FROM audit_events WHERE ts < :ts"
_EVENT_HASH = "SELECT hash FROM audit_events WHERE seq = :seq"
_DELETE_AUDIT = (
    "DELETE FROM audit_events WHERE seq IN"
    " (SELECT seq FROM audit_events WHERE seq <= :upto ORDER BY seq LIMIT :limit)"
    " RETURNING seq"
)


class RetentionQueries(Statements, RetentionStore):
    async def purge_page(
        self,
        place: tuple[str, str] | None,
        cutoff: float,
        after: tuple[float, str],
        limit: int,
    ) -> list[PurgeCandidate]:
        params: dict[str, Any] = {
            "cutoff": cutoff,
            "after_ts": after[0],
            "after_id": after[1],
            "limit": limit,
        }
        if place is None:
            sql = _PAGE.replace("{PLACE}", _NOWHERE)
        else:
            sql = _PAGE.replace("{PLACE}", _IN_ENV)
            params["app_id"], params["env_id"] = place
        return [
            PurgeCandidate(
                id=r["id"],
                created_at=float(r["created_at"]),
                finished=r["state"] in ("succeeded", "failed", "cancelled", "timed_out", "expired"),
                finished_at=None if r["finished_at"] is None else float(r["finished_at"]),
                logs_purged=r["purged"] is not None,
            )
            for r in await self._fetch(sql, params)
        ]

    async def delete_task_logs(self, task_id: str, limit: int) -> int:
        return len(await self._fetch(_DELETE_LOGS, {"task_id": task_id, "limit": limit}))

    async def mark_logs_purged(self, task_id: str, now: float) -> bool:
        return bool(await self._fetch(_LOGS_PURGED, {"task_id": task_id, "now": now}))

    async def delete_finished_tasks(self, task_ids: Sequence[str]) -> int:
        steps: list[Step] = []
        for task_id in task_ids:
            steps.append(Step(_DELETE_ATTEMPTS, {"task_id": task_id}))
            steps.append(Step(_FORGET_PURGED, {"task_id": task_id}))
            steps.append(Step(_DELETE_TASK, {"task_id": task_id}))
            steps.append(Step(_FORGET_DATA_KEY, {"task_id": task_id}))
        if not steps:
            return 0
        done = await self._write_together(steps, None)
        return 0 if done is None else sum(len(rows) for rows in done[2::4])

    async def audit_checkpoints(self) -> list[AuditCheckpoint]:
        return [
            AuditCheckpoint(
                seq=int(r["seq"]),
                hash=r["hash"],
                key_id=r["key_id"],
                created_at=float(r["created_at"]),
                signature=r["signature"],
            )
            for r in await self._fetch(_CHECKPOINTS)
        ]

    async def add_audit_checkpoint(self, cp: AuditCheckpoint) -> None:
        await self._fetch(
            _ADD_CHECKPOINT,
            {
                "seq": cp.seq,
                "hash": cp.hash,
                "key_id": cp.key_id,
                "created_at": cp.created_at,
                "signature": cp.signature,
            },
        )

    async def audit_first_seq(self) -> int | None:
        row = await self._fetchrow(_FIRST_SEQ)
        return None if row is None or row["seq"] is None else int(row["seq"])

    async def audit_last_before(self, ts: float) -> int | None:
        row = await self._fetchrow(_LAST_BEFORE, {"ts": ts})
        return None if row is None or row["seq"] is None else int(row["seq"])

    async def audit_event_hash(self, seq: int) -> str | None:
        row = await self._fetchrow(_EVENT_HASH, {"seq": seq})
        return None if row is None else str(row["hash"])

    async def delete_audit_upto(self, upto: int, limit: int) -> int:
        return len(await self._fetch(_DELETE_AUDIT, {"upto": upto, "limit": limit}))
