"""Settings, delegate tokens, API keys, the access settings and the IP allowlist: the SQL
once, and every method of theirs (each is one statement on either backend). A revoked API key
and a changed access setting or allowlist entry are announced once committed
(:meth:`manager.store.base.AccessStore.watch_changes`), so replicas drop what they cache."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from manager.core.audit_chain import AuditOf
from manager.records import AccessSettings, AllowlistEntry, ApiKeyRecord, TokenRecord
from manager.store.base import ACCESS_SETTINGS, API_KEYS, AccessStore
from manager.store.sql.dialect import one_of, params_of
from manager.store.sql.statements import Statements, of_first_row, of_value

__all__ = ["AccessQueries"]

_GET_SETTING = "SELECT value FROM settings WHERE key = :key"
_REPLACE_SETTING = (
    "UPDATE settings SET value = :new WHERE key = :key AND value = :old RETURNING key"
)
_PUT_SETTING_IF_ABSENT = (
    "INSERT INTO settings(key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING"
)
_CREATE_TOKEN = "INSERT INTO tokens({TOKEN_COLUMNS}) VALUES ({TOKEN_PARAMS})"
_LIST_TOKENS = "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, {TOKENS_INSERTED}"
_REVOKE_TOKEN = (
    "UPDATE tokens SET revoked_at = :now WHERE name = :name AND revoked_at IS NULL"
    " RETURNING {TOKEN_COLUMNS}"
)
_TOKEN_BY_HASH = "SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = :token_hash"
_TOKEN_BY_ID = "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = :id"
_CREATE_API_KEY = "INSERT INTO api_keys({API_KEY_COLUMNS}) VALUES ({API_KEY_PARAMS})"
_API_KEY_BY_HASH = "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = :key_hash"
_LIST_API_KEYS = "SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
_REVOKE_API_KEY = (
    "UPDATE api_keys SET revoked_at = :now WHERE name = :name AND revoked_at IS NULL"
    " RETURNING {API_KEY_COLUMNS}"
)
_TOUCH_API_KEY = (
    "UPDATE api_keys SET last_used_at = :now WHERE id = :id"
    " AND (last_used_at IS NULL OR last_used_at <= :not_before)"
)
_ACCESS_SETTINGS = "SELECT {ACCESS_COLUMNS} FROM access_settings WHERE id = 1"
_LIST_ALLOWLIST = "SELECT {ALLOWLIST_COLUMNS} FROM allowlist ORDER BY created_at, id"
_ADD_ALLOWLIST = "INSERT INTO allowlist({ALLOWLIST_COLUMNS}) VALUES ({ALLOWLIST_PARAMS})"
_SET_ALLOWLIST_ENABLED = (
    "UPDATE allowlist SET enabled = :enabled WHERE id = :id RETURNING {ALLOWLIST_COLUMNS}"
)
_DELETE_ALLOWLIST = "DELETE FROM allowlist WHERE id = :id RETURNING {ALLOWLIST_COLUMNS}"


def _token(row: Any) -> TokenRecord:
    return TokenRecord(**dict(row))


class AccessQueries(Statements, AccessStore):
    # -- settings ---------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        row = await self._fetchrow(_GET_SETTING, {"key": key})
        return None if row is None else str(row["value"])

    async def put_setting_if_absent(self, key: str, value: str) -> str:
        await self._fetch(_PUT_SETTING_IF_ABSENT, {"key": key, "value": value})
        # A statement of its own: its snapshot sees the row that won a race.
        return str((await self._fetchrow(_GET_SETTING, {"key": key}))["value"])

    async def replace_setting(self, key: str, old: str, new: str) -> bool:
        params = {"key": key, "old": old, "new": new}
        return await self._fetchrow(_REPLACE_SETTING, params) is not None

    # -- delegate tokens --------------------------------------------------------------------

    async def create_token(
        self, token: TokenRecord, *, audit: AuditOf[TokenRecord] | None = None
    ) -> None:
        await self._write(_CREATE_TOKEN, params_of(token), of_value(token, audit))

    async def list_tokens(self) -> list[TokenRecord]:
        return [TokenRecord(**dict(r)) for r in await self._fetch(_LIST_TOKENS)]

    async def revoke_token(
        self, name: str, now: float, *, audit: AuditOf[TokenRecord] | None = None
    ) -> TokenRecord | None:
        rows = await self._write(
            _REVOKE_TOKEN, {"name": name, "now": now}, of_first_row(_token, audit)
        )
        return _token(rows[0]) if rows else None

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        row = await self._fetchrow(_TOKEN_BY_HASH, {"token_hash": token_hash})
        return None if row is None else TokenRecord(**dict(row))

    async def token_by_id(self, token_id: str) -> TokenRecord | None:
        row = await self._fetchrow(_TOKEN_BY_ID, {"id": token_id})
        return None if row is None else TokenRecord(**dict(row))

    async def revoked_token_ids(self, among: Iterable[str]) -> set[str]:
        ids = list(among)
        if not ids:
            return set()
        cond, params = one_of(self.dialect, "id", "ids", ids)
        rows = await self._fetch(
            f"SELECT id FROM tokens WHERE revoked_at IS NOT NULL AND {cond}",  # noqa: S608 (a fixed condition)
            params,
        )
        return {str(r["id"]) for r in rows}

    # -- API keys ---------------------------------------------------------------------------

    def _api_key(self, row: Any) -> ApiKeyRecord:
        d = dict(row)
        d["service_account"] = bool(d["service_account"])
        d["groups"] = tuple(self._load(d["groups"]))
        return ApiKeyRecord(**d)

    async def create_api_key(
        self, key: ApiKeyRecord, *, audit: AuditOf[ApiKeyRecord] | None = None
    ) -> None:
        params = params_of(key)
        params["groups"] = self._dump(list(key.groups))
        await self._write(_CREATE_API_KEY, params, of_value(key, audit))

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        row = await self._fetchrow(_API_KEY_BY_HASH, {"key_hash": key_hash})
        return None if row is None else self._api_key(row)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return [self._api_key(r) for r in await self._fetch(_LIST_API_KEYS)]

    async def revoke_api_key(
        self, name: str, now: float, *, audit: AuditOf[ApiKeyRecord] | None = None
    ) -> ApiKeyRecord | None:
        params = {"name": name, "now": now}
        rows = await self._write(_REVOKE_API_KEY, params, of_first_row(self._api_key, audit))
        if not rows:
            return None
        await self._changed(API_KEYS)
        return self._api_key(rows[0])

    async def touch_api_key(self, key_id: str, now: float, *, min_interval: float) -> None:
        params = {"id": key_id, "now": now, "not_before": now - min_interval}
        await self._fetch(_TOUCH_API_KEY, params)

    # -- access settings and the IP allowlist -----------------------------------------------

    def _access_settings(self, row: Any) -> AccessSettings:
        d = dict(row)
        d["allowlist_enabled"] = bool(d["allowlist_enabled"])
        d["trusted_proxies"] = tuple(self._load(d["trusted_proxies"]))
        return AccessSettings(**d)

    def _allowlist_entry(self, row: Any) -> AllowlistEntry:
        d = dict(row)
        d["enabled"] = bool(d["enabled"])
        return AllowlistEntry(**d)

    async def access_settings(self) -> AccessSettings:
        return self._access_settings(await self._fetchrow(_ACCESS_SETTINGS))

    async def update_access_settings(
        self,
        now: float,
        *,
        allowlist_enabled: bool | None = None,
        trusted_proxies: Sequence[str] | None = None,
        api_key_max_qps: float | None = None,
        api_key_burst: int | None = None,
        audit: AuditOf[AccessSettings] | None = None,
    ) -> AccessSettings:
        changes: dict[str, Any] = {"updated_at": now}
        if allowlist_enabled is not None:
            changes["allowlist_enabled"] = allowlist_enabled
        if trusted_proxies is not None:
            changes["trusted_proxies"] = self._dump(list(trusted_proxies))
        if api_key_max_qps is not None:
            changes["api_key_max_qps"] = api_key_max_qps
        if api_key_burst is not None:
            changes["api_key_burst"] = api_key_burst
        # Column names come from the fixed set above, never from the caller.
        assignments = ", ".join(f"{name} = :{name}" for name in changes)
        rows = await self._write(
            f"UPDATE access_settings SET {assignments} WHERE id = 1"  # noqa: S608
            " RETURNING {ACCESS_COLUMNS}",
            changes,
            of_first_row(self._access_settings, audit),
        )
        await self._changed(ACCESS_SETTINGS)
        return self._access_settings(rows[0])

    async def list_allowlist(self) -> list[AllowlistEntry]:
        return [self._allowlist_entry(r) for r in await self._fetch(_LIST_ALLOWLIST)]

    async def add_allowlist_entry(
        self, entry: AllowlistEntry, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> None:
        await self._write(_ADD_ALLOWLIST, params_of(entry), of_value(entry, audit))
        await self._changed(ACCESS_SETTINGS)

    async def set_allowlist_entry_enabled(
        self, entry_id: str, enabled: bool, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> AllowlistEntry | None:
        params = {"id": entry_id, "enabled": enabled}
        rows = await self._write(
            _SET_ALLOWLIST_ENABLED, params, of_first_row(self._allowlist_entry, audit)
        )
        if not rows:
            return None
        await self._changed(ACCESS_SETTINGS)
        return self._allowlist_entry(rows[0])

    async def delete_allowlist_entry(
        self, entry_id: str, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> AllowlistEntry | None:
        rows = await self._write(
            _DELETE_ALLOWLIST, {"id": entry_id}, of_first_row(self._allowlist_entry, audit)
        )
        if not rows:
            return None
        await self._changed(ACCESS_SETTINGS)
        return self._allowlist_entry(rows[0])
