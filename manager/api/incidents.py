"""Incidents through the API: list, get, acknowledge, resolve, note; and their retention.
Tether sends no outbound notifications: incidents are read here, in the CLI and the console."""

from __future__ import annotations

from aiohttp import web

from manager.access.entities import Entity
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction
from manager.api.http import ApiProblem, AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.incident_services import services
from manager.incidents.incidents import IncidentBody, RetentionBody
from manager.schemas.incidents import (
    IncidentList,
    IncidentNote,
    IncidentRetention,
    IncidentStatus,
    IncidentView,
)

__all__ = ["add_incident_routes"]

_STATUSES: tuple[IncidentStatus, ...] = ("open", "acknowledged", "resolved")


async def list_incidents(request: web.Request) -> web.Response:
    raw = request.query.get("status")
    if raw is not None and raw not in _STATUSES:
        raise ApiProblem(400, "invalid", f"status: one of {', '.join(_STATUSES)}", field="status")
    status: IncidentStatus | None = next((s for s in _STATUSES if s == raw), None)
    incidents = services(request).incidents
    found = await incidents.all(status)
    found.sort(key=lambda e: e.updated_at, reverse=True)
    return json_response(IncidentList(incidents=await incidents.summaries(found)))


async def get_incident(request: web.Request) -> web.Response:
    incidents = services(request).incidents
    return json_response(
        await incidents.view(await incidents.get(request.match_info["incident_id"]))
    )


async def _change(
    request: web.Request,
    verb: str,
    *,
    status: IncidentStatus | None = None,
    note: str | None = None,
) -> web.Response:
    incidents = services(request).incidents
    incident_id = request.match_info["incident_id"]

    def describe(change: tuple[IncidentBody, Entity[IncidentBody]]) -> Change:
        before, after = change
        return Change(
            after.id,
            after.id,
            "update",
            f"{verb} incident {after.id}",
            before={"status": before.status},
            after={"status": after.body.status},
        )

    after = await incidents.change(
        incident_id,
        actor=principal_of(request).actor.name,
        status=status,
        note=note,
        audit=in_transaction(request, describe),
    )
    return json_response(await incidents.view(after))


async def ack_incident(request: web.Request) -> web.Response:
    return await _change(request, "acknowledged", status="acknowledged")


async def resolve_incident(request: web.Request) -> web.Response:
    return await _change(request, "resolved", status="resolved")


async def note_incident(request: web.Request) -> web.Response:
    req = await parse_body(request, IncidentNote)
    return await _change(request, "added a note to", note=req.text)


async def get_retention(request: web.Request) -> web.Response:
    days = await services(request).incidents.retention_days()
    return json_response(IncidentRetention(days=days))


async def put_retention(request: web.Request) -> web.Response:
    req = await parse_body(request, IncidentRetention)

    def describe(change: tuple[RetentionBody | None, Entity[RetentionBody]]) -> Change:
        before, after = change
        return Change(
            "retention",
            "incident retention",
            "update",
            f"incidents are kept {after.body.days} days",
            before=None if before is None else {"days": before.days},
            after={"days": after.body.days},
        )

    await services(request).incidents.set_retention(
        req.days, audit=in_transaction(request, describe)
    )
    return json_response(req)


def add_incident_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    path = "/api/v1/incidents/{incident_id}"
    table.add(
        Route(
            "GET",
            "/api/v1/incidents",
            list_incidents,
            "List incidents, the latest updated first",
            u,
            None,
            IncidentList,
            query={"status": "string"},
            errors=(400,),
        )
    )
    table.add(
        Route(
            "GET",
            path,
            get_incident,
            "An incident and its timeline",
            u,
            None,
            IncidentView,
            errors=(404,),
        )
    )
    for suffix, handler, summary, body in (
        ("ack", ack_incident, "Acknowledge an incident", None),
        ("resolve", resolve_incident, "Resolve an incident", None),
        ("notes", note_incident, "Add a note to an incident's timeline", IncidentNote),
    ):
        table.add(
            Route(
                "POST",
                f"{path}/{suffix}",
                handler,
                summary,
                u,
                body,
                IncidentView,
                errors=(400, 404),
                audit="incident",
            )
        )
    table.add(
        Route(
            "GET",
            "/api/v1/incident-retention",
            get_retention,
            "How long incidents are kept",
            u,
            None,
            IncidentRetention,
        )
    )
    table.add(
        Route(
            "PUT",
            "/api/v1/incident-retention",
            put_retention,
            "Set how long incidents are kept",
            u,
            IncidentRetention,
            IncidentRetention,
            errors=(400,),
            audit="incident",
        )
    )
