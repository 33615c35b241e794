"""The ``tether user``, ``group``, ``app`` and ``env`` commands.

    tether app create checkout
    tether env create checkout prod --type production
    tether group create deployers --permission view_audit \\
        --app-permission 'apps=checkout;envs=non_production;actions=read,execute'
    INVITE=$(tether user create dev@example.com --group deployers | tail -n 1)
    tether login --invite "$INVITE"          # the new user sets their password

An invite token is printed once, alone on the last line of standard output (there is no
mail server to send it). Every command answers ``--output json`` with the API's own JSON.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import BaseModel

from manager.client.cli import output as fmt
from manager.client.cli.access import model_from_options, show
from manager.client.cli.context import Context, UsageError
from manager.schemas.auth import SsoLinkRequest
from manager.schemas.directory import (
    AppCreate,
    AppPermission,
    EnvCreate,
    EnvUpdate,
    GroupCreate,
    GroupUpdate,
    GroupView,
    UserCreate,
    UserCreated,
    UserView,
)
from manager.schemas.grants import AccountPermission

__all__ = ["add_directory_parsers", "parse_app_permission"]

_OPTIONS = {
    "email": "EMAIL",
    "name": "NAME",
    "groups": "--group",
    "description": "--description",
    "account_permissions": "--permission",
    "app_permissions": "--app-permission",
    "type": "--type",
}


def _model(model: type[BaseModel], **fields: Any) -> Any:
    return model_from_options(model, _OPTIONS, **fields)


def parse_app_permission(text: str) -> AppPermission:
    """``apps=a,b;envs=production;actions=read,execute`` (apps and envs default to all)."""
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in ("apps", "envs", "actions"):
            raise UsageError(
                f"--app-permission {text!r}: expected apps=...;envs=...;actions=... "
                "(apps and envs: all, or names; envs also production or non_production)"
            )
        items = [v.strip() for v in value.split(",") if v.strip()]
        single = items[0] if len(items) == 1 else None
        if key == "actions" or single not in ("all", "production", "non_production"):
            fields[key] = items
        else:
            fields[key] = single
    if "actions" not in fields:
        raise UsageError(f"--app-permission {text!r}: name the actions (actions=read,execute)")
    options = {k: f"--app-permission {k}" for k in ("apps", "envs", "actions")}
    permission: AppPermission = model_from_options(AppPermission, options, **fields)
    return permission


def _app_permission_text(p: AppPermission) -> str:
    apps = p.apps if isinstance(p.apps, str) else ",".join(p.apps)
    envs = p.envs if isinstance(p.envs, str) else ",".join(p.envs)
    return f"apps={apps};envs={envs};actions={','.join(p.actions)}"


def _listing(
    ctx: Context,
    key: str,
    items: Sequence[BaseModel],
    headers: tuple[str, ...],
    rows: Sequence[Sequence[object]],
    empty: str,
) -> int:
    """A list as the API's JSON (``{key: [...]}``), a table, or a note that it is empty."""
    if ctx.json:
        ctx.console.print(fmt.to_json({key: [i.model_dump(mode="json") for i in items]}))
    elif items:
        ctx.console.print(fmt.table(headers, rows))
    else:
        ctx.console.note(empty)
    return 0


# -- users ---------------------------------------------------------------------------------


def _user_row(u: UserView) -> list[object]:
    return [
        u.email,
        u.name or "-",
        u.status,
        ",".join(u.groups) or "-",
        "yes" if u.totp_enabled else "no",
        fmt.ago(u.last_login_at),
    ]


def _invited(ctx: Context, user: UserCreated, what: str) -> int:
    if ctx.json:
        ctx.console.print(fmt.to_json(user))
        return 0
    expires = fmt.timestamp(user.invite_expires_at)
    ctx.console.note(
        f"{what} {user.email} (invite valid until {expires}); give them this token, shown "
        f"once, for: tether login --invite TOKEN"
    )
    ctx.console.print(user.invite_token)
    return 0


async def cmd_user_create(ctx: Context, args: argparse.Namespace) -> int:
    body = _model(UserCreate, email=args.email, name=args.name, groups=args.group)
    return _invited(ctx, await ctx.client.create_user(body), "invited")


async def cmd_user_invite(ctx: Context, args: argparse.Namespace) -> int:
    return _invited(ctx, await ctx.client.reinvite_user(args.user), "a new invite for")


async def cmd_user_list(ctx: Context, args: argparse.Namespace) -> int:
    users = await ctx.client.list_users(group=args.group)
    headers = ("EMAIL", "NAME", "STATUS", "GROUPS", "2FA", "LAST LOGIN")
    return _listing(ctx, "users", users, headers, [_user_row(u) for u in users], "no users")


async def _user_switch(ctx: Context, args: argparse.Namespace, enabled: bool) -> int:
    user = await ctx.client.set_user_enabled(args.user, enabled)
    ended = "" if enabled else "; their sessions ended and their API keys stopped"
    show(ctx, user, f"user {user.email} is {user.status}{ended}")
    return 0


async def cmd_user_disable(ctx: Context, args: argparse.Namespace) -> int:
    return await _user_switch(ctx, args, False)


async def cmd_user_unlock(ctx: Context, args: argparse.Namespace) -> int:
    user = await ctx.client.user_action(args.user, "unlock")
    show(ctx, user, f"user {user.email} is unlocked")
    return 0


async def cmd_user_reset_2fa(ctx: Context, args: argparse.Namespace) -> int:
    user = await ctx.client.user_action(args.user, "reset-2fa")
    show(ctx, user, f"2FA of {user.email} is off and their sessions ended; they enrol again")
    return 0


async def cmd_user_logout(ctx: Context, args: argparse.Namespace) -> int:
    user = await ctx.client.user_action(args.user, "logout")
    show(ctx, user, f"every session of {user.email} ended")
    return 0


async def cmd_user_sso_link(ctx: Context, args: argparse.Namespace) -> int:
    body = SsoLinkRequest(subject=args.subject, issuer=args.issuer)
    link = await ctx.client.sso_link(args.user, body)
    show(ctx, link, f"user {args.user} signs in through {link.subject} at {link.issuer}")
    return 0


async def cmd_user_sso_unlink(ctx: Context, args: argparse.Namespace) -> int:
    gone = await ctx.client.sso_unlink(args.user)
    subjects = ", ".join(f"{g.subject} at {g.issuer}" for g in gone.removed)
    show(ctx, gone, f"user {args.user} is no longer linked to {subjects}")
    return 0


async def cmd_user_enable(ctx: Context, args: argparse.Namespace) -> int:
    return await _user_switch(ctx, args, True)


# -- groups --------------------------------------------------------------------------------


def group_text(g: GroupView) -> str:
    lines = [
        f"group {g.name} ({g.id}{', built in' if g.builtin else ''})",
        f"  account permissions: {', '.join(g.account_permissions) or 'none'}",
        "  application permissions: "
        + ("; ".join(f"[{_app_permission_text(p)}]" for p in g.app_permissions) or "none"),
        f"  members: {', '.join(g.members) or 'none'}",
    ]
    return "\n".join(lines)


async def cmd_group_create(ctx: Context, args: argparse.Namespace) -> int:
    body = _model(
        GroupCreate,
        name=args.name,
        description=args.description or "",
        account_permissions=args.permission,
        app_permissions=[parse_app_permission(p) for p in args.app_permission],
    )
    group = await ctx.client.create_group(body)
    show(ctx, group, group_text(group))
    return 0


async def cmd_group_update(ctx: Context, args: argparse.Namespace) -> int:
    # Each option given replaces that list whole; --no-permissions empties the account ones.
    perms = [] if args.no_permissions else (args.permission or None)
    app_perms = [parse_app_permission(p) for p in args.app_permission] or None
    if args.no_app_permissions:
        app_perms = []
    body = _model(
        GroupUpdate,
        description=args.description,
        account_permissions=perms,
        app_permissions=app_perms,
    )
    if not body.model_dump(exclude_none=True):
        raise UsageError("nothing to change: give --permission, --app-permission or --description")
    group = await ctx.client.update_group(args.name, body)
    show(ctx, group, group_text(group))
    return 0


async def cmd_group_list(ctx: Context, args: argparse.Namespace) -> int:
    groups = await ctx.client.list_groups()
    rows: list[list[object]] = [
        [
            g.name,
            ",".join(g.account_permissions) or "-",
            " ".join(_app_permission_text(p) for p in g.app_permissions) or "-",
            len(g.members),
        ]
        for g in groups
    ]
    headers = ("NAME", "ACCOUNT PERMISSIONS", "APP PERMISSIONS", "MEMBERS")
    return _listing(ctx, "groups", groups, headers, rows, "no groups")


# -- applications and environments ---------------------------------------------------------


async def cmd_app_create(ctx: Context, args: argparse.Namespace) -> int:
    app = await ctx.client.create_app(
        _model(AppCreate, name=args.name, description=args.description or "")
    )
    show(ctx, app, f"application {app.name} created ({app.id})")
    return 0


async def cmd_app_list(ctx: Context, args: argparse.Namespace) -> int:
    apps = await ctx.client.list_apps()
    rows = [[a.name, a.id, fmt.ago(a.created_at), a.description] for a in apps]
    headers = ("NAME", "ID", "CREATED", "DESCRIPTION")
    return _listing(ctx, "apps", apps, headers, rows, "no applications")


async def cmd_env_create(ctx: Context, args: argparse.Namespace) -> int:
    body = _model(
        EnvCreate, name=args.name, type=args.type, dedicated_delegates=args.dedicated_delegates
    )
    env = await ctx.client.create_env(args.app, body)
    show(ctx, env, f"environment {env.app}/{env.name} ({env.type}) created ({env.id})")
    return 0


async def cmd_env_update(ctx: Context, args: argparse.Namespace) -> int:
    body = EnvUpdate(dedicated_delegates=args.dedicated_delegates)
    env = await ctx.client.update_env(args.app, args.name, body)
    who = "dedicated delegates only" if env.dedicated_delegates else "any delegate in scope"
    show(ctx, env, f"environment {env.app}/{env.name} updated: {who}")
    return 0


async def cmd_env_list(ctx: Context, args: argparse.Namespace) -> int:
    envs = await ctx.client.list_envs(args.app)
    rows = [
        [
            e.name,
            e.type,
            "yes" if e.dedicated_delegates else "no",
            e.id,
            fmt.ago(e.created_at),
        ]
        for e in envs
    ]
    headers = ("NAME", "TYPE", "DEDICATED DELEGATES", "ID", "CREATED")
    return _listing(ctx, "envs", envs, headers, rows, f"no environments in {args.app}")


# -- the parsers ---------------------------------------------------------------------------


def add_directory_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    def sub(name: str, text: str) -> Any:
        return groups.add_parser(name, help=text).add_subparsers(
            dest="subcommand", metavar="SUBCOMMAND", required=True
        )

    user = sub("user", "users: invite, list, disable")
    p = user.add_parser("create", parents=[output], help="invite a user; print the invite token")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--name", default="")
    p.add_argument("--group", action="append", default=[], metavar="G", help="repeatable")
    p.set_defaults(handler=cmd_user_create)
    p = user.add_parser("list", parents=[output], help="list users")
    p.add_argument("--group", metavar="G", help="only members of this group")
    p.set_defaults(handler=cmd_user_list)
    for verb, handler, text in (
        ("disable", cmd_user_disable, "disable a user: their sessions and API keys stop"),
        ("enable", cmd_user_enable, "enable a disabled user"),
        ("invite", cmd_user_invite, "a new invite token for a user who has not accepted"),
        ("unlock", cmd_user_unlock, "lift a lockout after failed logins"),
        ("reset-2fa", cmd_user_reset_2fa, "turn off a user's 2FA (a lost device)"),
        ("logout", cmd_user_logout, "end every session of a user"),
    ):
        p = user.add_parser(verb, parents=[output], help=text)
        p.add_argument("user", metavar="EMAIL")
        p.set_defaults(handler=handler)
    p = user.add_parser(
        "sso-link", parents=[output], help="let a user sign in through an SSO identity"
    )
    p.add_argument("user", metavar="EMAIL")
    p.add_argument("subject", metavar="SUBJECT", help="the user's subject (sub) at the provider")
    p.add_argument("--issuer", help="the provider (default: the one configured)")
    p.set_defaults(handler=cmd_user_sso_link)
    p = user.add_parser("sso-unlink", parents=[output], help="remove a user's SSO links")
    p.add_argument("user", metavar="EMAIL")
    p.set_defaults(handler=cmd_user_sso_unlink)

    perms = list(get_args(AccountPermission))
    group = sub("group", "user groups and their permissions")
    for verb, handler, text in (
        ("create", cmd_group_create, "create a group"),
        ("update", cmd_group_update, "change a group's permissions or description"),
    ):
        p = group.add_parser(verb, parents=[output], help=text)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--description")
        p.add_argument(
            "--permission", action="append", default=[], choices=perms, help="repeatable"
        )
        p.add_argument(
            "--app-permission",
            action="append",
            default=[],
            metavar="SPEC",
            help="'apps=A,B|all;envs=E,F|all|production|non_production;actions=read,...' "
            "(repeatable)",
        )
        if verb == "update":
            p.add_argument("--no-permissions", action="store_true", help="no account permissions")
            p.add_argument("--no-app-permissions", action="store_true")
        p.set_defaults(handler=handler)
    group.add_parser("list", parents=[output], help="list groups").set_defaults(
        handler=cmd_group_list
    )

    app = sub("app", "applications")
    p = app.add_parser("create", parents=[output], help="create an application")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--description")
    p.set_defaults(handler=cmd_app_create)
    app.add_parser("list", parents=[output], help="list applications").set_defaults(
        handler=cmd_app_list
    )

    env = sub("env", "environments of an application")
    p = env.add_parser("create", parents=[output], help="create an environment")
    p.add_argument("app", metavar="APP")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", required=True, choices=("production", "non_production"))
    p.add_argument(
        "--dedicated-delegates",
        action="store_true",
        help="only delegates whose token is scoped to this environment (or its application)"
        " run its tasks",
    )
    p.set_defaults(handler=cmd_env_create)
    p = env.add_parser("update", parents=[output], help="change an environment")
    p.add_argument("app", metavar="APP")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--dedicated-delegates",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether only delegates scoped to it by name run its tasks",
    )
    p.set_defaults(handler=cmd_env_update)
    p = env.add_parser("list", parents=[output], help="list an application's environments")
    p.add_argument("app", metavar="APP")
    p.set_defaults(handler=cmd_env_list)
