"""API keys as the routes see them: list, create, revoke, and the account's defaults."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from manager.access.tokens import ApiKeyInUse, create_api_key
from manager.core.audit_chain import AuditOf
from manager.errors import Conflicting, NotFound
from manager.records import AccessSettings, ApiKeyRecord
from manager.store.base import Store

__all__ = ["ApiKeys"]


class ApiKeys:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def list(self) -> list[ApiKeyRecord]:
        return await self._store.list_api_keys()

    async def create(
        self,
        name: str,
        *,
        owner: str,
        owner_user_id: str | None,
        service_account: bool,
        groups: Sequence[str],
        max_qps: float | None,
        burst: int | None,
        expires_at: float | None,
        now: float,
        created_by: str,
        audit: AuditOf[ApiKeyRecord] | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """The new key and its one showing; Conflicting while a live key has the name."""
        try:
            return await create_api_key(
                self._store,
                name,
                owner=owner,
                owner_user_id=owner_user_id,
                service_account=service_account,
                groups=groups,
                max_qps=max_qps,
                burst=burst,
                expires_at=expires_at,
                now=now,
                created_by=created_by,
                audit=audit,
            )
        except ApiKeyInUse as exc:
            raise Conflicting("conflict", str(exc), field="name") from None

    async def revoke(
        self, name: str, now: float, *, audit: AuditOf[ApiKeyRecord] | None = None
    ) -> ApiKeyRecord:
        revoked = await self._store.revoke_api_key(name, now, audit=audit)
        if revoked is None:
            raise NotFound("not_found", f"no live API key named {name!r}")
        return revoked

    async def defaults(self) -> AccessSettings:
        return await self._store.access_settings()

    async def set_defaults(
        self,
        max_qps: float | None,
        burst: int | None,
        *,
        audit: AuditOf[AccessSettings] | None = None,
    ) -> AccessSettings:
        """None leaves that default as it is."""
        return await self._store.update_access_settings(
            self._clock(), api_key_max_qps=max_qps, api_key_burst=burst, audit=audit
        )
