"""Issue 18's services on the app (freezes, webhooks, incidents) and their retention loop:
built here so the server's own wiring stays one line each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

import structlog
from aiohttp import web

from manager.access.directory import Directory
from manager.access.principal import Principal
from manager.api.audit_record import AUDIT, Change
from manager.api.context import Context
from manager.api.incident_services import INCIDENT_SERVICES, IncidentServices
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.identity import SYSTEM
from manager.errors import Invalid
from manager.governance.freeze import Freezes
from manager.incidents.incidents import Incidents
from manager.incidents.webhooks import RunStarter, Webhooks
from manager.keys.data_keys import DataKeys
from manager.keys.masterkey import MasterKey
from manager.records import EntityRecord
from manager.runbooks.service import RunbookService, start_run
from manager.schemas.runbooks import RunbookDefinition
from shared.repeats import RepeatedErrors

__all__ = ["RETENTION_INTERVAL_S", "install_incident_services", "purge_once", "retention_loop"]

log = structlog.get_logger("tether.incidents")

# How often incidents past their retention, and old webhook delivery ids, are purged.
RETENTION_INTERVAL_S = 3600.0


def install_incident_services(
    app: web.Application,
    c: Context,
    master_key: MasterKey,
    data_keys: DataKeys,
    clock: Callable[[], float],
) -> IncidentServices:
    store = c.store
    directory = Directory(store)
    incidents = Incidents(store, master_key, data_keys, clock=clock)
    built = IncidentServices(
        freezes=Freezes(store, directory, clock=clock),
        webhooks=Webhooks(store, c.secrets, directory, incidents, clock=clock),
        incidents=incidents,
    )
    if c.runbooks is not None:
        built.webhooks.starter = _starter(c, c.runbooks)
        built.webhooks.check_runbook = lambda name, inputs: _mapped(c.runbooks, name, inputs)
    app[INCIDENT_SERVICES] = built
    return built


async def _mapped(service: RunbookService | None, runbook: str, inputs: Iterable[str]) -> None:
    """Invalid unless ``runbook`` exists and takes every mapped input, none a secret: a
    payload value must never choose which secret a delegate fetches."""
    current = None if service is None else await service.runbooks.by_key(runbook)
    if current is None:
        raise Invalid("invalid", f"no runbook {runbook!r}", field="runbook")
    definition = RunbookDefinition.model_validate(current.body.definition)
    types = {i.name: i.type for i in definition.inputs}
    for name in inputs:
        if name not in types:
            raise Invalid("invalid", f"runbook {runbook!r} has no input {name!r}", field="mapping")
        if types[name] == "secret":
            raise Invalid(
                "invalid",
                f"input {name!r} of runbook {runbook!r} is a secret reference: a webhook"
                " cannot set it from a payload",
                field="mapping",
            )


def _starter(c: Context, service: RunbookService) -> RunStarter:
    async def start(
        runbook: str,
        inputs: Mapping[str, str],
        principal: Principal,
        *,
        trigger: str,
        incident_id: str | None = None,
    ) -> str:
        # Checked again at each delivery: the runbook may have changed since the webhook.
        await _mapped(service, runbook, inputs.keys())
        return await start_run(
            c, runbook, inputs, principal, trigger=trigger, incident_id=incident_id
        )

    return start


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
