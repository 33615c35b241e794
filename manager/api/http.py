"""HTTP plumbing: the route registry behind the OpenAPI document, body parsing, errors.

Handlers raise :class:`~manager.errors.ApiProblem`; the middleware answers every error with
``{"error": {"code", "message", "field"}}``. An unexpected exception is logged with its
traceback on the server and answered with a plain 500 that carries no detail.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from manager.errors import (
    Broken,
    Conflicting,
    DomainError,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unsupported,
    UpstreamFailed,
    UpstreamTimeout,
)
from manager.store.base import BadData, DiskFull, StoreError
from manager.store.health import DISK_FULL
from shared.protocol import describe_validation_error
from shared.repeats import RepeatedErrors

__all__ = [
    "MAX_JSON_DEPTH",
    "STATUS",
    "ApiProblem",
    "AuthKind",
    "Route",
    "RouteTable",
    "client_gone",
    "error_middleware",
    "json_response",
    "nesting_depth",
    "parse_body",
]

log = structlog.get_logger("tether.http")

# While the database is away every request fails alike: one traceback, then counts. Data a
# client keeps sending is logged the same way, without a traceback (nothing broke here).
_store_failures = RepeatedErrors(log, "store error")
_refused_data = RepeatedErrors(log, "store refused a value")


class ApiProblem(Exception):
    """A refusal made in the API itself (a bad query, a route's own rule), with its status."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


# The one map from the services' refusals (manager.errors) to HTTP statuses.
STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflicting: 409,
    Gone: 410,
    TooLarge: 413,
    Unsupported: 415,
    Broken: 500,
    UpstreamFailed: 502,
    Unavailable: 503,
    UpstreamTimeout: 504,
}

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# "login": no credential yet (a password, an invite or an SSO callback instead), but judged
# by the IP allowlist as user traffic is.
# "scim": a SCIM token (manager.api.scim checks it), judged by the allowlist too.
AuthKind = Literal["none", "login", "user", "delegate_token", "delegate", "scim"]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: AuthKind
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: dict[str, str] = field(default_factory=dict)
    # Not JSON: a WebSocket upgrade, a chunked NDJSON stream, plain text, or an export
    # (JSON Lines or CSV, as its ``format`` parameter asks).
    streaming: Literal["websocket", "ndjson", "text", "export", "scim"] | None = None
    errors: tuple[int, ...] = ()
    # The resource type a mutating user route changes (its audit events' resource_type);
    # None for reads. The handler describes the change (manager.api.audit_record.record), and
    # the audit middleware writes it once the handler has succeeded.
    audit: str | None = None
    # A page or action of the web console (manager/console): its credential is the session
    # cookie, not a bearer header; it is left out of the OpenAPI document.
    console: bool = False


class RouteTable:
    """Routes are declared once here; aiohttp and the OpenAPI document both read them."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._by_handler: dict[tuple[object, str], Route] = {}

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self._by_handler[(route.handler, route.method)] = route

    def install(self, app: web.Application) -> None:
        for r in self.routes:
            app.router.add_route(r.method, r.path, r.handler)

    def route_for(self, request: web.Request) -> Route | None:
        return self._by_handler.get((request.match_info.route.handler, request.method))

    def is_console(self, request: web.Request) -> bool:
        route = self.route_for(request)
        return route is not None and route.console

    def auth_for(self, request: web.Request) -> AuthKind | None:
        route = self.route_for(request)
        return None if route is None else route.auth


async def parse_body(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise ApiProblem(415, "unsupported_media_type", "send the body as application/json")
    raw = await request.read()  # bounded by the application's client_max_size (413 past it)
    too_deep = ApiProblem(400, "bad_json", f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, "bad_json", f"body is not valid JSON: {exc}") from None
    # Judged before the models see it: they recurse once per level, and a deep enough body
    # would exhaust the stack (a 500) on any route, signed in or not.
    if nesting_depth(data, stop_after=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise too_deep
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # The location and message only: the input could be a secret value.
        field, message = describe_validation_error(exc)
        raise ApiProblem(400, "invalid", message, field=field) from None


# No request model comes near this; a body past it is an attack or a mistake.
MAX_JSON_DEPTH = 32


def nesting_depth(data: object, *, stop_after: int) -> int:
    """How deep the lists and dicts of parsed JSON nest (a scalar is 0), counting no further
    than ``stop_after + 1``. Level by level, without recursion: it is the check that keeps
    recursion off the stack."""
    depth = 0
    # Only the lists and dicts json.loads makes (type(), not isinstance: it is the hot loop).
    level: list[Any] = [data] if type(data) in _CONTAINERS else []
    while level and depth <= stop_after:
        depth += 1
        below: list[Any] = []
        for value in level:
            below.extend(value.values() if type(value) is dict else value)
        level = [v for v in below if type(v) in _CONTAINERS]
    return depth


_CONTAINERS = (dict, list)


def json_response(model: BaseModel, *, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json(), status=status, content_type="application/json"
    )


def status_of(error: DomainError) -> int:
    return next(STATUS[c] for c in type(error).__mro__ if c in STATUS)


def problem_response(
    status: int, code: str, message: str, field: str | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiProblem as p:
        return problem_response(p.status, p.code, p.message, p.field)
    except DomainError as e:
        return problem_response(status_of(e), e.code, e.message, e.field)
    except web.HTTPRequestEntityTooLarge as exc:
        return problem_response(413, "too_large", exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        return problem_response(exc.status, code, exc.reason)
    except BadData as exc:
        _refused_data.error(exc, traceback=False, path=request.path)
        return problem_response(422, "bad_data", str(exc))
    except DiskFull:
        # Not "unavailable": retrying soon will not help. Logged once by the store's health
        # when it starts and once when it ends, not once per request.
        return problem_response(503, "disk_full", DISK_FULL)
    except StoreError as exc:
        _store_failures.error(exc, path=request.path)
        return problem_response(503, "unavailable", "the database is unavailable; try again")
    except Exception as exc:
        if isinstance(exc, ConnectionError) and client_gone(request):
            # Its client went away mid-request (a delegate killed while it sent a result,
            # a dropped network, a reader gone while a write of its answer waited: aiohttp's
            # "Connection lost"): nobody reads this answer, and it is no fault of the
            # manager's to log as one (it was a 500 and a traceback). Any route, JSON or
            # form.
            return problem_response(
                400, "incomplete_body", "the connection closed before the request was read"
            )
        log.exception("unhandled error", method=request.method, path=request.path)
        return problem_response(500, "internal", "internal error")


def client_gone(request: web.Request) -> bool:
    """aiohttp drops a request's transport once its connection is lost."""
    transport = request.transport
    return transport is None or transport.is_closing()
