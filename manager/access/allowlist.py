"""The IP allowlist and the trusted proxies as stored: what the routes read and change.

Judging a change (would it lock the caller out?) needs the caller's address, so it stays
with the routes (manager.api.access) and the pure rule in manager.core.allowlist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

    async def set_enabled(self, enabled: bool) -> AccessSettings:
        return await self._store.update_access_settings(self._clock(), allowlist_enabled=enabled)

    async def set_trusted_proxies(self, proxies: Sequence[str]) -> AccessSettings:
        return await self._store.update_access_settings(self._clock(), trusted_proxies=proxies)

    async def add(self, entry: AllowlistEntry) -> None:
        try:
            await self._store.add_allowlist_entry(entry)
        except Conflict:
            raise Conflicting(
                "conflict", f"an entry for {entry.cidr} exists already", field="cidr"
            ) from None

    async def remove(self, entry_id: str) -> AllowlistEntry:
        removed = await self._store.delete_allowlist_entry(entry_id)
        if removed is None:  # removed meanwhile, by another request
            raise NotFound("not_found", f"no allowlist entry {entry_id!r}")
        return removed

    async def set_entry_enabled(self, entry_id: str, enabled: bool) -> AllowlistEntry:
        updated = await self._store.set_allowlist_entry_enabled(entry_id, enabled)
        if updated is None:
            raise NotFound("not_found", f"no allowlist entry {entry_id!r}")
        return updated
