"""GET /api/v1/delegate/token: what a delegate token is, asked with the token itself.

For ``tether-delegate doctor``: whether the manager knows the token, and what the token's
delegates may run (its scope), without registering a delegate or changing anything. It
answers only what the token's holder can already do with it; no other token or delegate
is named.
"""

from __future__ import annotations

from aiohttp import web

from manager.access.places import places
from manager.access.tokens import scope_view
from manager.api.delegate_plane import presented_token
from manager.api.guards import ACCESS
from manager.api.http import Route, RouteTable, json_response
from manager.core.eligibility import DelegateScope
from manager.schemas.tasks import TokenView

__all__ = ["add_delegate_check_routes"]


async def token_info(request: web.Request) -> web.Response:
    record = await presented_token(request)
    where = await places(request.app[ACCESS].directory)
    return json_response(
        TokenView(
            id=record.id,
            name=record.name,
            created_at=record.created_at,
            revoked_at=record.revoked_at,
            scope=scope_view(DelegateScope.load(record.scope), where),
        )
    )


def add_delegate_check_routes(table: RouteTable) -> None:
    table.add(
        Route(
            "GET",
            "/api/v1/delegate/token",
            token_info,
            "The calling delegate token's name and scope (for tether-delegate doctor)",
            "delegate_token",
            None,
            TokenView,
            errors=(401,),
        )
    )
