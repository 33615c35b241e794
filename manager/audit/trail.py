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
from manager.core.audit_checkpoint import checkpoint_problem
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
        head = await self._store.audit_head()
        start = await self._start(keys)
        if isinstance(start, Broken):
            return Verified(checked=0, head_seq=head[0], broken=start)
        checker = ChainVerifier(keys, start)
        seen = 0 if start is None else start[0]
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

    async def _start(self, keys: KeyLookup) -> tuple[int, str] | Broken | None:
        """Where the chain is checked from: the newest checkpoint (the events up to it may
        have been purged), every checkpoint's signature checked; None from the first event.
        A break when events are missing that no checkpoint covers."""
        checkpoints = await self._store.audit_checkpoints()
        for cp in checkpoints:
            if (problem := checkpoint_problem(cp, keys)) is not None:
                return Broken(cp.seq, problem)
        first = await self._store.audit_first_seq()
        newest = checkpoints[-1] if checkpoints else None
        covered = 0 if newest is None else newest.seq
        if first is not None and first - 1 > covered:
            return Broken(
                covered + 1,
                f"events {covered + 1} to {first - 1} are missing and no checkpoint covers them",
            )
        if newest is None:
            return None
        kept = await self._store.audit_event_hash(newest.seq)
        if kept is not None and kept != newest.hash:
            return Broken(newest.seq, "the event at the newest checkpoint has another hash")
        return newest.seq, newest.hash

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
