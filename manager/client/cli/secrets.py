"""The ``tether secret-manager`` and ``tether secret`` commands.

A value can come from ``--from-literal`` (``-`` reads it from stdin, which keeps it out of
the process list and the shell history) or ``--from-file``; ``--ref`` makes a reference to
a value kept in the customer's store. Nothing these commands print holds a value.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from manager.client.cli import output as fmt
from manager.client.cli.context import EXIT_ERROR, Context, UsageError
from manager.schemas.secrets import (
    ScopeSpec,
    ScopeTarget,
    SecretCreate,
    SecretManagerCreate,
    SecretManagerUpdate,
    SecretManagerView,
    SecretUpdate,
    SecretView,
)
from shared.secretspec import MANAGER_KINDS, MAX_FILE_SECRET_BYTES, SECRET_TYPES

__all__ = ["add_secret_parsers"]


def _pairs(values: Sequence[str], option: str, *, secret: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, item in enumerate(values, 1):
        name, sep, value = item.partition("=")
        if not sep or not name:
            what = f"value #{number} (not shown)" if secret else repr(item)
            raise UsageError(f"{option} takes NAME=VALUE, got {what}")
        out[name] = value
    return out


def _manager_line(m: SecretManagerView) -> list[object]:
    creds = m.credentials_secret or "(delegate environment)"
    return [m.name, m.kind, ",".join(m.selectors) or "-", creds, m.description]


def _secret_line(s: SecretView) -> list[object]:
    return [s.name, s.type, s.manager, s.mode, s.current_version, fmt.ago(s.updated_at)]


def _show(ctx: Context, model: Any, text: str) -> None:
    ctx.console.print(fmt.to_json(model.model_dump(mode="json")) if ctx.json else text)


# -- secret managers -----------------------------------------------------------------------


async def cmd_sm_create(ctx: Context, args: argparse.Namespace) -> int:
    body = SecretManagerCreate(
        name=args.name,
        kind=args.kind,
        settings=_pairs(args.setting, "--setting"),
        credentials_secret=args.credentials_secret,
        selectors=args.selector,
        description=args.description,
    )
    view = await ctx.client.create_secret_manager(body)
    _show(ctx, view, f"secret manager {view.name} ({view.kind}) created")
    return 0


async def cmd_sm_list(ctx: Context, args: argparse.Namespace) -> int:
    managers = await ctx.client.list_secret_managers()
    if ctx.json:
        ctx.console.print(fmt.to_json({"secret_managers": [m.model_dump() for m in managers]}))
    else:
        headers = ("NAME", "KIND", "SELECTORS", "CREDENTIALS", "DESCRIPTION")
        ctx.console.print(fmt.table(headers, [_manager_line(m) for m in managers]))
    return 0


async def cmd_sm_get(ctx: Context, args: argparse.Namespace) -> int:
    m = await ctx.client.get_secret_manager(args.name)
    settings = "\n".join(f"  {k}: {v}" for k, v in sorted(m.settings.items()))
    _show(
        ctx,
        m,
        f"{m.name} ({m.kind}){' builtin' if m.builtin else ''}\n"
        f"credentials: {m.credentials_secret or '(delegate environment)'}\n"
        f"selectors: {','.join(m.selectors) or '-'}\nsettings:\n{settings or '  -'}",
    )
    return 0


async def cmd_sm_update(ctx: Context, args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {}
    if args.rename:
        fields["name"] = args.rename
    if args.setting or args.unset_setting:
        current = (await ctx.client.get_secret_manager(args.name)).settings
        current.update(_pairs(args.setting, "--setting"))
        for name in args.unset_setting:
            current.pop(name, None)
        fields["settings"] = current
    if args.no_credentials_secret:
        fields["credentials_secret"] = None
    elif args.credentials_secret:
        fields["credentials_secret"] = args.credentials_secret
    if args.selector:
        fields["selectors"] = [] if args.selector == [""] else args.selector
    if args.description is not None:
        fields["description"] = args.description
    if not fields:
        raise UsageError("nothing to change (see: tether secret-manager update --help)")
    view = await ctx.client.update_secret_manager(
        args.name, SecretManagerUpdate.model_validate(fields)
    )
    _show(ctx, view, f"secret manager {view.name} updated")
    return 0


async def cmd_sm_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_secret_manager(args.name)
    ctx.console.note(f"secret manager {args.name} deleted")
    return 0


async def cmd_sm_test(ctx: Context, args: argparse.Namespace) -> int:
    result = await ctx.client.test_secret_manager(args.name)
    where = f" (delegate {result.delegate_id}, task {result.task_id})" if result.task_id else ""
    text = f"{args.name}: ok{where}" if result.ok else f"{args.name}: failed{where}: {result.error}"
    _show(ctx, result, text)
    return 0 if result.ok else EXIT_ERROR


# -- secrets -------------------------------------------------------------------------------


def _value_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The value source of a create or update, from the flags (never echoed back)."""
    sources = [s for s in ("from_literal", "from_file", "ref") if getattr(args, s) is not None]
    if len(sources) != 1:
        raise UsageError("give exactly one of --from-literal, --from-file or --ref")
    extra = _pairs(args.field, "--field", secret=True)
    kind = getattr(args, "type", None)
    if args.ref is not None:
        if extra:
            raise UsageError("--field goes with a value, not with --ref")
        return {"ref": {"path": args.ref, "key": args.key, "version": args.ref_version}}
    if args.key or args.ref_version:
        raise UsageError("--key and --ref-version go with --ref")
    raw = _read_value(args)
    if kind in ("ssh_key", "winrm") or extra:
        main = "key" if kind in (None, "ssh_key") else "password"
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise UsageError(f"the {main} must be text") from None
        return {"fields": {main: text, **extra}}
    if kind == "file" or args.from_file is not None:
        return {"value_base64": base64.b64encode(raw).decode()}
    try:
        return {"value": raw.decode()}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(raw).decode()}


def _read_value(args: argparse.Namespace) -> bytes:
    if args.from_file is not None:
        path: Path = args.from_file
        try:
            size = path.stat().st_size
            if size > MAX_FILE_SECRET_BYTES:
                raise UsageError(f"{path} is larger than {MAX_FILE_SECRET_BYTES} bytes")
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if args.from_literal == "-":
        data = sys.stdin.buffer.read(MAX_FILE_SECRET_BYTES + 1)
        # One trailing newline is what `echo` and a here-string add; it is not the value.
        return data[:-1] if data.endswith(b"\n") else data
    return str(args.from_literal).encode()


def parse_scope(targets: Sequence[str], account: bool) -> ScopeSpec | None:
    """``--scope APP[/ENV]`` (repeatable) and ``--scope-account`` as a scope; None when
    neither is given. APP may be ``*`` (every application); ENV an environment name,
    ``production``, ``non_production`` or ``*``."""
    if not targets and not account:
        return None
    out: list[ScopeTarget] = []
    for text in targets:
        app, _, env = text.partition("/")
        if not app:
            raise UsageError(f"--scope {text!r}: give APP or APP/ENV (APP may be '*')")
        envs: Any = "all"
        if env and env != "*":
            envs = env if env in ("production", "non_production") else [env]
        out.append(ScopeTarget(apps="all" if app == "*" else [app], envs=envs))
    return ScopeSpec(account=account, targets=out)


def _scope_line(scope: ScopeSpec | None) -> str:
    if scope is None:
        return "(inherited)"
    parts = ["account"] if scope.account else []
    for t in scope.targets:
        apps = "*" if t.apps == "all" else ",".join(t.apps)
        envs = "*" if t.envs == "all" else t.envs if isinstance(t.envs, str) else ",".join(t.envs)
        parts.append(f"{apps}/{envs}")
    return " ".join(parts) or "(no usage scope: delegate profiles only)"


async def cmd_secret_scope(ctx: Context, args: argparse.Namespace) -> int:
    scope = None if args.clear else parse_scope(args.scope, args.scope_account)
    if scope is None and not args.clear:
        raise UsageError("give --scope APP[/ENV], --scope-account, or --clear")
    view = await ctx.client.set_secret_scope(args.name, scope)
    _show(ctx, view, f"secret {view.name}: scope {_scope_line(view.scope)}")
    return 0


async def cmd_sm_scope(ctx: Context, args: argparse.Namespace) -> int:
    scope = None if args.clear else parse_scope(args.scope, args.scope_account)
    if scope is None and not args.clear:
        raise UsageError("give --scope APP[/ENV], --scope-account, or --clear")
    view = await ctx.client.set_secret_manager_scope(args.name, scope)
    line = "unrestricted" if view.scope is None else _scope_line(view.scope)
    _show(ctx, view, f"secret manager {view.name}: scope {line}")
    return 0


async def cmd_secret_create(ctx: Context, args: argparse.Namespace) -> int:
    body = SecretCreate.model_validate(
        {
            "name": args.name,
            "manager": args.manager,
            "type": args.type,
            "description": args.description or "",
            "scope": parse_scope(args.scope, args.scope_account),
            **_value_fields(args),
        }
    )
    view = await ctx.client.create_secret(body)
    _show(ctx, view, f"secret {view.name} created in {view.manager} (version 1, {view.mode})")
    return 0


async def cmd_secret_update(ctx: Context, args: argparse.Namespace) -> int:
    # The value's shape depends on the secret's type (fields for ssh_key and winrm).
    args.type = (await ctx.client.get_secret(args.name)).type
    fields = _value_fields(args)
    if args.description is not None:
        fields["description"] = args.description
    view = await ctx.client.update_secret(args.name, SecretUpdate.model_validate(fields))
    _show(ctx, view, f"secret {view.name} is now at version {view.current_version}")
    return 0


async def cmd_secret_list(ctx: Context, args: argparse.Namespace) -> int:
    secrets = await ctx.client.list_secrets(args.manager)
    if ctx.json:
        ctx.console.print(fmt.to_json({"secrets": [s.model_dump() for s in secrets]}))
    elif secrets:
        headers = ("NAME", "TYPE", "MANAGER", "MODE", "VERSION", "UPDATED")
        ctx.console.print(fmt.table(headers, [_secret_line(s) for s in secrets]))
    else:
        ctx.console.note("no secrets")
    return 0


async def cmd_secret_get(ctx: Context, args: argparse.Namespace) -> int:
    s = await ctx.client.get_secret(args.name)
    # Its own scope, or (none of its own) its manager's.
    scope = _scope_line(s.scope) if s.scope is not None else "that of its manager"
    _show(
        ctx,
        s,
        f"{s.name} ({s.id})\ntype: {s.type}\nmanager: {s.manager} ({s.manager_kind})\n"
        f"mode: {s.mode}\nversion: {s.current_version}\ncreated: {fmt.timestamp(s.created_at)}"
        f"\nupdated: {fmt.timestamp(s.updated_at)}\ndescription: {s.description or '-'}"
        f"\nscope: {scope}",
    )
    return 0


async def cmd_secret_versions(ctx: Context, args: argparse.Namespace) -> int:
    listing = await ctx.client.secret_versions(args.name)
    if ctx.json:
        ctx.console.print(fmt.to_json(listing.model_dump(mode="json")))
        return 0
    rows = []
    for v in listing.versions:
        where = (
            f"{v.ref.path}{'#' + v.ref.key if v.ref.key else ''}@{v.ref.version or 'latest'}"
            if v.ref
            else f"{v.size} bytes, {v.key}"
        )
        rows.append([f"{v.version}{' *' if v.current else ''}", fmt.ago(v.created_at), where])
    ctx.console.print(fmt.table(("VERSION", "CREATED", "VALUE"), rows))
    return 0


async def cmd_secret_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_secret(args.name)
    ctx.console.note(f"secret {args.name} deleted")
    return 0


async def cmd_secret_migrate(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.migrate_secret(args.name, args.to)
    _show(ctx, view, f"secret {view.name} is now kept in {view.manager}")
    return 0


# -- arguments -----------------------------------------------------------------------------


def add_secret_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    sm = groups.add_parser("secret-manager", help="where secrets are kept").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    c = sm.add_parser("create", parents=[output], help="add a secret manager")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--kind", required=True, choices=sorted(MANAGER_KINDS - {"builtin"}))
    _sm_options(c)
    c.set_defaults(handler=cmd_sm_create)
    sm.add_parser("list", parents=[output], help="list secret managers").set_defaults(
        handler=cmd_sm_list
    )
    g = sm.add_parser("get", parents=[output], help="show a secret manager")
    g.add_argument("name", metavar="NAME")
    g.set_defaults(handler=cmd_sm_get)
    u = sm.add_parser("update", parents=[output], help="change a secret manager")
    u.add_argument("name", metavar="NAME")
    u.add_argument("--rename", metavar="NEW")
    u.add_argument("--unset-setting", action="append", default=[], metavar="KEY")
    u.add_argument(
        "--no-credentials-secret",
        action="store_true",
        help="take credentials from the delegate's environment again",
    )
    _sm_options(u, update=True)
    u.set_defaults(handler=cmd_sm_update)
    d = sm.add_parser("delete", parents=[output], help="delete a secret manager")
    d.add_argument("name", metavar="NAME")
    d.set_defaults(handler=cmd_sm_delete)
    t = sm.add_parser("test", parents=[output], help="test the connection from a delegate")
    t.add_argument("name", metavar="NAME")
    t.set_defaults(handler=cmd_sm_test)

    sec = groups.add_parser("secret", help="secrets (values never shown)").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    create = sec.add_parser("create", parents=[output], help="create a secret")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--manager", default="builtin", metavar="M")
    create.add_argument("--type", choices=sorted(SECRET_TYPES), default="text")
    _scope_options(create)
    _value_options(create)
    create.set_defaults(handler=cmd_secret_create)
    update = sec.add_parser("update", parents=[output], help="give a secret a new version")
    update.add_argument("name", metavar="NAME")
    _value_options(update)
    update.set_defaults(handler=cmd_secret_update, type=None)
    ls = sec.add_parser("list", parents=[output], help="list secrets")
    ls.add_argument("--manager", metavar="M")
    ls.set_defaults(handler=cmd_secret_list)
    for name, handler, text in (
        ("get", cmd_secret_get, "show a secret's metadata"),
        ("versions", cmd_secret_versions, "list a secret's versions"),
        ("delete", cmd_secret_delete, "delete a secret (a reference's value stays)"),
    ):
        p = sec.add_parser(name, parents=[output], help=text)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(handler=handler)
    sc = sec.add_parser("scope", parents=[output], help="set where a secret may be used")
    sc.add_argument("name", metavar="NAME")
    _scope_options(sc, clear="back to its secret manager's scope")
    sc.set_defaults(handler=cmd_secret_scope)
    smsc = sm.add_parser(
        "scope", parents=[output], help="set where a manager's secrets may be used"
    )
    smsc.add_argument("name", metavar="NAME")
    _scope_options(smsc, clear="unrestricted again")
    smsc.set_defaults(handler=cmd_sm_scope)
    m = sec.add_parser(
        "migrate", parents=[output], help="move a secret to another manager (not a reference)"
    )
    m.add_argument("name", metavar="NAME")
    m.add_argument("--to", required=True, metavar="MANAGER")
    m.set_defaults(handler=cmd_secret_migrate)


def _sm_options(p: argparse.ArgumentParser, *, update: bool = False) -> None:
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--credentials-secret",
        metavar="SECRET",
        help="a builtin secret holding this manager's credentials (a JSON object)",
    )
    p.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="S",
        help="delegates that run its tests and key operations (repeatable"
        + ("; '' clears)" if update else ")"),
    )
    p.add_argument("--description", default=None if update else "")


def _scope_options(p: argparse.ArgumentParser, *, clear: str | None = None) -> None:
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="APP[/ENV]",
        help="usable by tasks in APP (every env, or ENV: a name, production or non_production);"
        " APP may be '*'; repeatable",
    )
    p.add_argument("--scope-account", action="store_true", help="usable by delegate profiles")
    if clear is not None:
        p.add_argument("--clear", action="store_true", help=f"no scope of its own: {clear}")


def _value_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-literal", metavar="VALUE", help="the value; '-' reads it from stdin")
    p.add_argument("--from-file", type=Path, metavar="FILE")
    p.add_argument("--ref", metavar="PATH", help="a value kept in the customer's store")
    p.add_argument("--key", metavar="K", help="with --ref: one key inside the referenced value")
    p.add_argument("--ref-version", metavar="V", help="with --ref: pin this version")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ssh_key: user, passphrase; winrm: user, domain",
    )
    p.add_argument("--description", default=None)
