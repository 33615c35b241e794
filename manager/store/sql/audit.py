"""The audit trail and saved audit filters: the SQL once. Appending takes the chain's head
in a way of each backend's own (a write lock, a row lock); both run the texts here."""

from __future__ import annotations

from typing import Any

from manager.core.audit_chain import (
    AuditEvent,
    AuditOf,
    AuditQuery,
    SavedAuditFilter,
    like_pattern,
)
from manager.store.base import AuditStore
from manager.store.sql.statements import Statements, of_first_row, of_value

__all__ = ["HEAD", "INSERT_EVENT", "SET_HEAD", "AuditQueries"]

HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1{FOR_UPDATE}"
INSERT_EVENT = "INSERT INTO audit_events({AUDIT_COLUMNS}) VALUES ({AUDIT_PARAMS})"
SET_HEAD = "UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"

_CREATE_FILTER = "INSERT INTO audit_filters({AUDIT_FILTER_COLUMNS}) VALUES ({AUDIT_FILTER_PARAMS})"
_GET_FILTER = (
    "SELECT {AUDIT_FILTER_COLUMNS} FROM audit_filters WHERE owner = :owner AND name = :name"
)
_LIST_FILTERS = (
    "SELECT {AUDIT_FILTER_COLUMNS} FROM audit_filters WHERE owner = :owner"
    " ORDER BY name{BYTE_ORDER}"
)
_DELETE_FILTER = (
    "DELETE FROM audit_filters WHERE owner = :owner AND name = :name"
    " RETURNING {AUDIT_FILTER_COLUMNS}"
)


class AuditQueries(Statements, AuditStore):
    def _audit_filter(self, row: Any) -> SavedAuditFilter:
        d = dict(row)
        d["query"] = self._load(d["query"])
        return SavedAuditFilter(**d)

    async def audit_head(self) -> tuple[int, str]:
        row = await self._fetchrow(HEAD)
        return int(row["seq"]), str(row["hash"])

    async def list_audit(self, query: AuditQuery) -> list[AuditEvent]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": query.limit}
        for name, cond, value in (
            ("since", "ts >= :since", query.since),
            ("until", "ts < :until", query.until),
            ("resource_type", "resource_type = :resource_type", query.resource_type),
            ("resource_id", "resource_id = :resource_id", query.resource_id),
            ("app", "app = :app", query.app),
            ("action", "action = :action", query.action),
            ("before", "seq < :before", query.before),
            ("after", "seq > :after", query.after),
            ("actor", "(actor_id = :actor OR actor_name = :actor)", query.actor),
            (
                "text",
                "(summary {ILIKE} :text ESCAPE '\\' OR resource_name {ILIKE} :text ESCAPE '\\'"
                " OR diff {ILIKE} :text ESCAPE '\\')",
                like_pattern(query.text) if query.text else None,
            ),
        ):
            if value is not None:
                where.append(cond)
                params[name] = value
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if query.ascending else "DESC"
        # Conditions and order are fixed texts; the values are parameters.
        sql = (
            f"SELECT {{AUDIT_COLUMNS}} FROM audit_events {clause} ORDER BY seq {order} LIMIT :limit"  # noqa: S608
        )
        return [AuditEvent(**dict(r)) for r in await self._fetch(sql, params)]

    async def create_audit_filter(
        self, saved: SavedAuditFilter, *, audit: AuditOf[SavedAuditFilter] | None = None
    ) -> None:
        params = {
            "id": saved.id,
            "owner": saved.owner,
            "name": saved.name,
            "query": self._dump(saved.query),
            "created_at": saved.created_at,
        }
        await self._write(_CREATE_FILTER, params, of_value(saved, audit))

    async def get_audit_filter(self, owner: str, name: str) -> SavedAuditFilter | None:
        row = await self._fetchrow(_GET_FILTER, {"owner": owner, "name": name})
        return None if row is None else self._audit_filter(row)

    async def list_audit_filters(self, owner: str) -> list[SavedAuditFilter]:
        return [self._audit_filter(r) for r in await self._fetch(_LIST_FILTERS, {"owner": owner})]

    async def delete_audit_filter(
        self, owner: str, name: str, *, audit: AuditOf[SavedAuditFilter] | None = None
    ) -> SavedAuditFilter | None:
        params = {"owner": owner, "name": name}
        rows = await self._write(_DELETE_FILTER, params, of_first_row(self._audit_filter, audit))
        return self._audit_filter(rows[0]) if rows else None
