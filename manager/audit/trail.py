"""Reading the audit trail, checking its chain, and each user's saved filters.

Writing events stays with the request that makes a change (manager.api.audit_record):
it is the one place that knows who acted, through which route. A saved filter's write takes
its event (``audit``) to chain in the same transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from manager.core.audit_chain import (
    AuditEvent,
    AuditOf,
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
        """Every stored event, past the head too: a row written behind the manager's back
        after the newest real event must not hide (listed as genuine while verify stopped
        short of it). Events committed while this reads are taken in: it reads on from where
        it stopped until the head it last read is reached (a few rounds at most). With the
        chain's keys: a trail re-hashed from the database alone fails."""
        checker = ChainVerifier(keys)
        seen = 0
        head = await self._store.audit_head()
        for _ in range(_VERIFY_ROUNDS):
            query = AuditQuery(after=seen)
            async with contextlib.aclosing(self._store.audit_events_all(query)) as events:
                async for event in events:
                    seen = event.seq
                    if checker.feed(event) is not None:
                        break
            if checker.broken is not None:
                break
            head = await self._store.audit_head()
            if seen >= head[0]:
                break
        broken = checker.end(head)
        return Verified(checked=checker.checked, head_seq=head[0], broken=broken)

    # -- saved filters ---------------------------------------------------------------------

    async def saved_filter(self, owner: str, name: str) -> SavedAuditFilter | None:
        return await self._store.get_audit_filter(owner, name)

    async def saved_filters(self, owner: str) -> list[SavedAuditFilter]:
        return await self._store.list_audit_filters(owner)

    async def save_filter(
        self, saved: SavedAuditFilter, *, audit: AuditOf[SavedAuditFilter] | None = None
    ) -> None:
        """``audit``: its event, chained in the insert's transaction."""
        try:
            await self._store.create_audit_filter(saved, audit=audit)
        except Conflict:
            raise Conflicting(
                "conflict", f"you have a saved audit filter named {saved.name!r}", field="name"
            ) from None

    async def delete_filter(
        self, owner: str, name: str, *, audit: AuditOf[SavedAuditFilter] | None = None
    ) -> SavedAuditFilter:
        """``audit``: its event, of the row deleted, in the delete's transaction."""
        saved = await self._store.delete_audit_filter(owner, name, audit=audit)
        if saved is None:
            raise NotFound("not_found", f"no saved audit filter {name!r}")
        return saved


# Rounds of reading on while appends keep coming; a trail still growing after these is
# judged against the head read last (an event in flight then shows as a gap: check again).
_VERIFY_ROUNDS = 5
