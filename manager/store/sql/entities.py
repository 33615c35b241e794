"""Users, groups, applications, environments and sessions (manager.access.directory), kept
as JSON documents by kind: the SQL once, and every method of theirs.

The kinds read on every request (groups, applications, environments) are answered from
memory (manager.store.entity_cache); every write announces its kind once committed."""

from __future__ import annotations

from typing import Any

from manager.records import EntityRecord
from manager.store.base import AccessStore
from manager.store.entity_cache import EntityCache, Loaded
from manager.store.sql.dialect import params_of
from manager.store.sql.statements import Statements

__all__ = ["EntityQueries"]

_GET = "SELECT {ENTITY_COLUMNS} FROM entities WHERE kind = :kind AND id = :id"
_BY_KEY = "SELECT {ENTITY_COLUMNS} FROM entities WHERE kind = :kind AND key = :key"
_LIST = "SELECT {ENTITY_COLUMNS} FROM entities WHERE kind = :kind ORDER BY created_at, id"
_INSERT = "INSERT INTO entities({ENTITY_COLUMNS}) VALUES ({ENTITY_PARAMS})"
_UPDATE = (
    "UPDATE entities SET key = :key, body = :body, version = :version, updated_at = :updated_at"
    " WHERE kind = :kind AND id = :id AND version = :expect_version RETURNING id"
)
_DELETE = "DELETE FROM entities WHERE kind = :kind AND id = :id RETURNING id"


class EntityQueries(Statements, AccessStore):
    # Made by the backend (manager.store.sql.store.SqlStore), one per store.
    _entity_cache: EntityCache

    def _entity(self, row: Any) -> EntityRecord:
        d = dict(row)
        d["body"] = self._load(d["body"])
        return EntityRecord(**d)

    def _params(self, entity: EntityRecord) -> dict[str, Any]:
        params = params_of(entity)
        params["body"] = self._dump(entity.body)
        return params

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

    async def insert_entity(self, entity: EntityRecord) -> None:
        await self._fetch(_INSERT, self._params(entity))
        await self._changed(entity.kind)

    async def update_entity(self, entity: EntityRecord, expect_version: int) -> bool:
        params = {**self._params(entity), "expect_version": expect_version}
        updated = bool(await self._fetch(_UPDATE, params))
        if updated:
            await self._changed(entity.kind)
        return updated

    async def delete_entity(self, kind: str, entity_id: str) -> bool:
        deleted = bool(await self._fetch(_DELETE, {"kind": kind, "id": entity_id}))
        if deleted:
            await self._changed(kind)
        return deleted
