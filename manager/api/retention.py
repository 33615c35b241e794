"""Retention settings: read and replace them (manage_governance; every change audited).

The purge itself runs in the background (manager.retention.purge) and from the host
(``tether-manager purge``); it is not an API route.
"""

from __future__ import annotations

from aiohttp import web

from manager.access.entities import Entity
from manager.api.audit_record import Change, in_transaction
from manager.api.http import Route, RouteTable, json_response, parse_body
from manager.retention.purge import Purger
from manager.schemas.retention import RetentionSettings

__all__ = ["PURGER", "add_retention_routes"]

PURGER: web.AppKey[Purger] = web.AppKey("tether_purger", Purger)
_PATH = "/api/v1/retention"


async def get_retention(request: web.Request) -> web.Response:
    return json_response(await request.app[PURGER].settings.get())


async def put_retention(request: web.Request) -> web.Response:
    wanted = await parse_body(request, RetentionSettings)

    def changed(written: tuple[RetentionSettings | None, Entity[RetentionSettings]]) -> Change:
        before, after = written
        return Change(
            "retention",
            "retention",
            "update",
            "changed the retention settings",
            before=None if before is None else before.model_dump(mode="json"),
            after=after.body.model_dump(mode="json"),
        )

    await request.app[PURGER].settings.put(wanted, audit=in_transaction(request, changed))
    return json_response(await request.app[PURGER].settings.get())


def add_retention_routes(table: RouteTable) -> None:
    table.add(
        Route(
            "GET", _PATH, get_retention, "The retention settings", "user", None, RetentionSettings
        )
    )
    table.add(
        Route(
            "PUT",
            _PATH,
            put_retention,
            "Replace the retention settings",
            "user",
            RetentionSettings,
            RetentionSettings,
            errors=(400,),
            audit="retention",
        )
    )
