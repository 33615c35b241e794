"""The delegates as users manage them: the list, drain and resume, and delete.

The views themselves (status across replicas, what each runs) are drawn by the API from
these records and the hub; this module owns every read and write behind them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from manager.access.tokens import scope_views
from manager.core.audit_chain import AuditOf
from manager.errors import NotFound
from manager.records import DelegateRecord, Presence
from manager.schemas.tasks import TokenScopeView
from manager.store.base import Store
from manager.tasks.handout import Handout
from manager.tasks.hub import Hub
from shared.protocol import CloseCode, TaskDrain

__all__ = ["Delegates", "Known"]

log = structlog.get_logger("tether.delegates")


@dataclass(frozen=True)
class Known:
    """What a delegate view needs beyond the record and this replica's hub."""

    # Delegates held by other replicas, from the presence rows they write.
    elsewhere: dict[str, Presence]
    scopes: dict[str, TokenScopeView]
    token_names: dict[str, str]


class Delegates:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        handout: Handout,
        *,
        lost_after: float,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._hub = hub
        self._handout = handout
        self._lost_after = lost_after
        self._clock = clock

    async def all(self) -> list[DelegateRecord]:
        return await self._store.list_delegates()

    async def get(self, delegate_id: str) -> DelegateRecord | None:
        return await self._store.get_delegate(delegate_id)

    async def named(self, name: str) -> list[DelegateRecord]:
        return await self._store.delegates_named(name)

    async def upsert(self, delegate: DelegateRecord) -> DelegateRecord | None:
        """Insert, or update the row with the same public key (keeping its id); None, and
        nothing written, when that key was registered with another token."""
        return await self._store.upsert_delegate(delegate)

    async def matching(self, ref: str) -> list[DelegateRecord]:
        """Every delegate with that id or name (a name may cover a group); NotFound if none."""
        matches = [d for d in await self._store.list_delegates() if ref in (d.id, d.name)]
        if not matches:
            raise NotFound("not_found", f"no delegate named {ref!r}")
        return matches

    async def known(self) -> Known:
        elsewhere = await self._store.presence(self._clock() - self._lost_after)
        _, scopes = await scope_views(self._store)
        names = {t.id: t.name for t in await self._store.list_tokens()}
        return Known(elsewhere=elsewhere, scopes=scopes, token_names=names)

    async def set_draining(
        self,
        matches: list[DelegateRecord],
        draining: bool,
        *,
        audit: AuditOf[list[DelegateRecord]] | None = None,
    ) -> tuple[list[DelegateRecord], list[DelegateRecord]]:
        """Drain (or resume) ``matches``: (those still there, those whose state flipped).
        The flips are one write; ``audit``: its event, of the rows flipped (none flipped,
        none written)."""
        ids = [d.id for d in matches]
        flipped = await self._store.set_draining_of(ids, draining, audit=audit)
        wanted = set(ids)
        changed = [d for d in await self._store.list_delegates() if d.id in wanted]
        for d in changed:
            session = self._hub.sessions.get(d.id)
            if session is not None:
                session.delegate = d
                session.draining = d.draining
                if d.draining:
                    self._hub.send(session, TaskDrain())
                self._handout.drain(d.id, d.draining)
            log.info(
                "delegate drain" if draining else "delegate resumed", delegate_id=d.id, name=d.name
            )
        return changed, flipped

    async def delete(
        self,
        delegates: list[DelegateRecord],
        *,
        audit: AuditOf[list[DelegateRecord]] | None = None,
    ) -> list[DelegateRecord]:
        """Forget ``delegates`` (one write; ``audit``: its event, of the rows deleted) and
        close their streams as revoked; answers those that were there."""
        deleted = await self._store.delete_delegates([d.id for d in delegates], audit=audit)
        for d in deleted:
            self._hub.drop(d.id, CloseCode.REVOKED, "delegate deleted")
            log.info("delegate deleted", delegate_id=d.id, name=d.name)
        return deleted
