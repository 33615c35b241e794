"""Recording changes: handlers describe what they changed, and the event is written with it.

Every mutating user route declares the resource type it changes (``Route.audit``), and every
one writes its event in the change's own transaction: the handler hands the service
:func:`in_transaction` with a function that describes the change from the row the store
wrote; the service passes it to the store write that makes the change, and the store chains
the event in the same transaction. The change and its event commit together or not at all:
no outage keeps one and loses the other (tests/manager/audit/test_coverage.py proves it for
every route). A change of several writes (deleting a group, disabling a user and ending
their sessions, a secret and its usage scope, a login's session and what it spends) is one
transaction with its event. Once a handler has asked for the hook, the middleware writes no
event of its own: a write that wrote nothing changed nothing.

Two kinds of write stand apart, by design. A request whose only write is its event (a
secret manager's test) chains it before answering (:func:`record_now`); when it cannot be
written the request fails. The count of a login attempt and the lock it sets are written
before the credentials are checked and stand whatever follows, the trail unwritable too: the
lock's event goes in the count's transaction when it can (manager.access.login).

:func:`record` (the event written by the middleware after a 2xx, in a transaction of its
own) is left for a route not yet converted; none uses it, and one that did would fail the
test above. :func:`unchanged` says the request changed nothing, and a request that fails
writes nothing of its own. Host-side commands write through :class:`AuditRecorder`
directly, as ``SYSTEM``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web

from manager.api.http import Handler, RouteTable
from manager.api.identity import actor_of, client_ip
from manager.audit.recorder import AuditRecorder, Change, key_the_chain
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.identity import Actor
from manager.store.base import StoreError

__all__ = [
    "AUDIT",
    "AuditRecorder",
    "Change",
    "audit_middleware",
    "in_transaction",
    "key_the_chain",
    "record",
    "record_now",
    "unchanged",
]

log = structlog.get_logger("tether.audit")

# What a method does when its handler did not say (a handler that forgot to call record()).
_ACTION_OF_METHOD = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}


AUDIT: web.AppKey[AuditRecorder] = web.AppKey("tether_audit", AuditRecorder)
_CHANGE: web.RequestKey[Change] = web.RequestKey("tether_audit_change", Change)
_UNCHANGED: web.RequestKey[bool] = web.RequestKey("tether_audit_unchanged", bool)
# The route's resource type, for in_transaction; and whether this request's event goes
# with its change (then the middleware writes none: when the store wrote nothing, there was
# no change, and so no event).
_RESOURCE_TYPE: web.RequestKey[str] = web.RequestKey("tether_audit_resource_type", str)
_CHAINED: web.RequestKey[bool] = web.RequestKey("tether_audit_chained", bool)

T = TypeVar("T")


def in_transaction(
    request: web.Request,
    describe: Callable[[T], Change | None],
    *,
    acting: Callable[[T], Actor] | None = None,
) -> AuditOf[T]:
    """This request's event, made by ``describe`` from the row the store writes (None: no
    event), for the service to pass to that write: the store chains it in the same
    transaction. Only for a route that declares its resource type (``Route.audit``).
    ``acting``: who acted, from the row written (a login route: the user who signed in,
    known only then); else the request's actor."""
    recorder = request.app[AUDIT]
    resource_type = request[_RESOURCE_TYPE]
    method, path, address = request.method, request.path, client_ip(request)
    # Its event goes with its change, or there is none: never one after the change.
    request[_CHAINED] = True

    def entry(written: T) -> AuditAppend | None:
        change = describe(written)
        if change is None:
            return None
        return recorder.entry(
            actor_of(request) if acting is None else acting(written),
            change,
            resource_type=resource_type,
            method=method,
            path=path,
            client_ip=address,
        )

    return entry


async def record_now(request: web.Request, change: Change) -> None:
    """The event of a request that changes no row but is to be recorded (a secret manager's
    test, which runs the manager's credentials on a delegate): the event is the whole of
    what it writes, so it is its own transaction, written before the answer. When it cannot
    be written the request fails (503): no answer tells what the trail does not hold."""
    request[_CHAINED] = True
    await request.app[AUDIT].write(
        actor_of(request),
        change,
        resource_type=request[_RESOURCE_TYPE],
        method=request.method,
        path=request.path,
        client_ip=client_ip(request),
    )


def record(
    request: web.Request,
    *,
    resource_id: str,
    name: str,
    action: str,
    summary: str,
    before: Any = None,
    after: Any = None,
    app: str | None = None,
) -> None:
    """Describe the change this request made; written once the handler has succeeded. A
    second call replaces the first: a request is one event."""
    request[_CHANGE] = Change(resource_id, name, action, summary, before, after, app)


def unchanged(request: web.Request) -> None:
    """This request changed nothing: it writes no event."""
    request[_UNCHANGED] = True


def audit_middleware(table: RouteTable) -> Callable[..., object]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = table.route_for(request)
        if route is None or route.audit is None:
            return await handler(request)
        request[_RESOURCE_TYPE] = route.audit
        response = await handler(request)
        if not 200 <= response.status < 300 or request.get(_UNCHANGED) or request.get(_CHAINED):
            return response
        change = request.get(_CHANGE)
        if change is None:
            # Still one event, from what the route says: a change must never go unrecorded.
            log.warning("handler described no change", method=request.method, path=route.path)
            change = Change(
                resource_id="/".join(request.match_info.values()),
                name="",
                action=_ACTION_OF_METHOD.get(request.method, request.method.lower()),
                summary=f"{request.method} {request.path}",
            )
        try:
            await request.app[AUDIT].write(
                actor_of(request),
                change,
                resource_type=route.audit,
                method=request.method,
                path=request.path,
                client_ip=client_ip(request),
            )
        except StoreError:
            log.exception(
                "audit event lost",
                resource_type=route.audit,
                resource_id=change.resource_id,
                action=change.action,
                summary=change.summary,
            )
        return response

    return middleware
