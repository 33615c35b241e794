"""Login routes under /api/v1/auth: log in, accept an invite, who am I, change the password,
enrol in TOTP 2FA, log out; and the account's login settings (manager.access.login)."""

from __future__ import annotations

from aiohttp import web

from manager.access.directory import SessionBody, UserBody
from manager.access.entities import Entity
from manager.access.login import LOGINS, LockEvent, Session
from manager.access.principal import principal_of
from manager.api.audit_record import AUDIT, Change, in_transaction
from manager.api.failed_logins import FAILED_LOGINS
from manager.api.guards import ACCESS
from manager.api.http import (
    ApiProblem,
    Route,
    RouteTable,
    json_response,
    parse_body,
    problem_response,
)
from manager.api.identity import ACTOR_KEY, client_ip
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.identity import SYSTEM, Actor
from manager.core.ratelimit import retry_after_header
from manager.schemas.auth import (
    AuthSettings,
    InviteAccept,
    LoggedOut,
    LoginRequest,
    LoginResult,
    Me,
    PasswordChange,
    SecondFactor,
    SessionUser,
    TotpConfirm,
    TotpConfirmed,
    TotpEnrolment,
    TotpEnrolStart,
)

__all__ = ["add_auth_routes"]


def _result(s: Session) -> LoginResult:
    u = s.user
    return LoginResult(
        token=s.token,
        expires_at=s.expires_at,
        user=SessionUser(id=u.id, email=u.body.email, name=u.body.name),
        restricted=s.restricted,
    )


def _signed_in(request: web.Request, action: str, what: str) -> AuditOf[Entity[UserBody]]:
    """A login route's event, of the user as the session's transaction wrote them: they are
    its actor (a login route has none until the credentials pass)."""

    def describe(user: Entity[UserBody]) -> Change:
        return Change(user.id, user.body.email, action, f"{user.body.email} {what}")

    return in_transaction(request, describe, acting=_as_actor)


def _as_actor(user: Entity[UserBody]) -> Actor:
    return Actor("user", user.id, user.body.email)


def _logged_in(request: web.Request, session: Session) -> web.Response:
    # The rest of the request is the user's (it is logged as theirs).
    request[ACTOR_KEY] = _as_actor(session.user)
    return json_response(_result(session))


def _lock_event(request: web.Request) -> LockEvent:
    """The event of a lock the request's failed attempt set, chained with the lock (the
    answer is a 4xx, which writes no event of its own)."""
    recorder = request.app[AUDIT]
    method, path, address = request.method, request.path, client_ip(request)

    def locked(user: Entity[UserBody], scope: str, minutes: int) -> AuditAppend:
        where = "everywhere" if scope == "everywhere" else f"from {scope}"
        return recorder.entry(
            SYSTEM,
            Change(
                resource_id=user.id,
                name=user.body.email,
                action="lock",
                summary=f"locked {user.body.email} {where} for {minutes} min after failed logins",
                after={"locked": scope, "minutes": minutes},
            ),
            resource_type="user",
            method=method,
            path=path,
            client_ip=address,
        )

    return locked


async def _throttled(request: web.Request) -> web.Response | None:
    """A 429 when this client address has tried too many logins lately; else None."""
    access = request.app[ACCESS]
    per_minute = (await request.app[LOGINS].settings()).login_attempts_per_ip_per_minute
    key = f"login-ip:{client_ip(request)}"
    wait = access.limiter.check(key, per_minute / 60.0, per_minute, access.clock())
    if wait <= 0:
        return None
    response = problem_response(
        429, "rate_limited", f"too many logins from your address; at most {per_minute} a minute"
    )
    response.headers["Retry-After"] = retry_after_header(wait)
    return response


async def login(request: web.Request) -> web.Response:
    body = await parse_body(request, LoginRequest)
    if (refused := await _throttled(request)) is not None:
        return refused

    failed = request.app[FAILED_LOGINS]
    address = client_ip(request)

    async def on_fail(user: Entity[UserBody] | None) -> None:
        failed.note(user, address)

    session = await request.app[LOGINS].login(
        body.email,
        body.password,
        totp_code=body.totp_code,
        recovery_code=body.recovery_code,
        client=address,
        on_lock=_lock_event(request),
        on_fail=on_fail,
        audit=_signed_in(request, "login", "logged in"),
    )
    return _logged_in(request, session)


async def accept_invite(request: web.Request) -> web.Response:
    body = await parse_body(request, InviteAccept)
    if (refused := await _throttled(request)) is not None:
        return refused
    what = "accepted their invite, set a password"
    session = await request.app[LOGINS].accept_invite(
        body.token, body.password, audit=_signed_in(request, "accept_invite", what)
    )
    return _logged_in(request, session)


async def _own_user(request: web.Request) -> Entity[UserBody]:
    principal = principal_of(request)
    user_id = principal.user_id if principal.session_id is not None else None
    if user_id is None:
        raise ApiProblem(
            400, "not_a_session", "this needs a user's session (tether login), not an API key"
        )
    user = await request.app[LOGINS].directory.users.get(user_id)
    if user is None:
        raise ApiProblem(401, "session_expired", "the session has ended; log in again")
    return user


async def me(request: web.Request) -> web.Response:
    p = principal_of(request)
    perms = sorted(p.grants.account)
    if p.session_id is None:
        return json_response(
            Me(kind="api_key", id=p.actor.id, name=p.actor.name, account_permissions=perms)
        )
    user = await _own_user(request)
    d = request.app[LOGINS].directory
    session = await d.sessions.get(p.session_id)
    return json_response(
        Me(
            kind="user",
            id=user.id,
            name=user.body.name,
            email=user.body.email,
            groups=sorted(g.body.name for g in await d.user_groups(user)),
            account_permissions=perms,
            totp_enabled=user.body.totp_enabled,
            restricted=p.restricted,
            session_expires_at=None if session is None else session.body.expires_at,
        )
    )


async def change_password(request: web.Request) -> web.Response:
    body = await parse_body(request, PasswordChange)
    user = await _own_user(request)

    def changed(u: Entity[UserBody]) -> Change:
        summary = f"{u.body.email} changed their password (their other sessions ended)"
        return Change(u.id, u.body.email, "change_password", summary)

    session = await request.app[LOGINS].change_password(
        user,
        body.current,
        body.new,
        _lock_event(request),
        client=client_ip(request),
        audit=in_transaction(request, changed),
    )
    return json_response(_result(session))


async def totp_enrol(request: web.Request) -> web.Response:
    body = await parse_body(request, TotpEnrolStart)
    user = await _own_user(request)
    # A session restricted to enrolling was made by the password a moment ago: it is not
    # asked again (unless given).
    enrolling = principal_of(request).restricted == "totp_enrolment"
    if body.password is None and not enrolling:
        raise ApiProblem(
            400, "invalid", "password: enter your password to add a device", field="password"
        )

    def began(u: Entity[UserBody]) -> Change:
        summary = f"{u.body.email} began enrolling in two-factor authentication"
        return Change(u.id, u.body.email, "totp_enrol", summary)

    secret, uri = await request.app[LOGINS].totp_enrol(
        user,
        body.password,
        _lock_event(request),
        client=client_ip(request),
        audit=in_transaction(request, began),
    )
    return json_response(TotpEnrolment(secret=secret, otpauth_uri=uri))


async def totp_confirm(request: web.Request) -> web.Response:
    body = await parse_body(request, TotpConfirm)
    user = await _own_user(request)
    p = principal_of(request)
    # A session restricted to enrolling did its one job: it is swapped for a full one.
    ending = p.session_id if p.restricted == "totp_enrolment" else None

    def enabled(u: Entity[UserBody]) -> Change:
        summary = f"{u.body.email} turned on two-factor authentication"
        return Change(u.id, u.body.email, "totp_enable", summary)

    codes, fresh = await request.app[LOGINS].totp_confirm(
        user, body.code, ending=ending, audit=in_transaction(request, enabled)
    )
    session = None if fresh is None else _result(fresh)
    return json_response(TotpConfirmed(recovery_codes=codes, session=session))


async def totp_verify(request: web.Request) -> web.Response:
    """A session restricted to "totp" (an SSO login of a user with 2FA here) gives the code,
    and is swapped for a full one."""
    body = await parse_body(request, SecondFactor)
    p = principal_of(request)
    if p.restricted != "totp" or p.session_id is None:
        raise ApiProblem(409, "conflict", "this session has no code to give")
    user = await _own_user(request)
    session = await request.app[LOGINS].pass_second_factor(
        user,
        body.totp_code,
        body.recovery_code,
        ending=p.session_id,
        client=client_ip(request),
        on_lock=_lock_event(request),
        audit=_signed_in(request, "login", "gave their two-factor code after SSO"),
    )
    return _logged_in(request, session)


async def logout(request: web.Request) -> web.Response:
    p = principal_of(request)
    if p.session_id is None:
        raise ApiProblem(
            400, "not_a_session", "an API key has no session to end; revoke it instead"
        )

    def ended(s: Entity[SessionBody]) -> Change:
        return Change(s.id, p.actor.name, "logout", f"{p.actor.name} logged out")

    await request.app[LOGINS].logout(p.session_id, audit=in_transaction(request, ended))
    return json_response(LoggedOut(ended=True))


async def get_settings(request: web.Request) -> web.Response:
    return json_response(await request.app[LOGINS].settings())


async def put_settings(request: web.Request) -> web.Response:
    body = await parse_body(request, AuthSettings)
    logins = request.app[LOGINS]
    p = principal_of(request)
    if body.enforce_2fa and p.session_id is not None:
        # As Harness asks: whoever enforces 2FA has it, so they cannot lock themselves out.
        user = await _own_user(request)
        if not user.body.totp_enabled:
            raise ApiProblem(
                409,
                "totp_required",
                "turn on two-factor authentication for yourself before enforcing it",
                field="enforce_2fa",
            )

    def changed(written: tuple[AuthSettings | None, Entity[AuthSettings]]) -> Change:
        before = (written[0] or AuthSettings()).model_dump(mode="json")
        after = written[1].body.model_dump(mode="json")
        summary = "changed the login settings"
        return Change("account", "login settings", "update", summary, before, after)

    await logins.save_settings(body, audit=in_transaction(request, changed))
    request.app[ACCESS].principals.forget()
    return json_response(body)


def add_auth_routes(table: RouteTable) -> None:
    base = "/api/v1/auth"
    for route in (
        Route(
            "POST",
            f"{base}/login",
            login,
            "Log in with email and password (and a 2FA code); answers a session token",
            "login",
            LoginRequest,
            LoginResult,
            errors=(400, 401, 429),
            audit="session",
        ),
        Route(
            "POST",
            f"{base}/invite/accept",
            accept_invite,
            "Set a password with an invite token; answers a session token",
            "login",
            InviteAccept,
            LoginResult,
            errors=(400, 429),
            audit="user",
        ),
        Route("GET", f"{base}/me", me, "Who the caller is, and what they may do", "user", None, Me),
        Route(
            "POST",
            f"{base}/password",
            change_password,
            "Change your password (ends your other sessions; answers a new session)",
            "user",
            PasswordChange,
            LoginResult,
            errors=(400,),
            audit="user",
        ),
        Route(
            "POST",
            f"{base}/totp/enrol",
            totp_enrol,
            "Begin enrolling in TOTP two-factor authentication",
            "user",
            TotpEnrolStart,
            TotpEnrolment,
            errors=(400, 409),
            audit="user",
        ),
        Route(
            "POST",
            f"{base}/totp/confirm",
            totp_confirm,
            "Confirm 2FA enrolment with a code; answers recovery codes",
            "user",
            TotpConfirm,
            TotpConfirmed,
            errors=(400, 409),
            audit="user",
        ),
        Route(
            "POST",
            f"{base}/totp/verify",
            totp_verify,
            "Give the 2FA code a restricted SSO session asks for; answers a full session",
            "user",
            SecondFactor,
            LoginResult,
            errors=(400, 401, 403, 409),
            audit="session",
        ),
        Route(
            "POST",
            f"{base}/logout",
            logout,
            "End this session",
            "user",
            None,
            LoggedOut,
            errors=(400,),
            audit="session",
        ),
        Route(
            "GET",
            f"{base}/settings",
            get_settings,
            "The login settings: password policy, lockout, 2FA, email domains",
            "user",
            None,
            AuthSettings,
        ),
        Route(
            "PUT",
            f"{base}/settings",
            put_settings,
            "Set the login settings",
            "user",
            AuthSettings,
            AuthSettings,
            errors=(400, 409),
            audit="auth_settings",
        ),
    ):
        table.add(route)
