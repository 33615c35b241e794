"""What the per-concern queries need from a backend: one statement run, and its dialect."""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from manager.store.sql.dialect import Dialect

__all__ = ["Params", "Statements"]

Params = Mapping[str, Any]


class Statements(abc.ABC):
    dialect: ClassVar[Dialect]

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        """Render ``sql`` for this dialect and run it in a transaction of its own; its rows
        (mappings by column name). Database errors come out as StoreError or Conflict."""

    async def _fetchrow(self, sql: str, params: Params | None = None) -> Any:
        rows = await self._fetch(sql, params)
        return rows[0] if rows else None

    def _lease_params(self) -> dict[str, Any]:
        """What a statement with ``{LEASE_NOW}`` binds besides its own parameters: nothing
        where the database has the clock."""
        return {}

    def _dump(self, value: Any) -> Any:
        """A JSON column's parameter: text on SQLite; asyncpg's JSONB codec encodes it."""
        if self.dialect is Dialect.POSTGRES or value is None:
            return value
        return json.dumps(value)

    def _load(self, value: Any) -> Any:
        """A JSON column's value: parsed from SQLite's text; asyncpg's codec decoded it."""
        if self.dialect is Dialect.POSTGRES or value is None:
            return value
        return json.loads(value)
