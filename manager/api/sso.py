"""SSO routes under /api/v1/auth/sso: the settings, and the three steps of a login
(manager.access.sso): start, the browser's callback, and the CLI's poll for its session."""

from __future__ import annotations

import html

from aiohttp import web

from manager.access.login import LOGINS
from manager.access.sso import Oidc, SsoError, SsoSettings
from manager.api.audit_record import record, unchanged
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.http import Route, RouteTable, json_response, parse_body
from manager.api.identity import ACTOR_KEY
from manager.core.identity import Actor
from manager.errors import ApiProblem
from manager.schemas.auth import SsoPoll, SsoSession, SsoStarted, SsoUser

__all__ = ["add_sso_routes", "oidc_of"]


def oidc_of(request: web.Request) -> Oidc:
    c = ctx(request)
    service = c.secrets
    if service is None:
        raise ApiProblem(503, "unavailable", "secrets are not set up")
    logins = request.app[LOGINS]

    async def domain_allowed(email: str) -> bool:
        return (await logins.settings()).domain_allowed(email)

    return Oidc(
        c.store,
        request.app[ACCESS].directory,
        service.builtin_value,
        domain_allowed=domain_allowed,
        clock=c.clock,
    )


def _settings_view(s: SsoSettings) -> dict[str, object]:
    # The client secret is a secret's name, never its value.
    return s.model_dump(mode="json")


async def get_settings(request: web.Request) -> web.Response:
    found = await oidc_of(request).settings.get("oidc")
    if found is None:
        raise ApiProblem(404, "not_found", "single sign-on is not configured")
    return json_response(found.body)


async def put_settings(request: web.Request) -> web.Response:
    body = await parse_body(request, SsoSettings)
    secret = await ctx(request).store.secret_by_name(body.client_secret)
    if secret is None or secret.manager_id != "sm_builtin":
        raise ApiProblem(
            400,
            "invalid",
            f"client_secret: no builtin secret {body.client_secret!r} (create it first)",
            field="client_secret",
        )
    before = await oidc_of(request).save_settings(body)
    record(
        request,
        resource_id="oidc",
        name="OpenID Connect",
        action="create" if before is None else "update",
        summary=f"set single sign-on through {body.issuer}",
        before=None if before is None else _settings_view(before),
        after=_settings_view(body),
    )
    return json_response(body)


async def start(request: web.Request) -> web.Response:
    try:
        url, state, poll, expires = await oidc_of(request).start()
    except SsoError as exc:
        raise ApiProblem(400, "sso_unavailable", str(exc)) from None
    return json_response(
        SsoStarted(authorize_url=url, state=state, poll_secret=poll, expires_at=expires)
    )


async def callback(request: web.Request) -> web.Response:
    q = request.query
    try:
        user = await oidc_of(request).callback(q.get("state", ""), q.get("code"), q.get("error"))
    except SsoError as exc:
        return _page(400, "Sign-in failed", str(exc))
    return _page(200, "Signed in", f"Signed in as {user.email}. Return to your terminal.")


def _page(status: int, title: str, text: str) -> web.Response:
    body = (
        f"<!doctype html><title>Tether: {html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
    )
    return web.Response(status=status, text=body, content_type="text/html")


async def poll(request: web.Request) -> web.Response:
    body = await parse_body(request, SsoPoll)
    try:
        done = await oidc_of(request).poll(body.state, body.poll_secret)
    except SsoError as exc:
        raise ApiProblem(400, "sso_failed", str(exc)) from None
    if done is None:
        unchanged(request)
        return json_response(SsoSession(status="pending"), status=202)
    logins = request.app[LOGINS]
    # The provider did the password and the second factor: the session is not restricted.
    session = await logins.session(done, await logins.settings(), via="sso")
    user = session.user
    request[ACTOR_KEY] = Actor("user", user.id, user.body.email)
    record(
        request,
        resource_id=user.id,
        name=user.body.email,
        action="login",
        summary=f"{user.body.email} signed in through SSO",
    )
    view = SsoUser(id=user.id, email=user.body.email, name=user.body.name)
    return json_response(
        SsoSession(status="done", token=session.token, expires_at=session.expires_at, user=view)
    )


def add_sso_routes(table: RouteTable) -> None:
    base = "/api/v1/auth/sso"
    for route in (
        Route(
            "GET",
            base,
            get_settings,
            "Show the SSO settings",
            "user",
            None,
            SsoSettings,
            errors=(404,),
        ),
        Route(
            "PUT",
            base,
            put_settings,
            "Set single sign-on through an OpenID Connect provider",
            "user",
            SsoSettings,
            SsoSettings,
            errors=(400,),
            audit="sso_settings",
        ),
        Route(
            "POST",
            f"{base}/start",
            start,
            "Begin an SSO login",
            "login",
            None,
            SsoStarted,
            errors=(400,),
        ),
        Route(
            "GET",
            f"{base}/callback",
            callback,
            "Where the identity provider sends the browser back",
            "login",
            streaming="text",
            query={"state": "string", "code": "string", "error": "string"},
        ),
        Route(
            "POST",
            f"{base}/poll",
            poll,
            "Collect the session of a completed SSO login (202 while pending)",
            "login",
            SsoPoll,
            SsoSession,
            errors=(400,),
            audit="session",
        ),
    ):
        table.add(route)
