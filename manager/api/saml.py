"""SAML routes under /api/v1/auth/saml: the settings (admin), Tether's SP metadata, the
start of a login (an AuthnRequest), and the assertion consumer service the browser posts the
IdP's Response to (manager.access.saml). The session is collected with the OIDC login's poll
(/api/v1/auth/sso/poll), after the same approval in the browser."""

from __future__ import annotations

import secrets

from aiohttp import web

from manager.access.entities import Entity
from manager.access.external import SsoError, UserEvents
from manager.access.login import LOGINS
from manager.access.saml import Saml, sp_metadata
from manager.api.audit_record import Change, in_transaction
from manager.api.context import ctx
from manager.api.failed_logins import FAILED_LOGINS
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, Route, RouteTable, json_response, parse_body
from manager.api.identity import client_ip
from manager.api.sso import _login_events, approval_page, oidc_of, page, started
from manager.schemas.auth import SsoStart, SsoStarted
from manager.schemas.directory_auth import SamlSettings, SettingsDeleted

__all__ = ["add_saml_routes", "saml_of"]

MAX_RESPONSE = 512 * 1024


def saml_of(request: web.Request) -> Saml:
    c = ctx(request)
    logins = request.app[LOGINS]

    async def domain_allowed(email: str) -> bool:
        return (await logins.settings()).domain_allowed(email)

    return Saml(request.app[ACCESS].directory, domain_allowed=domain_allowed, clock=c.clock)


def _view(s: SamlSettings) -> dict[str, object]:
    view = s.model_dump(mode="json")
    view["idp_metadata"] = f"({len(s.idp_metadata)} characters of XML)"
    return view


async def get_settings(request: web.Request) -> web.Response:
    found = await saml_of(request).current()
    if found is None:
        raise ApiProblem(404, "not_found", "SAML sign-in is not configured")
    return json_response(found)


async def put_settings(request: web.Request) -> web.Response:
    body = await parse_body(request, SamlSettings)

    def saved(written: tuple[SamlSettings | None, Entity[SamlSettings]]) -> Change:
        before, after = written[0], written[1].body
        return Change(
            "saml",
            "SAML",
            "create" if before is None else "update",
            f"set SAML sign-in as {after.sp_entity_id}",
            before=None if before is None else _view(before),
            after=_view(after),
        )

    try:
        await saml_of(request).save_settings(body, audit=in_transaction(request, saved))
    except SsoError as exc:
        raise ApiProblem(400, "invalid", str(exc), field="idp_metadata") from None
    return json_response(body)


async def delete_settings(request: web.Request) -> web.Response:
    def deleted(gone: Entity[SamlSettings]) -> Change:
        return Change("saml", "SAML", "delete", "turned off SAML sign-in", before=_view(gone.body))

    if not await saml_of(request).delete_settings(audit=in_transaction(request, deleted)):
        raise ApiProblem(404, "not_found", "SAML sign-in is not configured")
    return json_response(SettingsDeleted(deleted=True))


async def metadata(request: web.Request) -> web.Response:
    try:
        settings = await saml_of(request).configured()
    except SsoError as exc:
        raise ApiProblem(400, "saml_unavailable", str(exc)) from None
    return web.Response(text=sp_metadata(settings), content_type="text/plain")


async def start(request: web.Request) -> web.Response:
    body = await parse_body(request, SsoStart)
    saml = saml_of(request)
    try:
        settings = await saml.configured()
        state = secrets.token_urlsafe(32)
        request_id, url = await saml.authn_request(settings, state)
    except SsoError as exc:
        raise ApiProblem(400, "saml_unavailable", str(exc)) from None
    expires = await oidc_of(request).pend(state, request_id, body.verifier_hash, body.client_name)
    return started(url, state, expires, body.verifier_hash)


async def acs(request: web.Request) -> web.Response:
    """The IdP's Response, posted by the browser (HTTP-POST binding)."""
    failed = request.app[FAILED_LOGINS]
    address = client_ip(request)
    if request.content_type != "application/x-www-form-urlencoded":
        failed.note(None, address)
        return page(400, "Sign-in failed", "this takes the SAML HTTP-POST binding's form")
    form = await request.post()
    state, saml_response = str(form.get("RelayState", "")), str(form.get("SAMLResponse", ""))
    oidc = oidc_of(request)
    login = await oidc.logins.by_key(state) if state else None
    if login is None or login.body.expires_at <= ctx(request).clock():
        failed.note(None, address)
        return page(
            400, "Sign-in failed", "this sign-in is unknown or has expired (no pending request)"
        )
    if login.body.user_id is not None or login.body.error is not None:
        failed.note(None, address)
        return page(400, "Sign-in failed", "this sign-in was already completed")
    if not saml_response or len(saml_response) > MAX_RESPONSE:
        failed.note(None, address)
        return page(400, "Sign-in failed", "the form holds no SAMLResponse (or too large a one)")
    saml = saml_of(request)
    try:
        settings = await saml.configured()
        answer = await saml.verify(settings, saml_response, login.body.nonce)
        events = _login_events(request)
        user = await saml.users.user_for(
            answer.identity,
            settings.group_mapping,
            UserEvents(join=events.join, groups=events.groups),
        )
    except SsoError as exc:
        failed.note(None, address)
        await oidc.finish(login, error=str(exc))
        return page(400, "Sign-in failed", str(exc))
    await oidc.finish(login, user_id=user.id, mfa=answer.identity.mfa)
    token = await oidc.offer_approval(state)
    return approval_page(login.body, user.body.email, token)


def add_saml_routes(table: RouteTable) -> None:
    base = "/api/v1/auth/saml"
    for route in (
        Route(
            "GET",
            base,
            get_settings,
            "Show the SAML settings",
            "user",
            None,
            SamlSettings,
            errors=(404,),
        ),
        Route(
            "PUT",
            base,
            put_settings,
            "Set SAML 2.0 sign-in (Tether as the SP; the IdP's metadata)",
            "user",
            SamlSettings,
            SamlSettings,
            errors=(400,),
            audit="saml_settings",
        ),
        Route(
            "DELETE",
            base,
            delete_settings,
            "Turn SAML sign-in off",
            "user",
            None,
            SettingsDeleted,
            errors=(404,),
            audit="saml_settings",
        ),
        Route(
            "GET",
            f"{base}/metadata",
            metadata,
            "Tether's SAML SP metadata (XML), for the IdP",
            "login",
            streaming="text",
            errors=(400,),
        ),
        Route(
            "POST",
            f"{base}/start",
            start,
            "Begin a SAML login (bound to the hash of a verifier the client keeps)",
            "login",
            SsoStart,
            SsoStarted,
            errors=(400,),
        ),
        Route(
            "POST",
            f"{base}/acs",
            acs,
            "The assertion consumer service: the IdP's Response, posted by the browser",
            "login",
            streaming="text",
            errors=(400,),
        ),
    ):
        table.add(route)
