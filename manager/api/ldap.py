"""LDAP routes: the settings under /api/v1/auth/ldap (admin), and the login,
``POST /api/v1/auth/ldap/login``, judged like a password login: the IP allowlist, the
per-address login rate, the user's lockout, failed logins recorded (manager.access.ldap)."""

from __future__ import annotations

from aiohttp import web

from manager.access.directory import UserBody
from manager.access.entities import Entity
from manager.access.external import ExternalIdentity, SsoError, UserEvents
from manager.access.ldap import Ldap, LdapRefused, normal_username
from manager.access.login import LOGINS
from manager.api.audit_record import Change, in_transaction
from manager.api.auth import _lock_event, _logged_in, _signed_in, _throttled
from manager.api.context import ctx
from manager.api.failed_logins import FAILED_LOGINS
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, Route, RouteTable, json_response, parse_body
from manager.api.identity import client_ip
from manager.api.sso import _login_events, require_builtin_secret
from manager.schemas.auth import LoginResult
from manager.schemas.directory_auth import LdapLogin, LdapSettings, SettingsDeleted

__all__ = ["add_ldap_routes", "ldap_of"]


def ldap_of(request: web.Request) -> Ldap:
    c = ctx(request)
    logins = request.app[LOGINS]

    async def domain_allowed(email: str) -> bool:
        return (await logins.settings()).domain_allowed(email)

    return Ldap(
        request.app[ACCESS].directory,
        c.secrets.builtin_value,
        domain_allowed=domain_allowed,
        clock=c.clock,
    )


async def get_settings(request: web.Request) -> web.Response:
    found = await ldap_of(request).current()
    if found is None:
        raise ApiProblem(404, "not_found", "LDAP sign-in is not configured")
    return json_response(found)


async def put_settings(request: web.Request) -> web.Response:
    body = await parse_body(request, LdapSettings)
    if body.bind_password_secret is not None:
        await require_builtin_secret(request, body.bind_password_secret, "bind_password_secret")

    def saved(written: tuple[LdapSettings | None, Entity[LdapSettings]]) -> Change:
        before, after = written[0], written[1].body
        return Change(
            "ldap",
            "LDAP",
            "create" if before is None else "update",
            f"set LDAP sign-in through {after.url}",
            before=None if before is None else before.model_dump(mode="json"),
            after=after.model_dump(mode="json"),
        )

    await ldap_of(request).save_settings(body, audit=in_transaction(request, saved))
    return json_response(body)


async def delete_settings(request: web.Request) -> web.Response:
    def deleted(gone: Entity[LdapSettings]) -> Change:
        return Change(
            "ldap",
            "LDAP",
            "delete",
            f"turned off LDAP sign-in through {gone.body.url}",
            before=gone.body.model_dump(mode="json"),
        )

    if not await ldap_of(request).delete_settings(audit=in_transaction(request, deleted)):
        raise ApiProblem(404, "not_found", "LDAP sign-in is not configured")
    return json_response(SettingsDeleted(deleted=True))


async def login(request: web.Request) -> web.Response:
    body = await parse_body(request, LdapLogin)
    try:
        subject = normal_username(body.username)
    except ValueError as exc:
        raise ApiProblem(400, "invalid", f"username: {exc}", field="username") from None
    if (refused := await _throttled(request)) is not None:
        return refused
    ldap = ldap_of(request)
    logins = request.app[LOGINS]
    failed = request.app[FAILED_LOGINS]
    address = client_ip(request)
    try:
        settings = await ldap.configured()
    except SsoError as exc:
        raise ApiProblem(400, "ldap_unavailable", str(exc)) from None

    async def on_fail(user: Entity[UserBody] | None) -> None:
        failed.note(user, address)

    async def attempt() -> ExternalIdentity | None:
        try:
            return await ldap.authenticate(settings, body.username, body.password)
        except LdapRefused:
            return None

    known = await ldap.users.linked(settings.url.rstrip("/"), subject)
    try:
        identity = await logins.counted(
            known, attempt, client=address, on_lock=_lock_event(request), on_fail=on_fail
        )
        events = _login_events(request)
        user = await ldap.users.user_for(
            identity, settings.group_mapping, UserEvents(join=events.join, groups=events.groups)
        )
    except SsoError as exc:
        failed.note(known, address)
        raise ApiProblem(exc.status, "ldap_refused", str(exc)) from None
    session = await logins.external_session(
        user,
        identity.mfa,
        via="ldap",
        audit=_signed_in(request, "login", "logged in through LDAP"),
    )
    return _logged_in(request, session)


def add_ldap_routes(table: RouteTable) -> None:
    base = "/api/v1/auth/ldap"
    for route in (
        Route(
            "GET",
            base,
            get_settings,
            "Show the LDAP sign-in settings",
            "user",
            None,
            LdapSettings,
            errors=(404,),
        ),
        Route(
            "PUT",
            base,
            put_settings,
            "Set LDAP sign-in (search-then-bind or a DN template, over TLS)",
            "user",
            LdapSettings,
            LdapSettings,
            errors=(400,),
            audit="ldap_settings",
        ),
        Route(
            "DELETE",
            base,
            delete_settings,
            "Turn LDAP sign-in off",
            "user",
            None,
            SettingsDeleted,
            errors=(404,),
            audit="ldap_settings",
        ),
        Route(
            "POST",
            f"{base}/login",
            login,
            "Log in with a directory user name and password; answers a session token",
            "login",
            LdapLogin,
            LoginResult,
            errors=(400, 401, 403, 429, 502),
            audit="session",
        ),
    ):
        table.add(route)
