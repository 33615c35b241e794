"""SSO routes under /api/v1/auth/sso: the settings, and the three steps of a login
(manager.access.sso): start, the browser's callback, and the CLI's poll for its session."""

from __future__ import annotations

import html

from aiohttp import web

from manager.access.directory import UserBody
from manager.access.entities import Entity
from manager.access.login import LOGINS
from manager.access.principal import principal_of
from manager.access.sso import (
    LoginEvents,
    Oidc,
    SsoError,
    SsoLink,
    SsoLogin,
    SsoSettings,
    client_code,
)
from manager.api.audit_record import AUDIT, Change, in_transaction, unchanged
from manager.api.auth import _lock_event, _signed_in
from manager.api.context import ctx
from manager.api.directory import _find_user as find_user
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem, Route, RouteTable, json_response, parse_body
from manager.api.identity import ACTOR_KEY, client_ip
from manager.core.audit_chain import AuditAppend
from manager.core.identity import Actor
from manager.schemas.auth import (
    SsoLinkRequest,
    SsoLinkStart,
    SsoLinkView,
    SsoPoll,
    SsoSession,
    SsoStart,
    SsoStarted,
    SsoUnlinked,
    SsoUser,
)
from manager.store.base import Conflict

__all__ = [
    "add_sso_routes",
    "approval_page",
    "oidc_of",
    "page",
    "require_builtin_secret",
    "started",
]


def oidc_of(request: web.Request) -> Oidc:
    c = ctx(request)
    logins = request.app[LOGINS]

    async def domain_allowed(email: str) -> bool:
        return (await logins.settings()).domain_allowed(email)

    return Oidc(
        c.store,
        request.app[ACCESS].directory,
        c.secrets.builtin_value,
        domain_allowed=domain_allowed,
        clock=c.clock,
    )


async def require_builtin_secret(request: web.Request, name: str, field: str) -> None:
    """A setting names a builtin secret the manager reads for itself: it must exist."""
    secret = (await ctx(request).secrets.secrets_named([name])).get(name)
    if secret is None or secret.manager_id != "sm_builtin":
        raise ApiProblem(
            400, "invalid", f"{field}: no builtin secret {name!r} (create it first)", field=field
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
    await require_builtin_secret(request, body.client_secret, "client_secret")

    def saved(written: tuple[SsoSettings | None, Entity[SsoSettings]]) -> Change:
        before, after = written[0], written[1].body
        return Change(
            "oidc",
            "OpenID Connect",
            "create" if before is None else "update",
            f"set single sign-on through {after.issuer}",
            before=None if before is None else _settings_view(before),
            after=_settings_view(after),
        )

    await oidc_of(request).save_settings(body, audit=in_transaction(request, saved))
    return json_response(body)


async def start(request: web.Request) -> web.Response:
    body = await parse_body(request, SsoStart)
    try:
        url, state, expires = await oidc_of(request).start(body.verifier_hash, body.client_name)
    except SsoError as exc:
        raise ApiProblem(exc.status, "sso_unavailable", str(exc)) from None
    return started(url, state, expires, body.verifier_hash)


def started(url: str, state: str, expires: float, hashed_verifier: str) -> web.Response:
    """The answer to a login's start (OIDC's, SAML's): where the browser goes, and the code
    the page will show."""
    return json_response(
        SsoStarted(
            authorize_url=url, state=state, expires_at=expires, code=client_code(hashed_verifier)
        )
    )


async def link_start(request: web.Request) -> web.Response:
    """A user signed in with their password begins linking their identity at the provider:
    the same three steps as a login, but the callback links and the poll answers no session."""
    body = await parse_body(request, SsoLinkStart)
    p = principal_of(request)
    if p.session_id is None or p.user_id is None:
        raise ApiProblem(400, "not_a_session", "this needs your session (tether login)")
    if p.restricted is not None:
        raise ApiProblem(403, f"{p.restricted}_required", "finish logging in first")
    logins = request.app[LOGINS]
    user = await logins.directory.users.get(p.user_id)
    if user is None or user.body.password_hash is None:
        raise ApiProblem(400, "invalid", "only a user with a password links an SSO identity")
    await logins.reauthenticate(
        user, body.password, _lock_event(request), client=client_ip(request)
    )
    try:
        url, state, expires = await oidc_of(request).start(
            body.verifier_hash, body.client_name, link_user_id=user.id
        )
    except SsoError as exc:
        raise ApiProblem(exc.status, "sso_unavailable", str(exc)) from None
    return started(url, state, expires, body.verifier_hash)


def _login_events(request: web.Request) -> LoginEvents:
    """The events of what the browser's callback writes (a GET, which the audit middleware
    does not record), each chained with its change; the actor is the user who signed in."""
    recorder = request.app[AUDIT]
    method, path, address = request.method, request.path, client_ip(request)

    def entry(user: Entity[UserBody], change: Change) -> AuditAppend:
        return recorder.entry(
            Actor("user", user.id, user.body.email),
            change,
            resource_type="user",
            method=method,
            path=path,
            client_ip=address,
        )

    def linked(user: Entity[UserBody], login: SsoLogin) -> AuditAppend:
        email = user.body.email
        return entry(
            user,
            Change(
                resource_id=user.id,
                name=email,
                action="sso_link",
                summary=f"{email} linked their identity at the SSO provider"
                f" (for {login.client_name or 'an unnamed client'})",
            ),
        )

    def joined(user: Entity[UserBody], link: SsoLink) -> AuditAppend:
        email = user.body.email
        return entry(
            user,
            Change(
                resource_id=user.id,
                name=email,
                action="create",
                summary=f"{email} made at their first SSO login, linked to subject"
                f" {link.subject} at {link.issuer}",
                after={
                    "email": email,
                    "name": user.body.name,
                    "source": user.body.source,
                    "groups": user.body.groups,
                    "sso_link": {"issuer": link.issuer, "subject": link.subject},
                },
            ),
        )

    def synced(before: UserBody, user: Entity[UserBody]) -> AuditAppend:
        email = user.body.email
        return entry(
            user,
            Change(
                resource_id=user.id,
                name=email,
                action="update",
                summary=f"{email}'s groups set from the SSO provider's claim at login",
                before={"groups": before.groups},
                after={"groups": user.body.groups},
            ),
        )

    return LoginEvents(link=linked, join=joined, groups=synced)


async def callback(request: web.Request) -> web.Response:
    q = request.query
    try:
        user, login = await oidc_of(request).callback(
            q.get("state", ""), q.get("code"), q.get("error"), events=_login_events(request)
        )
    except SsoError as exc:
        return page(exc.status, "Sign-in failed", str(exc))
    if login.link_user_id is not None:
        return page(
            200,
            "Linked",
            f"Your identity at the provider now signs in as {user.email}"
            f" (asked by {login.client_name or 'an unnamed client'},"
            f" code {client_code(login.verifier_hash)}). Return to your terminal.",
        )
    token = await oidc_of(request).offer_approval(q.get("state", ""))
    return approval_page(login, user.email, token)


def approval_page(login: SsoLogin, email: str, token: str) -> web.Response:
    """The page that asks the person in the browser to approve the client that started
    the sign-in (OIDC's callback, SAML's ACS)."""
    # The page names the client that asked, and the code it shows, and the sign-in goes to
    # that client only once the person here approves it: someone sent this link by another
    # person sees it is not their own terminal's login, and refuses.
    client = login.client_name or "an unnamed client"
    code = client_code(login.verifier_hash)
    form = (
        f'<form method="post" action="{html.escape(_APPROVE_PATH)}">'
        f'<input type="hidden" name="state" value="{html.escape(login.state)}">'
        f'<input type="hidden" name="approval" value="{html.escape(token)}">'
        '<button type="submit" name="decision" value="approve">Approve</button> '
        '<button type="submit" name="decision" value="deny">Refuse</button></form>'
    )
    return page(
        200,
        "Approve this sign-in?",
        f"You signed in at the provider as {email}. Approve only if you just ran"
        f" `tether login --sso` in {client} and it shows the code {code}. If you did not,"
        " someone else asked for this sign-in: refuse it and tell your administrator.",
        form=form,
    )


_APPROVE_PATH = "/api/v1/auth/sso/approve"


async def approve(request: web.Request) -> web.Response:
    """The browser's answer to the page above: the sign-in goes to its client, or nowhere."""
    if request.content_type != "application/x-www-form-urlencoded":
        return page(400, "Not understood", "this takes the approval form of the sign-in page")
    form = await request.post()
    state, token, decision = (str(form.get(k, "")) for k in ("state", "approval", "decision"))
    if decision not in ("approve", "deny"):
        return page(400, "Not understood", "the decision is approve or deny")
    try:
        login = await oidc_of(request).decide(state, token, decision == "approve")
    except SsoError as exc:
        return page(400, "Not approved", str(exc))
    client = login.client_name or "an unnamed client"
    if decision == "deny":
        return page(200, "Refused", f"The sign-in for {client} was refused; it gets no session.")
    user = await request.app[LOGINS].directory.users.get(login.user_id or "")
    who = "" if user is None else f" as {user.body.email}"
    return page(
        200,
        "Signed in",
        f"Signed in{who} for {client}, code {client_code(login.verifier_hash)}."
        " Return to your terminal.",
    )


# The pages carry no script, may post only to this origin, and are never framed (a framed
# approval button is a clickjacking target) nor cached.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def page(status: int, title: str, text: str, *, form: str = "") -> web.Response:
    body = (
        f"<!doctype html><title>Tether: {html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}"
    )
    return web.Response(status=status, text=body, content_type="text/html", headers=_PAGE_HEADERS)


async def poll(request: web.Request) -> web.Response:
    body = await parse_body(request, SsoPoll)
    oidc = oidc_of(request)
    try:
        done = await oidc.poll(body.state, body.verifier)
    except SsoError as exc:
        raise ApiProblem(400, "sso_failed", str(exc)) from None
    if done is None:
        unchanged(request)
        return json_response(SsoSession(status="pending"), status=202)
    if done.linked:  # recorded at the callback; no session
        unchanged(request)
        return json_response(SsoSession(status="linked"))
    logins = request.app[LOGINS]
    login = done.login
    assert login is not None  # a sign-in's pending login is collected with its session
    try:
        session = await logins.external_session(
            done.user,
            done.mfa,
            more=lambda: oidc.collect(login),
            audit=_signed_in(request, "login", "signed in through SSO"),
        )
    except SsoError as exc:
        raise ApiProblem(400, "sso_failed", str(exc)) from None
    user = session.user
    request[ACTOR_KEY] = Actor("user", user.id, user.body.email)
    view = SsoUser(id=user.id, email=user.body.email, name=user.body.name)
    return json_response(
        SsoSession(
            status="done",
            token=session.token,
            expires_at=session.expires_at,
            user=view,
            restricted=session.restricted,
        )
    )


def _link_view(link: SsoLink) -> SsoLinkView:
    return SsoLinkView.model_validate(link.model_dump())


async def link_user(request: web.Request) -> web.Response:
    body = await parse_body(request, SsoLinkRequest)
    user = await find_user(request)
    oidc = oidc_of(request)
    issuer = body.issuer
    if issuer is None:
        try:
            issuer = (await oidc.configured()).issuer
        except SsoError as exc:
            raise ApiProblem(400, "invalid", f"issuer: {exc}", field="issuer") from None

    def linked(link: SsoLink) -> Change:
        summary = f"linked {user.body.email} to {link.subject} at {link.issuer}"
        after = _link_view(link).model_dump(mode="json")
        return Change(user.id, user.body.email, "sso_link", summary, after=after)

    try:
        link = await oidc.link(issuer, body.subject, user.id, audit=in_transaction(request, linked))
    except Conflict:
        raise ApiProblem(
            409, "conflict", f"{body.subject!r} at {issuer} is linked already; unlink it first"
        ) from None
    return json_response(_link_view(link), status=201)


async def unlink_user(request: web.Request) -> web.Response:
    user = await find_user(request)

    def unlinked(links: list[SsoLink]) -> Change:
        many = "y" if len(links) == 1 else "ies"
        return Change(
            user.id,
            user.body.email,
            "sso_unlink",
            f"unlinked {user.body.email} from {len(links)} SSO identit{many}",
            before=[_link_view(g).model_dump(mode="json") for g in links],
        )

    gone = await oidc_of(request).unlink(user.id, audit=in_transaction(request, unlinked))
    if not gone:
        raise ApiProblem(409, "conflict", f"user {user.body.email!r} has no SSO link")
    return json_response(SsoUnlinked(removed=[_link_view(g) for g in gone]))


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
            "Begin an SSO login (bound to the hash of a verifier the client keeps)",
            "login",
            SsoStart,
            SsoStarted,
            errors=(400, 502),
        ),
        Route(
            "POST",
            f"{base}/link",
            link_start,
            "Begin linking your identity at the SSO provider (asks your password again)",
            "user",
            SsoLinkStart,
            SsoStarted,
            errors=(400, 403, 502),
            audit="user",
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
            f"{base}/approve",
            approve,
            "Approve or refuse, in the browser, the client a completed sign-in is for (a form)",
            "login",
            streaming="text",
            errors=(400,),
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
        Route(
            "PUT",
            "/api/v1/users/{user}/sso-link",
            link_user,
            "Link the user to an identity (subject) at the SSO provider",
            "user",
            SsoLinkRequest,
            SsoLinkView,
            status=201,
            errors=(400, 404, 409),
            audit="user",
        ),
        Route(
            "DELETE",
            "/api/v1/users/{user}/sso-link",
            unlink_user,
            "Remove the user's links to SSO identities",
            "user",
            None,
            SsoUnlinked,
            errors=(404, 409),
            audit="user",
        ),
    ):
        table.add(route)
