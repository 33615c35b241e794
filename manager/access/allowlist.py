"""The IP allowlist and the trusted proxies as stored: what the routes read and change.

Judging a change (would it lock the caller out?) needs the caller's address, so it stays
with the routes (manager.api.access) and the pure rule in manager.core.allowlist. Each change
takes its audit event, chained in the change's transaction (manager.store.base).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from manager.core.audit_chain import AuditOf
from manager.errors import Conflicting, NotFound
from manager.records import AccessSettings, AllowlistEntry
from manager.store.base import Conflict, Store

__all__ = ["Allowlist"]


class Allowlist:
    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def settings(self) -> AccessSettings:
        return await self._store.access_settings()

    async def current(self) -> tuple[AccessSettings, list[AllowlistEntry]]:
        # The store's, not the guard's cache: a change is judged against what is true now.
        return await self._store.access_settings(), await self._store.list_allowlist()

    async def set_enabled(
        self, enabled: bool, *, audit: AuditOf[AccessSettings] | None = None
    ) -> AccessSettings:
        return await self._store.update_access_settings(
            self._clock(), allowlist_enabled=enabled, audit=audit
        )

    async def set_trusted_proxies(
        self, proxies: Sequence[str], *, audit: AuditOf[AccessSettings] | None = None
    ) -> AccessSettings:
        return await self._store.update_access_settings(
            self._clock(), trusted_proxies=proxies, audit=audit
        )

    async def add(
        self, entry: AllowlistEntry, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> None:
        try:
            await self._store.add_allowlist_entry(entry, audit=audit)
        except Conflict:
            raise Conflicting(
                "conflict", f"an entry for {entry.cidr} exists already", field="cidr"
            ) from None

    async def remove(
        self, entry_id: str, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> AllowlistEntry:
        removed = await self._store.delete_allowlist_entry(entry_id, audit=audit)
        if removed is None:  # removed meanwhile, by another request
            raise NotFound("not_found", f"no allowlist entry {entry_id!r}")
        return removed

    async def set_entry_enabled(
        self, entry_id: str, enabled: bool, *, audit: AuditOf[AllowlistEntry] | None = None
    ) -> AllowlistEntry:
        updated = await self._store.set_allowlist_entry_enabled(entry_id, enabled, audit=audit)
        if updated is None:
            raise NotFound("not_found", f"no allowlist entry {entry_id!r}")
        return updated
