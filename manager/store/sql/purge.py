"""Retention purges of entities by age (incidents, webhook delivery ids): the SQL once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import EntityRecord
from manager.store.base import AccessStore
from manager.store.sql.dialect import Dialect
from manager.store.sql.statements import Statements, Step, of_rows

__all__ = ["PurgeQueries"]

# The oldest first, at most :limit at once: a purge never holds a long transaction.
# With the key_owner of purge_entities: the purged entities' data keys (owners
# ``<key_owner>:<id>``) go in the purge's transaction (crypto-shredding). PostgreSQL: one
# statement, the keys of exactly the rows it deleted. SQLite: the keys of the batch's rows
# first, then the rows, by the same selection; nothing can write between the two, since the
# first holds SQLite's one write lock until the transaction ends.
_BATCH = (
    "SELECT id FROM entities WHERE kind = :kind AND updated_at < :before"
    " ORDER BY updated_at, id LIMIT :limit"
)
_PURGE = "DELETE FROM entities WHERE kind = :kind AND id IN ({BATCH}) RETURNING {ENTITY_COLUMNS}"
_PURGE_WITH_KEYS_PG = (
    "WITH gone AS (DELETE FROM entities WHERE kind = :kind AND id IN ({BATCH})"
    " RETURNING {ENTITY_COLUMNS}), shredded AS (DELETE FROM data_keys WHERE owner IN"
    " (SELECT CAST(:owner_kind AS TEXT) || id FROM gone) RETURNING owner)"
    " SELECT * FROM gone"
)
_FORGET_KEYS_SQLITE = (
    "DELETE FROM data_keys WHERE owner IN (SELECT :owner_kind || id FROM ({BATCH})) RETURNING owner"
)
_PURGE, _PURGE_WITH_KEYS_PG, _FORGET_KEYS_SQLITE = (
    sql.replace("{BATCH}", _BATCH) for sql in (_PURGE, _PURGE_WITH_KEYS_PG, _FORGET_KEYS_SQLITE)
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
        params: dict[str, Any] = {"kind": kind, "before": before, "limit": limit}
        if key_owner is None:
            rows = await self._write(_PURGE, params, of_rows(self._entity, audit))
        elif self.dialect is Dialect.POSTGRES:
            params["owner_kind"] = f"{key_owner}:"
            rows = await self._write(_PURGE_WITH_KEYS_PG, params, of_rows(self._entity, audit))
        else:
            keys = {**params, "owner_kind": f"{key_owner}:"}
            of_purged = of_rows(self._entity, audit)
            done = await self._write_together(
                [Step(_FORGET_KEYS_SQLITE, keys), Step(_PURGE, params)],
                None if of_purged is None else (lambda steps: of_purged(steps[1])),
            )
            rows = [] if done is None else done[1]
        if rows:
            await self._changed(kind)
        return [self._entity(r) for r in rows]
