"""The SCIM routes (manager.api.scim) in the route table, their handlers loaded on first use.

scim2-models takes about 0.4 s to import, which every manager start paid before its first
SCIM request, if one ever came. The table (paths, summaries, audit types: what the OpenAPI
document, the permission matrix and the router read) is here; the handlers' module is
imported, in a thread so the event loop goes on serving, by the first SCIM request.
"""

from __future__ import annotations

import asyncio
import importlib

from aiohttp import web

from manager.api.http import Handler, Route, RouteTable
from manager.schemas.directory_auth import (
    ScimTokenCreate,
    ScimTokenCreated,
    ScimTokenList,
    ScimTokenRevoked,
)

__all__ = ["BASE", "add_scim_routes"]

BASE = "/scim/v2"
_TOKENS = "/api/v1/scim/tokens"

_loaded: dict[str, Handler] = {}


async def _handler(name: str) -> Handler:
    if not _loaded:
        module = await asyncio.to_thread(importlib.import_module, "manager.api.scim")
        _loaded.update(module.handlers())
    return _loaded[name]


def _lazy(name: str) -> Handler:
    async def run(request: web.Request) -> web.StreamResponse:
        return await (await _handler(name))(request)

    # The OpenAPI document's operationId.
    run.__name__ = run.__qualname__ = name
    return run


def add_scim_routes(table: RouteTable) -> None:
    def scim(method: str, path: str, name: str, summary: str, audit: str | None) -> None:
        errors = (400, 404, 409, 501) if method != "GET" else (400, 404)
        table.add(
            Route(
                method,
                f"{BASE}{path}",
                _lazy(name),
                summary,
                "scim",
                streaming="scim",
                errors=errors,
                audit=audit,
            )
        )

    scim(
        "GET",
        "/ServiceProviderConfig",
        "service_provider_config",
        "SCIM: the server's features",
        None,
    )
    scim("GET", "/ResourceTypes", "resource_types", "SCIM: the resource types", None)
    scim("GET", "/ResourceTypes/{name}", "resource_type", "SCIM: one resource type", None)
    scim("GET", "/Schemas", "schemas", "SCIM: the schemas", None)
    scim("GET", "/Schemas/{schema_id}", "schema", "SCIM: one schema", None)
    scim("GET", "/Users", "list_users", "SCIM: list users (filter, startIndex, count)", None)
    scim("POST", "/Users", "create_user", "SCIM: provision a user", "scim_user")
    scim("POST", "/Users/.search", "search_users", "SCIM: search users (a SearchRequest)", None)
    scim("GET", "/Users/{scim_id}", "get_user", "SCIM: one user", None)
    scim("PUT", "/Users/{scim_id}", "replace_user", "SCIM: replace a user", "scim_user")
    scim(
        "PATCH", "/Users/{scim_id}", "patch_user", "SCIM: patch a user (active: false)", "scim_user"
    )
    scim("DELETE", "/Users/{scim_id}", "delete_user", "SCIM: deprovision a user", "scim_user")
    scim("GET", "/Groups", "list_groups", "SCIM: list groups (filter, startIndex, count)", None)
    scim("POST", "/Groups", "create_group", "SCIM: provision a group", "scim_group")
    scim("POST", "/Groups/.search", "search_groups", "SCIM: search groups", None)
    scim("GET", "/Groups/{scim_id}", "get_group", "SCIM: one group", None)
    scim("PUT", "/Groups/{scim_id}", "replace_group", "SCIM: replace a group", "scim_group")
    scim(
        "PATCH",
        "/Groups/{scim_id}",
        "patch_group",
        "SCIM: patch a group's members",
        "scim_group",
    )
    scim("DELETE", "/Groups/{scim_id}", "delete_group", "SCIM: deprovision a group", "scim_group")
    scim("POST", "/.search", "search_all", "SCIM: a search of every type (declined: 501)", None)
    scim("GET", "/{resource}", "unknown", "SCIM: an unknown endpoint (a SCIM 404)", None)
    for route in (
        Route(
            "POST",
            _TOKENS,
            _lazy("create_token"),
            "Create a SCIM token for an identity provider's provisioning (shown once)",
            "user",
            ScimTokenCreate,
            ScimTokenCreated,
            status=201,
            errors=(400, 409),
            audit="scim_token",
        ),
        Route(
            "GET", _TOKENS, _lazy("list_tokens"), "List SCIM tokens", "user", None, ScimTokenList
        ),
        Route(
            "DELETE",
            f"{_TOKENS}/{{name}}",
            _lazy("revoke_token"),
            "Revoke a SCIM token",
            "user",
            None,
            ScimTokenRevoked,
            errors=(404,),
            audit="scim_token",
        ),
    ):
        table.add(route)
