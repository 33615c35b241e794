"""Retention purges of entities by age (incidents, webhook delivery ids): the SQL once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import EntityRecord
from manager.store.base import AccessStore
from manager.store.sql.statements import Statements, Step, of_rows

__all__ = ["PurgeQueries"]

# The oldest first, at most :limit at once: a purge never holds a long transaction.
_PURGE = (
    "DELETE FROM entities WHERE kind = :kind AND id IN ("
    " SELECT id FROM entities WHERE kind = :kind AND updated_at < :before"
    " ORDER BY updated_at, id LIMIT :limit"
    ") RETURNING {ENTITY_COLUMNS}"
)


# In the purge's transaction, after it: the data keys of the kind's owners (``<kind>:<id>``)
# whose entity is gone. Only keys made before the cut: a key made for an entity whose insert
# is still on its way (made first, then the row) is never taken. A key the owner range and
# created_at bound is a primary-key range read; the purged rows' keys are among them (made
# when the entity was, before its last write), and so are those left by a failed insert.
_FORGET_KEYS = (
    "DELETE FROM data_keys WHERE owner > :lo AND owner < :hi AND created_at < :before"
    " AND NOT EXISTS (SELECT 1 FROM entities e WHERE e.kind = :kind"
    " AND e.id = substr(data_keys.owner, :cut)) RETURNING owner"
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
        key_owner: str | None = None,
    ) -> list[EntityRecord]:
        params = {"kind": kind, "before": before, "limit": limit}
        if key_owner is None:
            rows = await self._write(_PURGE, params, of_rows(self._entity, audit))
        else:
            keys = {
                "kind": kind,
                "before": before,
                # ';' follows ':' in every collation's byte order: the range is the prefix.
                "lo": f"{key_owner}:",
                "hi": f"{key_owner};",
                "cut": len(key_owner) + 2,
            }
            of_purged = of_rows(self._entity, audit)
            done = await self._write_together(
                [Step(_PURGE, params), Step(_FORGET_KEYS, keys)],
                None if of_purged is None else (lambda steps: of_purged(steps[0])),
            )
            rows = [] if done is None else done[0]
        if rows:
            await self._changed(kind)
        return [self._entity(r) for r in rows]
