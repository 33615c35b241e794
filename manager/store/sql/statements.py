"""What the per-concern queries need from a backend: one statement run, its dialect, and
where a committed change is announced."""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from manager.core.audit_chain import AuditOf
from manager.store.sql.dialect import Dialect

__all__ = [
    "Missed",
    "Params",
    "Statements",
    "Step",
    "hit",
    "of_first_row",
    "of_first_step",
    "of_rows",
    "of_value",
]

Params = Mapping[str, Any]
T = TypeVar("T")


def of_first_row(
    convert: Callable[[Any], T], audit: AuditOf[T] | None
) -> AuditOf[list[Any]] | None:
    """``audit`` of a write's rows: of its first, as a record; no event when it matched none."""
    if audit is None:
        return None
    return lambda rows: audit(convert(rows[0])) if rows else None


def of_first_step(
    convert: Callable[[Any], T], audit: AuditOf[T] | None
) -> AuditOf[list[list[Any]]] | None:
    """``audit`` of a write of several steps (:meth:`Statements._write_together`): of its
    first step's first row, as a record; no event when that step matched none."""
    first = of_first_row(convert, audit)
    if first is None:
        return None
    return lambda done: first(done[0])


def of_rows(
    convert: Callable[[Any], T], audit: AuditOf[list[T]] | None
) -> AuditOf[list[Any]] | None:
    """``audit`` of every row a write matched, as records; no event when it matched none."""
    if audit is None:
        return None
    return lambda rows: audit([convert(r) for r in rows]) if rows else None


def of_value(value: T, audit: AuditOf[T] | None) -> AuditOf[list[Any]] | None:
    """``audit`` of a write that returns no row (an insert): of what it inserted."""
    if audit is None:
        return None
    return lambda _rows: audit(value)


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of a write made of several (:meth:`Statements._write_together`)."""

    sql: str
    params: Params
    # The whole write is rolled back when this one matches no row (a compare-and-set that
    # lost, a row gone since it was read): it needs a RETURNING clause.
    must_hit: bool = False


class Missed(Exception):
    """Raised inside a write of several steps when a ``must_hit`` step matched no row: the
    transaction rolls back. Never escapes the store."""


def hit(step: Step, rows: list[Any]) -> list[Any]:
    """``rows``, the step's; :class:`Missed` (a rollback) when it had to match and did not."""
    if step.must_hit and not rows:
        raise Missed
    return rows


class Statements(abc.ABC):
    dialect: ClassVar[Dialect]

    @abc.abstractmethod
    async def _fetch(self, sql: str, params: Params | None = None) -> list[Any]:
        """Render ``sql`` for this dialect and run it in a transaction of its own; its rows
        (mappings by column name). Database errors come out as StoreError or Conflict."""

    @abc.abstractmethod
    async def _fetch_audited(
        self, sql: str, params: Params | None, audit: AuditOf[list[Any]]
    ) -> list[Any]:
        """:meth:`_fetch`, and in the same transaction the event ``audit`` makes of its rows
        appended to the audit chain (none when it answers None)."""

    async def _write(
        self, sql: str, params: Params | None, audit: AuditOf[list[Any]] | None
    ) -> list[Any]:
        """A write, with its audit event when there is one."""
        if audit is None:
            return await self._fetch(sql, params)
        return await self._fetch_audited(sql, params, audit)

    @abc.abstractmethod
    async def _write_together(
        self, steps: Sequence[Step], audit: AuditOf[list[list[Any]]] | None
    ) -> list[list[Any]] | None:
        """``steps`` in one transaction, with the event ``audit`` makes of their rows (one
        list per step) chained last in it; None, and nothing written, when a ``must_hit``
        step matched no row."""

    @abc.abstractmethod
    async def _changed(self, what: str) -> None:
        """A write of ``what`` (an entity kind, ``API_KEYS``, ``ACCESS_SETTINGS``: manager.
        store.base) was committed: drop what this store keeps of it, and tell the others."""

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
