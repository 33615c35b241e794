"""The wrapped data keys of sealed records' owners: the SQL once (manager.keys.data_keys)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from manager.store.base import DataKeyStore, NewDataKey
from manager.store.sql.dialect import one_of
from manager.store.sql.statements import Statements

__all__ = ["ADD_WITH_RECORD", "DataKeyQueries", "key_params"]

# Two replicas making the key of one owner at once: the second insert changes nothing and
# returns the key that won (one statement: a new owner's key costs one round trip).
_ADD = (
    "INSERT INTO data_keys(owner, wrapped, created_at) VALUES (:owner, :wrapped, :created_at)"
    " ON CONFLICT (owner) DO UPDATE SET owner = excluded.owner RETURNING wrapped"
)
# A new owner's key stored by the write of its first record (a task's insert), in that
# write's transaction: the owner is new, so nothing is there to conflict with, unless the
# write is tried again (PostgreSQL's idempotency loop): then the row already made stands.
ADD_WITH_RECORD = (
    "INSERT INTO data_keys(owner, wrapped, created_at)"
    " VALUES (:key_owner, :key_wrapped, :key_created_at) ON CONFLICT (owner) DO NOTHING"
)
_PAGE = "SELECT owner, wrapped FROM data_keys WHERE owner > :after ORDER BY owner LIMIT :limit"
_DELETE = "DELETE FROM data_keys WHERE owner = :owner RETURNING owner"
_REPLACE = (
    "UPDATE data_keys SET wrapped = :new WHERE owner = :owner AND wrapped = :old RETURNING owner"
)


def key_params(key: NewDataKey) -> dict[str, Any]:
    return {"key_owner": key.owner, "key_wrapped": key.wrapped, "key_created_at": key.created_at}


class DataKeyQueries(Statements, DataKeyStore):
    async def data_keys_of(self, owners: Sequence[str]) -> dict[str, bytes]:
        if not owners:
            return {}
        cond, params = one_of(self.dialect, "owner", "owners", owners)
        sql = f"SELECT owner, wrapped FROM data_keys WHERE {cond}"  # noqa: S608 (fixed text)
        return {r["owner"]: bytes(r["wrapped"]) for r in await self._fetch(sql, params)}

    async def add_data_key(self, owner: str, wrapped: bytes, created_at: float) -> bytes:
        params = {"owner": owner, "wrapped": wrapped, "created_at": created_at}
        row = await self._fetchrow(_ADD, params)
        return bytes(row["wrapped"])

    async def data_keys_after(self, owner: str, limit: int) -> list[tuple[str, bytes]]:
        rows = await self._fetch(_PAGE, {"after": owner, "limit": limit})
        return [(r["owner"], bytes(r["wrapped"])) for r in rows]

    async def replace_data_key(self, owner: str, old: bytes, new: bytes) -> bool:
        return await self._fetchrow(_REPLACE, {"owner": owner, "old": old, "new": new}) is not None

    async def delete_data_key(self, owner: str) -> bool:
        return await self._fetchrow(_DELETE, {"owner": owner}) is not None
