"""Retention purges of entities by age (incidents, webhook delivery ids): the SQL once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import EntityRecord
from manager.store.base import AccessStore
from manager.store.sql.statements import Statements, of_rows

__all__ = ["PurgeQueries"]

# The oldest first, at most :limit at once: a purge never holds a long transaction.
_PURGE = (
    "DELETE FROM entities WHERE kind = :kind AND id IN ("
    " SELECT id FROM entities WHERE kind = :kind AND updated_at < :before"
    " ORDER BY updated_at, id LIMIT :limit"
    ") RETURNING {ENTITY_COLUMNS}"
)


class PurgeQueries(Statements, AccessStore):
    # EntityQueries' row reader (the two are mixed into one SqlStore).
    _entity: Callable[[Any], EntityRecord]

    async def purge_entities(
        self,
        kind: str,
        before: float,
        limit: int,
        *,
        audit: AuditOf[list[EntityRecord]] | None = None,
    ) -> list[EntityRecord]:
        params = {"kind": kind, "before": before, "limit": limit}
        rows = await self._write(_PURGE, params, of_rows(self._entity, audit))
        if rows:
            await self._changed(kind)
        return [self._entity(r) for r in rows]
