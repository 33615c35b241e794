"""Freeze windows through the API: create, list, delete (manager.governance.freeze)."""

from __future__ import annotations

from aiohttp import web

from manager.access.entities import Entity
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction
from manager.api.http import AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.incident_services import services
from manager.governance.freeze import FreezeBody
from manager.schemas.freezes import FreezeCreate, FreezeList, FreezeView

__all__ = ["add_freeze_routes"]


async def create_freeze(request: web.Request) -> web.Response:
    req = await parse_body(request, FreezeCreate)
    freezes = services(request).freezes

    def created(e: Entity[FreezeBody]) -> Change:
        view = freezes.view(e).model_dump(mode="json", exclude={"active_until"})
        return Change(
            e.id, e.body.name, "create", f"created freeze window {e.body.name}", after=view
        )

    made = await freezes.create(
        req, principal_of(request).actor.id, audit=in_transaction(request, created)
    )
    return json_response(freezes.view(made), status=201)


async def list_freezes(request: web.Request) -> web.Response:
    freezes = services(request).freezes
    return json_response(FreezeList(freezes=[freezes.view(e) for e in await freezes.all()]))


async def delete_freeze(request: web.Request) -> web.Response:
    freezes = services(request).freezes
    name = request.match_info["name"]

    def deleted(e: Entity[FreezeBody]) -> Change:
        view = freezes.view(e).model_dump(mode="json", exclude={"active_until"})
        return Change(
            e.id, e.body.name, "delete", f"deleted freeze window {e.body.name}", before=view
        )

    await freezes.delete(name, audit=in_transaction(request, deleted))
    return web.Response(status=204)


def add_freeze_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    table.add(
        Route(
            "POST",
            "/api/v1/freezes",
            create_freeze,
            "Create a freeze window",
            u,
            FreezeCreate,
            FreezeView,
            201,
            errors=(400, 409),
            audit="freeze",
        )
    )
    table.add(
        Route("GET", "/api/v1/freezes", list_freezes, "List freeze windows", u, None, FreezeList)
    )
    table.add(
        Route(
            "DELETE",
            "/api/v1/freezes/{name}",
            delete_freeze,
            "Delete a freeze window",
            u,
            None,
            None,
            204,
            errors=(404,),
            audit="freeze",
        )
    )
