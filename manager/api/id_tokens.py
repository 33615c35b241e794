"""Workload identity routes: the OIDC discovery document, the JWKS, and a task's token.

The discovery document and the JWKS are public (a relying party fetches them without any
credential). ``POST /api/v1/id-token`` takes no user credential either: it takes a task's
request credential (``Authorization: Bearer``), which manager.tasks.id_tokens judges.
"""

from __future__ import annotations

from aiohttp import web

from manager.api.http import Route, RouteTable, json_response
from manager.schemas.identity_tokens import IdTokenAnswer
from manager.tasks.id_tokens import ID_TOKEN_PATH, JWKS_PATH, IdTokens

__all__ = ["DISCOVERY_PATH", "ID_TOKENS", "add_id_token_routes"]

ID_TOKENS: web.AppKey[IdTokens] = web.AppKey("tether_id_tokens", IdTokens)
DISCOVERY_PATH = "/.well-known/openid-configuration"
# Relying parties fetch these on every unknown key id: a minute of caching is enough.
_CACHE = {"Cache-Control": "public, max-age=60"}


async def discovery(request: web.Request) -> web.Response:
    return web.json_response(request.app[ID_TOKENS].discovery(), headers=_CACHE)


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(await request.app[ID_TOKENS].jwks(), headers=_CACHE)


async def issue_id_token(request: web.Request) -> web.Response:
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    given = credential.strip() if scheme.lower() == "bearer" else None
    token = await request.app[ID_TOKENS].issue(given, request.query.get("audience"))
    return json_response(IdTokenAnswer(value=token))


def add_id_token_routes(table: RouteTable) -> None:
    table.add(Route("GET", DISCOVERY_PATH, discovery, "OIDC discovery for task tokens", "none"))
    table.add(Route("GET", JWKS_PATH, jwks, "The keys task tokens are signed with", "none"))
    table.add(
        Route(
            "POST",
            ID_TOKEN_PATH,
            issue_id_token,
            "A running task's OIDC token (its request credential as the bearer)",
            "none",
            response=IdTokenAnswer,
            query={"audience": "string"},
            errors=(400, 401, 403),
        )
    )
