"""Incoming webhooks through the API: the definitions under /api/v1/webhooks (their secret
shown once), and the delivery endpoint ``POST /hooks/{webhook_id}``, outside the user API's
authentication: each delivery proves itself with its webhook's secret
(manager.incidents.webhooks). The IP allowlist judges deliveries as it judges user traffic."""

from __future__ import annotations

from aiohttp import web

from manager.access.entities import Entity
from manager.access.granting import check_grantable
from manager.access.principal import principal_of
from manager.api.audit_record import Change, in_transaction, unchanged
from manager.api.guards import ACCESS
from manager.api.http import AuthKind, Route, RouteTable, json_response, parse_body
from manager.api.incident_services import services
from manager.core.identity import Actor
from manager.errors import TooLarge
from manager.incidents.incidents import IncidentBody
from manager.incidents.webhooks import MAX_DELIVERY_BYTES, IncidentAudit, Refused, WebhookBody
from manager.records import SecretRecord
from manager.schemas.incidents import (
    DeliveryAccepted,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookView,
)

__all__ = ["add_webhook_routes"]


def _audit_view(view: WebhookView) -> dict[str, object]:
    return view.model_dump(mode="json", exclude={"accepted", "rejected"})


async def create_webhook(request: web.Request) -> web.Response:
    req = await parse_body(request, WebhookCreate)
    hooks = services(request).webhooks
    # The runs it starts act with these groups: the creator must be able to give them.
    await check_grantable(
        request, request.app[ACCESS].directory, await hooks.groups_named(req.groups)
    )
    views: dict[str, WebhookView] = {}

    def created(e: Entity[WebhookBody]) -> Change:
        view = views[e.id] = WebhookView(
            id=e.id, path=f"/hooks/{e.id}", created_at=e.created_at, **e.body.model_dump()
        )
        summary = f"created webhook {e.body.name} and its secret {e.body.secret_name}"
        return Change(e.id, e.body.name, "create", summary, after=_audit_view(view))

    # One request, one event: the webhook's, which names its secret (made just before it,
    # sealed, usable by no task; removed again if the webhook cannot be stored).
    made, secret = await hooks.create(
        req, principal_of(request).actor.id, audit=in_transaction(request, created)
    )
    view = views.get(made.id) or await hooks.view(made)
    return json_response(WebhookCreated(**view.model_dump(), secret=secret), status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    hooks = services(request).webhooks
    return json_response(WebhookList(webhooks=[await hooks.view(e) for e in await hooks.all()]))


async def get_webhook(request: web.Request) -> web.Response:
    hooks = services(request).webhooks
    return json_response(await hooks.view(await hooks.get(request.match_info["name"])))


async def delete_webhook(request: web.Request) -> web.Response:
    hooks = services(request).webhooks

    def deleted(e: Entity[WebhookBody]) -> Change:
        view = WebhookView(
            id=e.id, path=f"/hooks/{e.id}", created_at=e.created_at, **e.body.model_dump()
        )
        summary = f"deleted webhook {e.body.name} and its secret {e.body.secret_name}"
        return Change(e.id, e.body.name, "delete", summary, before=_audit_view(view))

    await hooks.delete(request.match_info["name"], audit=in_transaction(request, deleted))
    return web.Response(status=204)


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    hooks = services(request).webhooks
    name = request.match_info["name"]

    def rotated(s: SecretRecord) -> Change:
        return Change(
            s.id, s.name, "update", f"rotated the secret of webhook {name} (v{s.current_version})"
        )

    hook, secret = await hooks.rotate(
        name, principal_of(request).actor.id, audit=in_transaction(request, rotated)
    )
    view = await hooks.view(hook)
    return json_response(WebhookCreated(**view.model_dump(), secret=secret))


async def _body(request: web.Request) -> bytes:
    """The raw body, refused past MAX_DELIVERY_BYTES without reading the rest."""
    if (request.content_length or 0) > MAX_DELIVERY_BYTES:
        raise TooLarge("too_large", f"a delivery is at most {MAX_DELIVERY_BYTES} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > MAX_DELIVERY_BYTES:
            raise TooLarge("too_large", f"a delivery is at most {MAX_DELIVERY_BYTES} bytes")
    return bytes(data)


async def deliver(request: web.Request) -> web.Response:
    hooks = services(request).webhooks
    webhook_id = request.match_info["webhook_id"]
    try:
        body = await _body(request)
    except TooLarge:
        await hooks.count_refusal(webhook_id, "too large")
        raise

    def incident_audit(hook: Entity[WebhookBody]) -> IncidentAudit:
        actor = Actor("system", f"webhook:{hook.id}", f"webhook {hook.body.name}")

        def describe(change: tuple[IncidentBody | None, Entity[IncidentBody]]) -> Change:
            before, after = change
            # The incident's words are sealed at rest: the trail names its id and status only.
            summary = f"alert delivery to webhook {hook.body.name}: incident {after.id}"
            return Change(
                after.id,
                after.id,
                "create" if before is None else "update",
                f"{summary} {after.body.status}",
                before=None if before is None else {"status": before.status},
                after={"status": after.body.status},
            )

        return in_transaction(request, describe, acting=lambda _c: actor)

    try:
        answer: DeliveryAccepted = await hooks.deliver(
            webhook_id, request.headers, body, incident_audit=incident_audit
        )
    except Refused as refused:
        raise refused.error from None
    if answer.incident_id is None:
        unchanged(request)  # a run's start is recorded by the run itself
    return json_response(answer, status=202)


def add_webhook_routes(table: RouteTable) -> None:
    u: AuthKind = "user"
    table.add(
        Route(
            "POST",
            "/api/v1/webhooks",
            create_webhook,
            "Create an incoming webhook (its secret is shown once)",
            u,
            WebhookCreate,
            WebhookCreated,
            201,
            errors=(400, 403, 409),
            audit="webhook",
        )
    )
    table.add(
        Route("GET", "/api/v1/webhooks", list_webhooks, "List webhooks", u, None, WebhookList)
    )
    table.add(
        Route(
            "GET",
            "/api/v1/webhooks/{name}",
            get_webhook,
            "A webhook",
            u,
            None,
            WebhookView,
            errors=(404,),
        )
    )
    table.add(
        Route(
            "DELETE",
            "/api/v1/webhooks/{name}",
            delete_webhook,
            "Delete a webhook and its secret",
            u,
            None,
            None,
            204,
            errors=(404,),
            audit="webhook",
        )
    )
    table.add(
        Route(
            "POST",
            "/api/v1/webhooks/{name}/rotate-secret",
            rotate_webhook_secret,
            "Replace a webhook's secret (the new one is shown once)",
            u,
            None,
            WebhookCreated,
            errors=(404,),
            audit="webhook",
        )
    )
    table.add(
        Route(
            "POST",
            "/hooks/{webhook_id}",
            deliver,
            "Deliver to an incoming webhook (signed with its secret, or its bearer token)",
            "login",
            None,
            DeliveryAccepted,
            202,
            errors=(400, 401, 404, 409, 413),
            audit="incident",
        )
    )
