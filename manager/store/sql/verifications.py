"""Named verification specs and their versions: the SQL once."""

from __future__ import annotations

from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import VerificationRecord
from manager.store.base import VerificationStore
from manager.store.sql.statements import Statements, of_first_row

__all__ = ["VerificationQueries"]

# The version is counted in the statement itself: two writers racing for the same number
# meet the primary key, and the loser gets a Conflict rather than overwriting.
_ADD = (
    "INSERT INTO verifications(name, version, spec, created_at, created_by)"
    " SELECT :name, coalesce(max(version), 0) + 1, :spec, :created_at, :created_by"
    " FROM verifications WHERE name = :name"
    " RETURNING name, version, spec, created_at, created_by"
)
_LATEST = (
    "SELECT name, version, spec, created_at, created_by FROM verifications"
    " WHERE name = :name ORDER BY version DESC LIMIT 1"
)
_ONE = (
    "SELECT name, version, spec, created_at, created_by FROM verifications"
    " WHERE name = :name AND version = :version"
)
_LIST = (
    "SELECT name, version, spec, created_at, created_by FROM verifications v"
    " WHERE version = (SELECT max(version) FROM verifications w WHERE w.name = v.name)"
    " ORDER BY name"
)
_DELETE = (
    "DELETE FROM verifications WHERE name = :name"
    " RETURNING name, version, spec, created_at, created_by"
)


def _record(row: Any) -> VerificationRecord:
    return VerificationRecord(
        row["name"], row["version"], row["spec"], row["created_at"], row["created_by"]
    )


class VerificationQueries(Statements, VerificationStore):
    async def add_verification_version(
        self,
        name: str,
        spec: str,
        *,
        created_at: float,
        created_by: str | None,
        audit: AuditOf[VerificationRecord] | None = None,
    ) -> VerificationRecord:
        params = {"name": name, "spec": spec, "created_at": created_at, "created_by": created_by}
        rows = await self._write(_ADD, params, of_first_row(_record, audit))
        return _record(rows[0])

    async def verification(
        self, name: str, version: int | None = None
    ) -> VerificationRecord | None:
        if version is None:
            row = await self._fetchrow(_LATEST, {"name": name})
        else:
            row = await self._fetchrow(_ONE, {"name": name, "version": version})
        return None if row is None else _record(row)

    async def list_verifications(self) -> list[VerificationRecord]:
        return [_record(r) for r in await self._fetch(_LIST)]

    async def delete_verification(
        self, name: str, *, audit: AuditOf[VerificationRecord] | None = None
    ) -> bool:
        def latest(rows: list[Any]) -> Any:
            return max(rows, key=lambda r: r["version"])

        audit_rows = (
            None if audit is None else (lambda rows: audit(_record(latest(rows))) if rows else None)
        )
        rows = await self._write(_DELETE, {"name": name}, audit_rows)
        return bool(rows)
