"""Issue 18's services on the app (freezes, webhooks, incidents) and their retention loop:
built here so the server's own wiring stays one line each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aiohttp import web

from manager.access.directory import Directory
from manager.api.audit_record import AUDIT, Change
from manager.api.incident_services import INCIDENT_SERVICES, IncidentServices
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.identity import SYSTEM
from manager.governance.freeze import Freezes
from manager.incidents.incidents import Incidents
from manager.incidents.webhooks import Webhooks
from manager.keys.masterkey import MasterKey
from manager.records import EntityRecord
from manager.secrets.service import SecretService
from manager.store.base import Store
from shared.repeats import RepeatedErrors

__all__ = ["RETENTION_INTERVAL_S", "install_incident_services", "purge_once", "retention_loop"]

log = structlog.get_logger("tether.incidents")

# How often incidents past their retention, and old webhook delivery ids, are purged.
RETENTION_INTERVAL_S = 3600.0


def install_incident_services(
    app: web.Application,
    store: Store,
    master_key: MasterKey,
    secrets: SecretService,
    clock: Callable[[], float],
) -> IncidentServices:
    directory = Directory(store)
    incidents = Incidents(store, master_key, clock=clock)
    built = IncidentServices(
        freezes=Freezes(store, directory, clock=clock),
        webhooks=Webhooks(store, secrets, directory, incidents, clock=clock),
        incidents=incidents,
    )
    app[INCIDENT_SERVICES] = built
    return built


async def purge_once(app: web.Application, now: float) -> int:
    """One retention pass: incidents past the retention (each batch with its audit event),
    then delivery ids past their replay window. Answers how many incidents went."""
    s = app[INCIDENT_SERVICES]
    recorder = app[AUDIT]

    def audit(days: int) -> AuditOf[list[EntityRecord]]:
        def entry(rows: list[EntityRecord]) -> AuditAppend:
            change = Change(
                "retention",
                "incident retention",
                "delete",
                f"purged {len(rows)} incident(s) not updated for {days} days",
                before={"incidents": [r.id for r in rows]},
            )
            return recorder.entry(
                SYSTEM,
                change,
                resource_type="incident",
                method="PURGE",
                path="/api/v1/incidents",
                client_ip="",
            )

        return entry

    gone = await s.incidents.purge(now, audit)
    await s.webhooks.purge_deliveries(now)
    if gone:
        log.info("incidents purged", count=gone)
    return gone


async def retention_loop(app: web.Application, clock: Callable[[], float]) -> None:
    failures = RepeatedErrors(log, "incident retention pass failed")
    while True:
        try:
            await purge_once(app, clock())
        except Exception as exc:  # the database away: try again next pass
            failures.error(exc)
        await asyncio.sleep(RETENTION_INTERVAL_S)
