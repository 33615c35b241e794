"""Secret managers, secrets and their versions: the SQL once.

The compare-and-set writes that also touch versions (create, add a version, move) are
one transaction on SQLite and one statement on PostgreSQL; both compose the texts here.
Every write takes ``audit`` (its event, chained in its transaction); a create or delete also
takes the entity writes of the usage scope that goes with it (``entities``), in the same
transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import SecretManagerRecord, SecretRecord, SecretVersionRecord
from manager.store.base import Conflict, EntityWrite, SecretStore
from manager.store.sql.dialect import one_of, params_of
from manager.store.sql.entities import entity_step
from manager.store.sql.statements import (
    Statements,
    Step,
    of_first_row,
    of_first_step,
    of_value,
)

__all__ = [
    "BUMP_VERSION",
    "INSERT_SECRET",
    "INSERT_VERSION",
    "MOVE_SECRET",
    "SET_ENVELOPE",
    "SecretQueries",
    "secret_record",
]

INSERT_SECRET = "INSERT INTO secrets({SECRET_COLUMNS}) VALUES ({SECRET_PARAMS})"
INSERT_VERSION = "INSERT INTO secret_versions({VERSION_COLUMNS}) VALUES ({VERSION_PARAMS})"
# Compare-and-set on the current version; the new one is version + 1.
BUMP_VERSION = (
    "UPDATE secrets SET current_version = :current_version + 1, updated_at = :updated_at"
    " WHERE id = :id AND current_version = :current_version RETURNING {SECRET_COLUMNS}"
)
MOVE_SECRET = (
    "UPDATE secrets SET manager_id = :to_manager_id, updated_at = :updated_at"
    " WHERE id = :id AND current_version = :current_version AND manager_id = :manager_id"
    " RETURNING {SECRET_COLUMNS}"
)
SET_ENVELOPE = (
    "UPDATE secret_versions SET envelope = :envelope WHERE secret_id = :id AND version = :version"
)
_COUNT_KEPT = "SELECT count(*) AS kept FROM secrets WHERE manager_id = :id"
# Only a manager that keeps no secret (the foreign key refuses one that gained a secret
# meanwhile, as a Conflict).
_DELETE_EMPTY_MANAGER = (
    "DELETE FROM secret_managers WHERE id = :id"
    " AND NOT EXISTS (SELECT 1 FROM secrets WHERE manager_id = :id) RETURNING {MANAGER_COLUMNS}"
)

_INSERT_MANAGER = "INSERT INTO secret_managers({MANAGER_COLUMNS}) VALUES ({MANAGER_PARAMS})"
_GET_MANAGER = "SELECT {MANAGER_COLUMNS} FROM secret_managers WHERE id = :id"
_MANAGER_BY_NAME = "SELECT {MANAGER_COLUMNS} FROM secret_managers WHERE name = :name"
_LIST_MANAGERS = "SELECT {MANAGER_COLUMNS} FROM secret_managers ORDER BY name{BYTE_ORDER}"
_UPDATE_MANAGER = (
    "UPDATE secret_managers SET name = :name, kind = :kind, settings = :settings,"
    " credentials_secret = :credentials_secret, selectors = :selectors,"
    " description = :description, updated_at = :updated_at WHERE id = :id"
    " RETURNING {MANAGER_COLUMNS}"
)
_GET_SECRET = "SELECT {SECRET_COLUMNS} FROM secrets WHERE id = :id"
_SECRET_BY_NAME = "SELECT {SECRET_COLUMNS} FROM secrets WHERE name = :name"
_LIST_SECRETS = "SELECT {SECRET_COLUMNS} FROM secrets ORDER BY name{BYTE_ORDER}"
_LIST_SECRETS_OF = (
    "SELECT {SECRET_COLUMNS} FROM secrets WHERE manager_id = :manager_id ORDER BY name{BYTE_ORDER}"
)
_VERSIONS = (
    "SELECT {VERSION_COLUMNS} FROM secret_versions WHERE secret_id = :id ORDER BY version DESC"
)
_GET_VERSION = (
    "SELECT {VERSION_COLUMNS} FROM secret_versions WHERE secret_id = :id AND version = :version"
)
_DELETE_SECRET = "DELETE FROM secrets WHERE id = :id RETURNING {SECRET_COLUMNS}"
_ENVELOPES_OF_MANAGER = (
    "SELECT {V_VERSION_COLUMNS} FROM secrets s JOIN secret_versions v ON v.secret_id = s.id"
    " WHERE s.manager_id = :manager_id AND v.envelope IS NOT NULL"
    " ORDER BY v.secret_id, v.version"
)
_REPLACE_ENVELOPE = (
    "UPDATE secret_versions SET envelope = :new"
    " WHERE secret_id = :id AND version = :version AND envelope = :old RETURNING version"
)
_CLEAR_TASK_SECRET_ENV = "UPDATE tasks SET secret_env_sealed = NULL WHERE id = :id"


def secret_record(row: Any) -> SecretRecord:
    return SecretRecord(**dict(row))


class SecretQueries(Statements, SecretStore):
    """The secret methods that are one statement on either backend."""

    def _version_params(self, v: SecretVersionRecord) -> dict[str, Any]:
        params = params_of(v)
        params["ref"] = self._dump(v.ref)
        return params

    def _version(self, row: Any) -> SecretVersionRecord:
        d = dict(row)
        d["ref"] = self._load(d["ref"])
        return SecretVersionRecord(**d)

    def _manager_params(self, manager: SecretManagerRecord) -> dict[str, Any]:
        params = params_of(manager)
        params["settings"] = self._dump(manager.settings)
        params["selectors"] = self._dump(list(manager.selectors))
        return params

    def _manager(self, row: Any) -> SecretManagerRecord:
        d = dict(row)
        d["settings"] = self._load(d["settings"])
        d["selectors"] = tuple(self._load(d["selectors"]))
        return SecretManagerRecord(**d)

    async def _with_entities(
        self,
        steps: Sequence[Step],
        entities: Sequence[EntityWrite],
        audit: AuditOf[list[list[Any]]] | None,
    ) -> list[list[Any]] | None:
        """``steps``, then ``entities`` (inserts, or deletes of any version: none may miss),
        in one transaction with ``audit``'s event; None when a ``must_hit`` step missed."""
        more = [entity_step(w, self._dump) for w in entities]
        done = await self._write_together([*steps, *more], audit)
        if done is not None:
            for kind in dict.fromkeys(w.record.kind for w in entities):
                await self._changed(kind)
        return done

    async def create_secret_manager(
        self,
        manager: SecretManagerRecord,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretManagerRecord] | None = None,
    ) -> None:
        step = Step(_INSERT_MANAGER, self._manager_params(manager))
        await self._with_entities([step], entities, of_value(manager, audit))

    async def get_secret_manager(self, manager_id: str) -> SecretManagerRecord | None:
        row = await self._fetchrow(_GET_MANAGER, {"id": manager_id})
        return None if row is None else self._manager(row)

    async def secret_manager_by_name(self, name: str) -> SecretManagerRecord | None:
        row = await self._fetchrow(_MANAGER_BY_NAME, {"name": name})
        return None if row is None else self._manager(row)

    async def list_secret_managers(self) -> list[SecretManagerRecord]:
        return [self._manager(r) for r in await self._fetch(_LIST_MANAGERS)]

    async def update_secret_manager(
        self, manager: SecretManagerRecord, *, audit: AuditOf[SecretManagerRecord] | None = None
    ) -> bool:
        params = self._manager_params(manager)
        return bool(await self._write(_UPDATE_MANAGER, params, of_first_row(self._manager, audit)))

    async def delete_secret_manager(
        self,
        manager_id: str,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretManagerRecord] | None = None,
    ) -> bool:
        params = {"id": manager_id}
        step = Step(_DELETE_EMPTY_MANAGER, params, must_hit=True)
        done = await self._with_entities([step], entities, of_first_step(self._manager, audit))
        if done is not None:
            return True
        kept = (await self._fetchrow(_COUNT_KEPT, params))["kept"]
        if kept:
            raise Conflict(f"secret manager {manager_id} keeps {kept} secret(s)")
        return False

    async def get_secret(self, secret_id: str) -> SecretRecord | None:
        row = await self._fetchrow(_GET_SECRET, {"id": secret_id})
        return None if row is None else SecretRecord(**dict(row))

    async def secret_by_name(self, name: str) -> SecretRecord | None:
        row = await self._fetchrow(_SECRET_BY_NAME, {"name": name})
        return None if row is None else SecretRecord(**dict(row))

    async def secrets_by_name(self, names: Iterable[str]) -> dict[str, SecretRecord]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        cond, params = one_of(self.dialect, "name", "names", wanted)
        rows = await self._fetch(f"SELECT {{SECRET_COLUMNS}} FROM secrets WHERE {cond}", params)  # noqa: S608 (a fixed condition)
        return {r["name"]: SecretRecord(**dict(r)) for r in rows}

    async def list_secrets(self, *, manager_id: str | None = None) -> list[SecretRecord]:
        if manager_id is None:
            rows = await self._fetch(_LIST_SECRETS)
        else:
            rows = await self._fetch(_LIST_SECRETS_OF, {"manager_id": manager_id})
        return [SecretRecord(**dict(r)) for r in rows]

    async def secret_versions(self, secret_id: str) -> list[SecretVersionRecord]:
        return [self._version(r) for r in await self._fetch(_VERSIONS, {"id": secret_id})]

    async def get_secret_version(self, secret_id: str, version: int) -> SecretVersionRecord | None:
        row = await self._fetchrow(_GET_VERSION, {"id": secret_id, "version": version})
        return None if row is None else self._version(row)

    async def current_versions(self, secret_ids: Iterable[str]) -> dict[str, SecretVersionRecord]:
        ids = sorted(set(secret_ids))
        if not ids:
            return {}
        cond, params = one_of(self.dialect, "s.id", "ids", ids)
        rows = await self._fetch(
            "SELECT {V_VERSION_COLUMNS} FROM secrets s JOIN secret_versions v"  # noqa: S608 (a fixed condition)
            f" ON v.secret_id = s.id AND v.version = s.current_version WHERE {cond}",
            params,
        )
        return {r["secret_id"]: self._version(r) for r in rows}

    async def delete_secret(
        self,
        secret_id: str,
        *,
        entities: Sequence[EntityWrite] = (),
        audit: AuditOf[SecretRecord] | None = None,
    ) -> bool:
        # The versions go with it (ON DELETE CASCADE; SQLite's open() turns foreign keys on).
        step = Step(_DELETE_SECRET, {"id": secret_id}, must_hit=True)
        done = await self._with_entities([step], entities, of_first_step(secret_record, audit))
        return done is not None

    async def envelopes_of_manager(self, manager_id: str) -> list[SecretVersionRecord]:
        rows = await self._fetch(_ENVELOPES_OF_MANAGER, {"manager_id": manager_id})
        return [self._version(r) for r in rows]

    async def replace_envelope(self, secret_id: str, version: int, old: str, new: str) -> bool:
        params = {"id": secret_id, "version": version, "old": old, "new": new}
        return bool(await self._fetch(_REPLACE_ENVELOPE, params))

    async def clear_task_secret_env(self, task_id: str) -> None:
        await self._fetch(_CLEAR_TASK_SECRET_ENV, {"id": task_id})
