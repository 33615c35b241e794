"""Users, groups, applications, environments and sessions (manager.access.directory), kept
as JSON documents by kind: the SQL once, and every method of theirs.

The kinds read on every request (groups, applications, environments) are answered from
memory (manager.store.entity_cache); every write announces its kind once committed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import EntityRecord
from manager.store.base import AccessStore, EntityWrite
from manager.store.entity_cache import EntityCache, Loaded
from manager.store.sql.dialect import params_of
from manager.store.sql.statements import Statements, Step, of_first_row, of_value

__all__ = ["EntityQueries", "entity_step"]

_GET = "SELECT {ENTITY_COLUMNS} FROM entities WHERE kind = :kind AND id = :id"
_BY_KEY = "SELECT {ENTITY_COLUMNS} FROM entities WHERE kind = :kind AND key = :key"
_LIST = "SELECT {ENTITY_COLUMNS} FROM entities WHERE kind = :kind ORDER BY created_at, id"
_INSERT = "INSERT INTO entities({ENTITY_COLUMNS}) VALUES ({ENTITY_PARAMS})"
# The rows as written: an audit event is made of them (manager.api.audit_record).
_UPDATE = (
    "UPDATE entities SET key = :key, body = :body, version = :version, updated_at = :updated_at"
    " WHERE kind = :kind AND id = :id AND version = :expect_version RETURNING {ENTITY_COLUMNS}"
)
_DELETE = "DELETE FROM entities WHERE kind = :kind AND id = :id RETURNING {ENTITY_COLUMNS}"
_DELETE_VERSION = (
    "DELETE FROM entities WHERE kind = :kind AND id = :id AND version = :expect_version"
    " RETURNING {ENTITY_COLUMNS}"
)


class EntityQueries(Statements, AccessStore):
    # Made by the backend (manager.store.sql.store.SqlStore), one per store.
    _entity_cache: EntityCache

    def _entity(self, row: Any) -> EntityRecord:
        d = dict(row)
        d["body"] = self._load(d["body"])
        return EntityRecord(**d)

    def _params(self, entity: EntityRecord) -> dict[str, Any]:
        return _params(entity, self._dump)

    async def _cached(self, kind: str) -> Loaded:
        async def load() -> list[EntityRecord]:
            return [self._entity(r) for r in await self._fetch(_LIST, {"kind": kind})]

        return await self._entity_cache.get(kind, load)

    async def get_entity(self, kind: str, entity_id: str) -> EntityRecord | None:
        if kind in self._entity_cache.kinds:
            return (await self._cached(kind)).by_id.get(entity_id)
        row = await self._fetchrow(_GET, {"kind": kind, "id": entity_id})
        return None if row is None else self._entity(row)

    async def entity_by_key(self, kind: str, key: str) -> EntityRecord | None:
        if kind in self._entity_cache.kinds:
            return (await self._cached(kind)).by_key.get(key)
        row = await self._fetchrow(_BY_KEY, {"kind": kind, "key": key})
        return None if row is None else self._entity(row)

    async def list_entities(self, kind: str) -> list[EntityRecord]:
        if kind in self._entity_cache.kinds:
            return list((await self._cached(kind)).records)
        return [self._entity(r) for r in await self._fetch(_LIST, {"kind": kind})]

    async def insert_entity(
        self, entity: EntityRecord, *, audit: AuditOf[EntityRecord] | None = None
    ) -> None:
        await self._write(_INSERT, self._params(entity), of_value(entity, audit))
        await self._changed(entity.kind)

    async def update_entity(
        self,
        entity: EntityRecord,
        expect_version: int,
        *,
        audit: AuditOf[EntityRecord] | None = None,
    ) -> bool:
        params = {**self._params(entity), "expect_version": expect_version}
        updated = bool(await self._write(_UPDATE, params, of_first_row(self._entity, audit)))
        if updated:
            await self._changed(entity.kind)
        return updated

    async def delete_entity(
        self, kind: str, entity_id: str, *, audit: AuditOf[EntityRecord] | None = None
    ) -> bool:
        params = {"kind": kind, "id": entity_id}
        deleted = bool(await self._write(_DELETE, params, of_first_row(self._entity, audit)))
        if deleted:
            await self._changed(kind)
        return deleted

    async def write_entities(
        self,
        writes: Sequence[EntityWrite],
        *,
        audit: AuditOf[list[EntityRecord | None]] | None = None,
    ) -> bool:
        steps = [self._step(w) for w in writes]

        def written(rows: list[list[Any]]) -> list[EntityRecord | None]:
            return [
                w.record
                if not w.delete and w.expect_version is None
                else (self._entity(r[0]) if r else None)
                for w, r in zip(writes, rows, strict=True)
            ]

        done = await self._write_together(
            steps, None if audit is None else lambda rows: audit(written(rows))
        )
        if done is None:
            return False
        for kind in dict.fromkeys(w.record.kind for w in writes):
            await self._changed(kind)
        return True

    def _step(self, w: EntityWrite) -> Step:
        return entity_step(w, self._dump)


def _params(entity: EntityRecord, dump: Callable[[Any], Any]) -> dict[str, Any]:
    params = params_of(entity)
    params["body"] = dump(entity.body)
    return params


def entity_step(w: EntityWrite, dump: Callable[[Any], Any]) -> Step:
    """``w`` as a step of a write of several (``dump``: the backend's JSON parameter), so
    another concern's write can carry entity writes in its transaction (a secret's usage
    scope goes with the secret)."""
    key = {"kind": w.record.kind, "id": w.record.id}
    if w.delete:
        if w.expect_version is None:
            return Step(_DELETE, key)
        return Step(_DELETE_VERSION, {**key, "expect_version": w.expect_version}, True)
    if w.expect_version is None:
        return Step(_INSERT, _params(w.record, dump))
    return Step(_UPDATE, {**_params(w.record, dump), "expect_version": w.expect_version}, True)
