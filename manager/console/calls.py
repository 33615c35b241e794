"""A console page asks the API handler itself, not a copy of it.

Each page or action runs the REST route's own handler on a clone of its request: the same
service calls, the same checks of applications and environments, the same audit event in
the same transaction, the same refusals. The console route was let through the same guards
with the same permission (manager.console.routes), so the handler sees the same principal.
Only a handler that answers JSON can be called this way; the log reads its pages through
the same service read the API's log page uses (manager.console.logs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.payload import Payload
from multidict import CIMultiDict

from manager.access.principal import Principal, principal_of
from manager.api.http import ApiProblem, Handler, RouteTable
from manager.api.permissions import Permission, permission_of

__all__ = ["API_ROUTES", "call_api", "passes"]

API_ROUTES: web.AppKey[RouteTable] = web.AppKey("tether_console_routes", RouteTable)


def _guard(request: web.Request, handler: Handler) -> None:
    """The API route's own permission, judged again for the principal the console route
    was let through with: a page cannot reach a handler whose route would refuse its user,
    whatever the console route's own entry in the matrix says."""
    route = next((r for r in request.app[API_ROUTES].routes if r.handler is handler), None)
    if route is None or route.console:
        raise RuntimeError("the console calls API handlers only")
    if route.auth != "user":
        return
    principal = principal_of(request)
    needed = permission_of(route)
    if principal.restricted is not None and needed != "self":
        raise ApiProblem(403, f"{principal.restricted}_required", "first finish signing in")
    if not passes(principal, needed):
        raise ApiProblem(403, "forbidden", f"this needs the {needed} permission")


def passes(principal: Principal | None, needed: Permission | None) -> bool:
    """Whether manager.api.guards' authorize lets ``principal`` through to a route that
    needs ``needed``: a restricted session only to its own ("self") routes."""
    if principal is None or needed is None:
        return False
    if principal.restricted is not None:
        return needed == "self"
    if needed == "authenticated" or needed == "self":
        return True
    return principal.grants.has(needed)


async def call_api(
    request: web.Request,
    handler: Handler,
    *,
    query: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | None = None,
) -> Any:
    """The JSON the API's ``handler`` answers for this request, with ``query`` instead of
    the page's own query and ``body`` as its JSON body; its refusal is raised as the API
    raises it. What the handler records on the request (the actor of a login, the audit
    hook's marks) is kept on the console's request, so the audit middleware sees it."""
    _guard(request, handler)
    headers = CIMultiDict(request.headers)
    if body is not None:
        headers["Content-Type"] = "application/json"
    rel = request.rel_url if query is None else request.rel_url.with_query(dict(query))
    # aiohttp refuses to clone a request whose body was read (a form); the clone never reads
    # the stream (its body is set below), so the read is set aside for the clone's making.
    read, request._read_bytes = request._read_bytes, None
    try:
        sub = request.clone(rel_url=rel, headers=headers)
    finally:
        request._read_bytes = read
    sub._read_bytes = b"" if body is None else json.dumps(body).encode()
    try:
        response = await handler(sub)
    finally:
        for key in list(sub):
            request[key] = sub[key]
    if not isinstance(response, web.Response) or response.prepared:
        raise TypeError("only a handler that answers JSON in one body can serve a page")
    raw = response.body
    if isinstance(raw, Payload):
        raw = await raw.as_bytes()
    data = json.loads(raw) if raw else None
    if response.status >= 400:
        # A handler that answers its refusal instead of raising it (the login's 429).
        error = data.get("error", {}) if isinstance(data, dict) else {}
        raise ApiProblem(
            response.status,
            str(error.get("code", "refused")),
            str(error.get("message", "refused")),
            field=error.get("field"),
        )
    return data
