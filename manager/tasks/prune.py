"""Housekeeping: delegates disconnected for longer than a set time are forgotten.

A delegate that went away (a host decommissioned, a pod replaced: each new pod enrols as a
new delegate) would otherwise stay in ``delegate list`` forever. A background sweep deletes
those not heard for ``after`` seconds (``serve --prune-delegates-after``, default 7 days),
one at a time, each with its own audit event in the delete's transaction, as the
``tether delegate delete`` route does.

"Not heard" is judged on the wall clock (what ``last_seen`` and the presence rows hold): a
delegate is kept while this replica holds its session, while any replica heard it within
``after`` (the presence rows, so one connected elsewhere is kept), or when it registered
within ``after``. A pruned delegate that comes back registers again, as a new delegate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from shared.repeats import RepeatedErrors

if TYPE_CHECKING:
    # Annotations only: `tether-manager --help` reads DEFAULT_PRUNE_AFTER from here, and
    # the hub's imports would cost every host command a third of a second.
    from manager.core.audit_chain import AuditOf
    from manager.records import DelegateRecord
    from manager.store.base import Store
    from manager.tasks.delegates import Delegates
    from manager.tasks.hub import Hub

__all__ = ["DEFAULT_PRUNE_AFTER", "DelegatePruner"]

log = structlog.get_logger("tether.prune")

DEFAULT_PRUNE_AFTER = 7 * 24 * 3600.0
# How often the sweep looks: often enough that a delegate goes within about an hour of its
# time, rarely enough to cost nothing.
_INTERVAL = 3600.0


class DelegatePruner:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        delegates: Delegates,
        *,
        after: float,
        clock: Callable[[], float],
        audit: Callable[[DelegateRecord, float], AuditOf[list[DelegateRecord]]],
    ) -> None:
        """``after``: seconds; 0 turns pruning off. ``audit``: the event of one delegate's
        deletion (given the record and when it was last heard)."""
        self._store = store
        self._hub = hub
        self._delegates = delegates
        self.after = after
        self._clock = clock
        self._audit = audit

    async def prune_once(self) -> list[DelegateRecord]:
        """Delete every delegate not heard for ``after`` seconds; answers those deleted."""
        if self.after <= 0:
            return []
        now = self._clock()
        since = now - self.after
        heard = await self._store.presence(since)
        pruned = []
        for d in await self._store.list_delegates():
            if d.id in self._hub.sessions or d.id in heard or d.last_seen >= since:
                continue
            # The latest heartbeat any replica recorded, even one older than ``since``.
            last = max(d.last_seen, self._hub.last_heartbeat(d.id) or 0.0)
            deleted = await self._delegates.delete([d], audit=self._audit(d, last))
            for gone in deleted:
                log.info(
                    "delegate pruned: disconnected too long",
                    delegate_id=gone.id,
                    name=gone.name,
                    disconnected_s=round(now - last),
                )
            pruned.extend(deleted)
        return pruned

    async def run_forever(
        self,
        interval: float = _INTERVAL,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        failures = RepeatedErrors(log, "pruning delegates failed")
        while True:
            await sleep(min(interval, max(self.after / 10, 1.0)))
            try:
                await self.prune_once()
            except Exception as exc:
                failures.error(exc)
