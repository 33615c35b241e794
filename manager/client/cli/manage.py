"""The commands that close the gap between the API and the CLI: removing applications,
environments and groups, reading one group or user, changing a user, your own password and
2FA, and the SSO settings.

    tether app delete checkout                 tether env delete checkout qa
    tether group get deployers                 tether group delete deployers [--force]
    tether user get dev@example.com            tether user update dev@example.com --group ops
    tether password                            tether 2fa enrol
    tether sso get                             tether sso set --issuer https://idp ... | --file
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from manager.client import ApiError
from manager.client.cli import output as fmt
from manager.client.cli.access import model_from_options, show
from manager.client.cli.context import Context, UsageError
from manager.client.cli.directory import group_text
from manager.client.cli.parity import covers
from manager.schemas.auth import PasswordChange, TotpConfirm
from manager.schemas.directory import UserUpdate, UserView

__all__ = ["add_manage_commands"]


def _confirm(ctx: Context, args: argparse.Namespace, what: str) -> None:
    """A removal asks first on a terminal, unless --yes; elsewhere it needs --yes."""
    if args.yes:
        return
    if ctx.stdin is None and not ctx.console.interactive:
        raise UsageError(f"deleting {what}: add --yes (no terminal to ask on)")
    answer = ctx.prompt(f"Delete {what}? [y/N] ", False)
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("nothing was deleted")


async def cmd_app_delete(ctx: Context, args: argparse.Namespace) -> int:
    _confirm(ctx, args, f"application {args.app}")
    await ctx.client.delete_app(args.app)
    ctx.console.note(f"application {args.app} deleted")
    return 0


async def cmd_env_delete(ctx: Context, args: argparse.Namespace) -> int:
    _confirm(ctx, args, f"environment {args.app}/{args.env}")
    await ctx.client.delete_env(args.app, args.env)
    ctx.console.note(f"environment {args.app}/{args.env} deleted")
    return 0


async def cmd_group_delete(ctx: Context, args: argparse.Namespace) -> int:
    _confirm(ctx, args, f"group {args.name}")
    await ctx.client.delete_group(args.name, force=args.force)
    ctx.console.note(f"group {args.name} deleted")
    return 0


async def cmd_group_get(ctx: Context, args: argparse.Namespace) -> int:
    group = await ctx.client.get_group(args.name)
    show(ctx, group, group_text(group))
    return 0


def _user_text(u: UserView) -> str:
    pairs = [
        ("email", u.email),
        ("name", u.name or "-"),
        ("id", u.id),
        ("status", u.status),
        ("source", u.source),
        ("groups", ", ".join(u.groups) or "-"),
        ("2fa", "on" if u.totp_enabled else "off"),
        ("created", fmt.timestamp(u.created_at)),
        ("last login", fmt.timestamp(u.last_login_at)),
    ]
    if u.locked_until:
        pairs.append(("locked until", fmt.timestamp(u.locked_until)))
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}} {fmt.clean(v)}" for k, v in pairs)


async def cmd_user_get(ctx: Context, args: argparse.Namespace) -> int:
    user = await ctx.client.get_user(args.user)
    show(ctx, user, _user_text(user))
    return 0


async def cmd_user_update(ctx: Context, args: argparse.Namespace) -> int:
    groups = [] if args.no_groups else (args.group or None)
    if args.name is None and groups is None:
        raise UsageError("nothing to change: give --name, --group or --no-groups")
    options = {"name": "--name", "groups": "--group"}
    body = model_from_options(UserUpdate, options, name=args.name, groups=groups)
    user = await ctx.client.update_user(args.user, body)
    show(ctx, user, _user_text(user))
    return 0


def _secret(ctx: Context, question: str) -> str:
    answer = ctx.prompt(question, True)
    if not answer:
        raise UsageError(f"no answer to {question.strip().rstrip(':')!r}")
    return answer


async def cmd_password(ctx: Context, args: argparse.Namespace) -> int:
    current = _secret(ctx, "Current password: ")
    new = _secret(ctx, "New password: ")
    if _secret(ctx, "New password again: ") != new:
        raise UsageError("the two passwords differ; nothing was changed")
    options = {"current": "current password", "new": "new password"}
    body = model_from_options(PasswordChange, options, current=current, new=new)
    await ctx.client.change_password(body)
    ctx.console.note("Password changed; other sessions of yours have ended.")
    return 0


async def cmd_2fa_enrol(ctx: Context, args: argparse.Namespace) -> int:
    enrolment = await ctx.client.totp_enrol(_secret(ctx, "Password: "))
    ctx.console.note(
        "Add this to your authenticator app (a QR code from the URI, or type the key):\n"
        f"  key: {enrolment.secret}\n  uri: {enrolment.otpauth_uri}"
    )
    code = args.code or ctx.prompt("Code from the app: ", False)
    confirmed = await ctx.client.totp_confirm(TotpConfirm(code=code.strip()))
    ctx.console.note(
        "Two-factor authentication is on. Recovery codes, shown once: each logs in once in"
        " place of a code. Keep them safe:\n"
        + "\n".join(f"  {c}" for c in confirmed.recovery_codes)
    )
    return 0


# `tether sso set` options and the settings they change (the rest keep their value).
_SSO_OPTIONS = {
    "issuer": "issuer",
    "client_id": "client_id",
    "client_secret": "client_secret",
    "redirect_url": "redirect_url",
    "group_claim": "group_claim",
    "idp_ca_file": "ca_file",
}


async def cmd_sso_get(ctx: Context, args: argparse.Namespace) -> int:
    settings = await ctx.client.sso_settings()
    if ctx.json:
        ctx.console.print(fmt.to_json(settings))
        return 0
    width = max(len(k) for k in settings) + 1
    ctx.console.print(
        "\n".join(f"{k + ':':<{width}} {fmt.clean(json.dumps(v))}" for k, v in settings.items())
    )
    return 0


def _group_map(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        claim, sep, group = item.partition("=")
        if not sep or not claim or not group:
            raise UsageError(f"--map-group expects CLAIM_VALUE=GROUP; {item!r} is not")
        out[claim] = group
    return out


async def cmd_sso_set(ctx: Context, args: argparse.Namespace) -> int:
    if args.file is not None:
        try:
            settings: dict[str, Any] = json.loads(args.file.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--file {args.file}: {exc}") from None
    else:
        try:
            settings = await ctx.client.sso_settings()
        except ApiError as exc:
            if exc.status != 404:
                raise
            settings = {}  # none yet: the options alone
    for option, key in _SSO_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            settings[key] = value
    if args.map_group:
        settings["group_mapping"] = {
            **settings.get("group_mapping", {}),
            **_group_map(args.map_group),
        }
    if args.enabled is not None:
        settings["enabled"] = args.enabled
    saved = await ctx.client.set_sso_settings(settings)
    if ctx.json:
        ctx.console.print(fmt.to_json(saved))
    else:
        state = "on" if saved.get("enabled", True) else "off"
        ctx.console.note(f"SSO settings saved ({state}; issuer {saved.get('issuer')})")
    return 0


def _subcommands(groups: Any, name: str) -> Any:
    """The subcommands of an existing group (``app``, ``user``...), to add to them."""
    parser: argparse.ArgumentParser = groups.choices[name]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _delete(
    groups: Any,
    output: argparse.ArgumentParser,
    group: str,
    text: str,
    names: tuple[str, ...],
    handler: Any,
    route: str,
) -> argparse.ArgumentParser:
    """``tether GROUP delete NAMES... [--yes]``, calling ``route``."""
    p: argparse.ArgumentParser = _subcommands(groups, group).add_parser(
        "delete", parents=[output], help=text
    )
    for name in names:
        p.add_argument(name, metavar=name.upper())
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p.set_defaults(handler=handler)
    covers(p, route)
    return p


def add_manage_commands(groups: Any, output: argparse.ArgumentParser) -> None:
    text = "delete an application (no envs left)"
    _delete(groups, output, "app", text, ("app",), cmd_app_delete, "DELETE /api/v1/apps/{app}")
    route = "DELETE /api/v1/apps/{app}/envs/{env}"
    _delete(groups, output, "env", "delete an environment", ("app", "env"), cmd_env_delete, route)
    route = "DELETE /api/v1/groups/{group}"
    p = _delete(groups, output, "group", "delete a group", ("name",), cmd_group_delete, route)
    p.add_argument("--force", action="store_true", help="even with members")

    group = _subcommands(groups, "group")
    p = group.add_parser("get", parents=[output], help="show a group")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_group_get)
    covers(p, "GET /api/v1/groups/{group}")

    user = _subcommands(groups, "user")
    p = user.add_parser("get", parents=[output], help="show a user")
    p.add_argument("user", metavar="USER", help="email or id")
    p.set_defaults(handler=cmd_user_get)
    covers(p, "GET /api/v1/users/{user}")
    p = user.add_parser("update", parents=[output], help="change a user's name or groups")
    p.add_argument("user", metavar="USER", help="email or id")
    p.add_argument("--name", metavar="NAME")
    p.add_argument("--group", action="append", metavar="GROUP", help="repeatable; replaces all")
    p.add_argument("--no-groups", action="store_true", help="remove from every group")
    p.set_defaults(handler=cmd_user_update)
    covers(p, "PATCH /api/v1/users/{user}")

    p = groups.add_parser("password", parents=[output], help="change your password")
    p.set_defaults(handler=cmd_password)
    covers(p, "POST /api/v1/auth/password")

    twofa = groups.add_parser("2fa", help="your two-factor authentication").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    p = twofa.add_parser(
        "enrol", parents=[output], help="add an authenticator app (asks your password)"
    )
    p.add_argument("--code", metavar="CODE", help="the app's code (else asked)")
    p.set_defaults(handler=cmd_2fa_enrol)
    covers(p, "POST /api/v1/auth/totp/enrol", "POST /api/v1/auth/totp/confirm")

    sso = groups.add_parser("sso", help="single sign-on settings").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    p = sso.add_parser("get", parents=[output], help="show the SSO settings")
    p.set_defaults(handler=cmd_sso_get)
    covers(p, "GET /api/v1/auth/sso")
    p = sso.add_parser("set", parents=[output], help="set or change the SSO settings")
    p.add_argument("--file", type=Path, metavar="JSON", help="the whole settings document")
    p.add_argument("--issuer", metavar="URL", help="the OpenID Connect provider, https://")
    p.add_argument("--client-id", metavar="ID")
    p.add_argument("--client-secret", metavar="SECRET", help="a builtin secret's NAME")
    p.add_argument("--redirect-url", metavar="URL", help="the manager's callback URL")
    p.add_argument("--group-claim", metavar="CLAIM")
    p.add_argument("--map-group", action="append", metavar="VALUE=GROUP", default=[])
    p.add_argument("--idp-ca-file", metavar="PEM", help="a CA file on the manager host")
    p.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    p.set_defaults(handler=cmd_sso_set)
    covers(p, "PUT /api/v1/auth/sso")
