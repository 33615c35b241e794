"""``tether login``, ``tether logout`` and ``tether whoami``, and where a session is kept.

    tether login                        # email, password; a 2FA code if enrolled
    tether login --invite TOKEN         # a new user sets their password
    tether login --sso                  # through the identity provider, in a browser
    tether whoami
    tether logout

The session is kept in ``$TETHER_CONFIG_DIR`` (else ``$XDG_CONFIG_HOME/tether``, else
``~/.config/tether``) as ``session.json``, mode 0600 in a 0700 directory, for one manager
URL. Later commands use it when neither ``--api-key`` nor ``TETHER_API_KEY`` is given.

The rules of the account are met here as they come: an expired password is changed, and
where 2FA is enforced the user enrols (the secret and URI are shown, then a code confirms
them, then the recovery codes are shown once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from manager.client import ApiError
from manager.client.cli import output as fmt
from manager.client.cli.access import model_from_options
from manager.client.cli.config_file import (
    ENV_CONFIG_DIR,
    ConfigFile,
    NamedContext,
    StoredSession,
    config_dir,
    private_dir,
)
from manager.client.cli.context import Context, UsageError
from manager.schemas.auth import (
    AuthSettings,
    InviteAccept,
    LoginRequest,
    LoginResult,
    PasswordChange,
    SecondFactor,
    SsoLinkStart,
    SsoPoll,
    SsoStart,
    SsoStarted,
    TotpConfirm,
    client_code,
    verifier_hash,
)

__all__ = [
    "ENV_CONFIG_DIR",
    "StoredSession",
    "add_login_parsers",
    "config_dir",
]

# How long `login --sso` waits for the browser (it asks every ctx.sso_poll_s).
SSO_WAIT_S = 600.0


# -- the commands --------------------------------------------------------------------------


def _ask(ctx: Context, question: str, *, secret: bool = False) -> str:
    answer = ctx.prompt(question, secret)
    if not answer.strip():
        raise UsageError(f"no answer to {question.strip().rstrip(':')!r}")
    return answer


def _new_password(ctx: Context) -> str:
    first = _ask(ctx, "New password: ", secret=True)
    if _ask(ctx, "New password again: ", secret=True) != first:
        raise UsageError("the two passwords differ; nothing was changed")
    return first


def _password(ctx: Context, args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline() if ctx.stdin is None else ctx.stdin.readline()
        if not line.strip():
            raise UsageError("--password-stdin: standard input held no password")
        return line.rstrip("\n")
    return _ask(ctx, "Password: ", secret=True)


async def _second_factor(ctx: Context, body: LoginRequest, args: argparse.Namespace) -> Any:
    code = args.totp_code or _ask(ctx, "Authentication code (or a recovery code): ")
    code = code.strip()
    if "-" in code or len(code) > 8:
        return await ctx.client.login(body.model_copy(update={"recovery_code": code}))
    return await ctx.client.login(body.model_copy(update={"totp_code": code}))


async def _finish(ctx: Context, result: LoginResult) -> LoginResult:
    """Meet the account's rules (change an expired password, enrol in enforced 2FA)."""
    ctx.client.use_credential(result.token)
    if result.restricted == "password_change":
        ctx.console.note("Your password has expired; choose a new one.")
        current = _ask(ctx, "Current password: ", secret=True)
        result = await ctx.client.change_password(
            PasswordChange(current=current, new=_new_password(ctx))
        )
        ctx.client.use_credential(result.token)
    if result.restricted == "totp_enrolment":
        ctx.console.note("This account requires two-factor authentication; enrol now.")
        enrolment = await ctx.client.totp_enrol()
        ctx.console.note(
            "Add this to your authenticator app (a QR code from the URI, or type the key):\n"
            f"  key: {enrolment.secret}\n  uri: {enrolment.otpauth_uri}"
        )
        code = _ask(ctx, "Code from the app: ")
        confirmed = await ctx.client.totp_confirm(TotpConfirm(code=code.strip()))
        _show_recovery(ctx, confirmed.recovery_codes)
        if confirmed.session is not None:
            result = confirmed.session
            ctx.client.use_credential(result.token)
    return result


def _show_recovery(ctx: Context, codes: list[str]) -> None:
    ctx.console.note(
        "Recovery codes, shown once: each logs in once in place of a code. Keep them safe:\n"
        + "\n".join(f"  {c}" for c in codes)
    )


def _stored(ctx: Context, result: LoginResult) -> int:
    """Keep the session in the context (made, or updated with this URL and CA), and make
    that context the current one: later commands need neither URL nor CA again."""
    file = ConfigFile.load(ctx.config_dir)
    name = ctx.context_name
    before = file.contexts.get(name)
    ca = ctx.ca_file or (before.ca_file if before is not None else None)
    session = StoredSession(ctx.manager_url, result.token, result.expires_at, result.user.email)
    file.put(NamedContext(name, ctx.manager_url, ca, session))
    file.current = name
    path = file.save()
    if ctx.json:
        view = result.model_dump(mode="json", exclude={"token"})
        ctx.console.print(fmt.to_json({**view, "session_file": str(path), "context": name}))
    else:
        until = fmt.timestamp(result.expires_at)
        ctx.console.note(
            f"Logged in as {result.user.email} until {until} (context {name}, session in {path})"
        )
    return 0


def _client_name() -> str:
    """What the browser page calls this client: the user and host it runs as."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "someone"
    return f"tether CLI, {who}@{socket.gethostname()}"[:120]


def _sso_started(ctx: Context, started: SsoStarted, hashed: str) -> None:
    ctx.console.note(
        f"Open this in a browser to sign in:\n  {started.authorize_url}\n"
        f"The page will show this code: {client_code(hashed)}"
    )


async def _sso(
    ctx: Context,
    args: argparse.Namespace,
    start: Callable[[SsoStart], Awaitable[SsoStarted]] | None = None,
) -> LoginResult:
    """``start``: the provider's start (OIDC's unless told: SAML's shares the rest)."""
    # As PKCE: the verifier stays here; the manager keeps its hash, and hands the session
    # only to whoever shows the verifier.
    verifier = secrets.token_urlsafe(48)
    hashed = verifier_hash(verifier)
    begin = start or ctx.client.sso_start
    started = await begin(SsoStart(verifier_hash=hashed, client_name=_client_name()))
    _sso_started(ctx, started, hashed)
    poll = SsoPoll(state=started.state, verifier=verifier)
    deadline = time.monotonic() + SSO_WAIT_S
    while time.monotonic() < deadline:
        answer = await ctx.client.sso_poll(poll)
        if answer.status == "done" and answer.token and answer.user and answer.expires_at:
            user = answer.user
            result = LoginResult.model_validate(
                {
                    "token": answer.token,
                    "expires_at": answer.expires_at,
                    "user": user.model_dump(),
                    "restricted": answer.restricted,
                }
            )
            if result.restricted == "totp":
                ctx.client.use_credential(result.token)
                code = args.totp_code or _ask(ctx, "Authentication code (or a recovery code): ")
                code = code.strip()
                recovery = "-" in code or len(code) > 8
                result = await ctx.client.totp_verify(
                    SecondFactor(
                        totp_code=None if recovery else code,
                        recovery_code=code if recovery else None,
                    )
                )
            return result
        await asyncio.sleep(ctx.sso_poll_s)
    raise UsageError("the sign-in was not completed in time; run tether login --sso again")


async def cmd_link_sso(ctx: Context, args: argparse.Namespace) -> int:
    """Link the signed-in user to their identity at the SSO provider."""
    password = _password(ctx, args)
    verifier = secrets.token_urlsafe(48)
    hashed = verifier_hash(verifier)
    started = await ctx.client.sso_link_start(
        SsoLinkStart(verifier_hash=hashed, client_name=_client_name(), password=password)
    )
    _sso_started(ctx, started, hashed)
    poll = SsoPoll(state=started.state, verifier=verifier)
    deadline = time.monotonic() + SSO_WAIT_S
    while time.monotonic() < deadline:
        if (await ctx.client.sso_poll(poll)).status == "linked":
            ctx.console.note("Linked: `tether login --sso` signs you in from now on.")
            return 0
        await asyncio.sleep(ctx.sso_poll_s)
    raise UsageError("the link was not completed in time; run tether link-sso again")


async def cmd_login(ctx: Context, args: argparse.Namespace) -> int:
    private_dir(ctx.config_dir)  # before logging in: a session it cannot keep is no use
    if args.sso:
        return _stored(ctx, await _sso(ctx, args))
    if args.invite:
        password = _password(ctx, args) if args.password_stdin else _new_password(ctx)
        result = await ctx.client.accept_invite(InviteAccept(token=args.invite, password=password))
        return _stored(ctx, await _finish(ctx, result))
    email = args.email or _ask(ctx, "Email: ")
    body = LoginRequest(email=email.strip(), password=_password(ctx, args))
    try:
        result = await ctx.client.login(body)
    except ApiError as exc:
        if exc.code != "totp_required":
            raise
        result = await _second_factor(ctx, body, args)
    return _stored(ctx, await _finish(ctx, result))


async def cmd_logout(ctx: Context, args: argparse.Namespace) -> int:
    stored = ctx.session
    if stored:
        with contextlib.suppress(ApiError):  # already ended on the manager: forget it anyway
            await ctx.client.logout()
    file = ConfigFile.load(ctx.config_dir)
    held = file.contexts.get(ctx.context_name)
    forgot = held is not None and held.session is not None
    if forgot:
        file.with_session(ctx.context_name, None)
        file.save()
    ctx.console.note("Logged out." if stored or forgot else "Not logged in.")
    return 0


async def cmd_whoami(ctx: Context, args: argparse.Namespace) -> int:
    me = await ctx.client.me()
    if ctx.json:
        ctx.console.print(fmt.to_json(me))
        return 0
    who = f"{me.email} (user {me.id})" if me.kind == "user" else f"API key {me.name} ({me.id})"
    lines = [who]
    if me.groups:
        lines.append(f"groups: {', '.join(me.groups)}")
    lines.append(f"account permissions: {', '.join(me.account_permissions) or 'none'}")
    if me.totp_enabled is not None:
        lines.append(f"two-factor authentication: {'on' if me.totp_enabled else 'off'}")
    if me.session_expires_at:
        lines.append(f"session until {fmt.timestamp(me.session_expires_at)}")
    if me.restricted:
        lines.append(f"restricted to finishing the login: {me.restricted}")
    ctx.console.print("\n".join(lines))
    return 0


# Options of `tether auth-settings` and the settings they change.
_SETTING_OF_OPTION = {
    "min_length": "password_min_length",
    "classes": "password_classes",
    "expiry_days": "password_expiry_days",
    "lockout_attempts": "lockout_attempts",
    "lockout_minutes": "lockout_minutes",
    "enforce_2fa": "enforce_2fa",
    "allowed_domain": "allowed_email_domains",
    "session_ttl": "session_ttl_minutes",
    "logins_per_ip_per_minute": "login_attempts_per_ip_per_minute",
}


async def cmd_auth_settings(ctx: Context, args: argparse.Namespace) -> int:
    """Show the login settings, or change the ones named (the rest keep their value)."""
    settings = await ctx.client.auth_settings()
    changes = {
        field: getattr(args, option)
        for option, field in _SETTING_OF_OPTION.items()
        if getattr(args, option) is not None
    }
    if args.any_domain:
        changes["allowed_email_domains"] = []
    if changes:
        options = {f: f"--{o.replace('_', '-')}" for o, f in _SETTING_OF_OPTION.items()}
        merged = {**settings.model_dump(), **changes}
        settings = await ctx.client.set_auth_settings(
            model_from_options(AuthSettings, options, **merged)
        )
    if ctx.json:
        ctx.console.print(fmt.to_json(settings))
        return 0
    s = settings
    expiry = f"{s.password_expiry_days} days" if s.password_expiry_days else "never"
    lockout = (
        f"after {s.lockout_attempts} failed logins, for {s.lockout_minutes} min"
        if s.lockout_attempts
        else "off"
    )
    lines = [
        f"passwords: at least {s.password_min_length} characters, with "
        f"{', '.join(s.password_classes) or 'any characters'}; expire: {expiry}",
        f"lockout: {lockout}",
        f"two-factor authentication: {'enforced' if s.enforce_2fa else 'optional'}",
        f"new users' email domains: {', '.join(s.allowed_email_domains) or 'any'}",
        f"sessions last {s.session_ttl_minutes} min",
        f"logins from one address: at most {s.login_attempts_per_ip_per_minute} a minute",
    ]
    ctx.console.print("\n".join(lines))
    return 0


def _classes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_login_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    p = groups.add_parser("login", parents=[output], help="log in; later commands use the session")
    p.add_argument("--email", metavar="EMAIL")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument("--totp-code", metavar="CODE", help="the 2FA code (else asked when needed)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--invite", metavar="TOKEN", help="accept an invite: set your password")
    how.add_argument("--sso", action="store_true", help="sign in through the identity provider")
    p.set_defaults(handler=cmd_login, anonymous=True)
    p = groups.add_parser(
        "link-sso",
        parents=[output],
        help="let your identity at the SSO provider sign you in (asks your password)",
    )
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.set_defaults(handler=cmd_link_sso)
    p = groups.add_parser("logout", parents=[output], help="end the stored session")
    p.set_defaults(handler=cmd_logout, anonymous=True)
    p = groups.add_parser("whoami", parents=[output], help="who the CLI acts as")
    p.set_defaults(handler=cmd_whoami)
    p = groups.add_parser(
        "auth-settings",
        parents=[output],
        help="show or change the login settings (password policy, lockout, 2FA, domains)",
    )
    p.add_argument("--min-length", type=int, metavar="N")
    p.add_argument(
        "--classes", type=_classes, metavar="C,..", help="of lower, upper, digit, symbol"
    )
    p.add_argument("--expiry-days", type=int, metavar="D", help="0: passwords never expire")
    p.add_argument("--lockout-attempts", type=int, metavar="N", help="0: never lock")
    p.add_argument("--lockout-minutes", type=int, metavar="M")
    p.add_argument(
        "--enforce-2fa", action=argparse.BooleanOptionalAction, default=None, help="or --no-..."
    )
    p.add_argument("--allowed-domain", action="append", metavar="DOMAIN", help="repeatable")
    p.add_argument("--any-domain", action="store_true", help="let any email domain join")
    p.add_argument("--session-ttl", type=int, metavar="MIN", help="session lifetime, minutes")
    p.add_argument(
        "--logins-per-ip-per-minute",
        type=int,
        metavar="N",
        help="password logins and invite acceptances from one address (429 past it)",
    )
    p.set_defaults(handler=cmd_auth_settings)
