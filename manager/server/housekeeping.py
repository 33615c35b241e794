"""The server's wiring of the delegate pruner (manager.tasks.prune): its audit events."""

from __future__ import annotations

import datetime

from aiohttp import web

from manager.api.audit_record import AuditRecorder, Change
from manager.api.context import Context
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.identity import SYSTEM
from manager.records import DelegateRecord
from manager.tasks.prune import DelegatePruner

__all__ = ["PRUNER", "pruner"]

PRUNER = web.AppKey("pruner", DelegatePruner)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


def pruner(after: float, c: Context, recorder: AuditRecorder) -> DelegatePruner:
    """``after``: seconds (``serve --prune-delegates-after``, in days); 0: never."""

    def audit(d: DelegateRecord, last: float) -> AuditOf[list[DelegateRecord]]:
        def entry(rows: list[DelegateRecord]) -> AuditAppend | None:
            if not rows:
                return None
            # The system's change: no user asked for it; the sweep's rule is the reason.
            return recorder.entry(
                SYSTEM,
                Change(
                    d.id,
                    d.name,
                    "prune",
                    f"pruned delegate {d.name}: not heard since {_when(last)}, longer than"
                    f" {after / 86400:g} day(s)",
                    before={
                        "id": d.id,
                        "name": d.name,
                        "hostname": d.hostname,
                        "token_id": d.token_id,
                        "last_seen": last,
                    },
                ),
                resource_type="delegate",
                method="SWEEP",
                path="housekeeping: prune disconnected delegates",
                client_ip="local",
            )

        return entry

    return DelegatePruner(c.store, c.hub, c.delegates, after=after, clock=c.clock, audit=audit)
