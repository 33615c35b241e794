"""Reading the audit trail, checking its chain, and each user's saved filters.

Writing events stays with the request that makes a change (manager.api.audit_record):
it is the one place that knows who acted, through which route.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from manager.core.audit_chain import (
    AuditEvent,
    AuditQuery,
    Broken,
    ChainVerifier,
    KeyLookup,
    SavedAuditFilter,
)
from manager.errors import Conflicting, NotFound
from manager.store.base import Conflict, Store

__all__ = ["AuditTrail", "Verified"]


@dataclass(frozen=True)
class Verified:
    checked: int
    head_seq: int
    broken: Broken | None


class AuditTrail:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def page(self, query: AuditQuery) -> list[AuditEvent]:
        return await self._store.list_audit(query)

    async def every(self, query: AuditQuery) -> AsyncIterator[AuditEvent]:
        """Every matching event, oldest first, read a page at a time."""
        async with contextlib.aclosing(self._store.audit_events_all(query)) as events:
            async for event in events:
                yield event

    async def verify(self, keys: KeyLookup) -> Verified:
        """The chain up to the head as it is now; events written meanwhile wait for the next
        check. With the chain's keys: a trail re-hashed from the database alone fails."""
        head = await self._store.audit_head()
        checker = ChainVerifier(keys)
        async with contextlib.aclosing(self._store.audit_events_all()) as events:
            async for event in events:
                if event.seq > head[0] or checker.feed(event) is not None:
                    break
        broken = checker.end(head)
        return Verified(checked=checker.checked, head_seq=head[0], broken=broken)

    # -- saved filters ---------------------------------------------------------------------

    async def saved_filter(self, owner: str, name: str) -> SavedAuditFilter | None:
        return await self._store.get_audit_filter(owner, name)

    async def saved_filters(self, owner: str) -> list[SavedAuditFilter]:
        return await self._store.list_audit_filters(owner)

    async def save_filter(self, saved: SavedAuditFilter) -> None:
        try:
            await self._store.create_audit_filter(saved)
        except Conflict:
            raise Conflicting(
                "conflict", f"you have a saved audit filter named {saved.name!r}", field="name"
            ) from None

    async def delete_filter(self, owner: str, name: str) -> SavedAuditFilter:
        saved = await self._store.get_audit_filter(owner, name)
        if saved is None or not await self._store.delete_audit_filter(owner, name):
            raise NotFound("not_found", f"no saved audit filter {name!r}")
        return saved
