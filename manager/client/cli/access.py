"""The ``tether api-key`` and ``tether allowlist`` commands.

    KEY=$(tether api-key create ci --max-qps 5 --group deployers --expires-in 90 | tail -n 1)
    tether allowlist add 203.0.113.0/24 --description office
    tether allowlist enable          # refused if it would shut out your own address...
    tether allowlist enable --confirm  # ...unless you mean it

A new key is printed once, alone on the last line of standard output; what surrounds it
goes to standard error. Every command answers ``--output json`` with the API's own JSON.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel, ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.context import Context, UsageError
from manager.schemas.access import (
    AllowlistEntryCreate,
    AllowlistEntryView,
    AllowlistView,
    ApiKeyCreate,
    ApiKeyDefaultsUpdate,
    ApiKeyView,
    parse_cidr,
)

__all__ = ["add_access_parsers", "model_from_options", "show"]

# Model fields as the options that set them, for usage errors.
_OPTION_OF_FIELD = {
    "name": "NAME",
    "owner": "--owner",
    "groups": "--group",
    "max_qps": "--max-qps",
    "burst": "--burst",
    "expires_in_days": "--expires-in",
    "cidr": "CIDR",
    "description": "--description",
}


def model_from_options(model: type[BaseModel], options: dict[str, str], **fields: Any) -> Any:
    """``model`` from the options, or a UsageError that names the option at fault
    (``options``: field name to option name)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise UsageError(f"{options.get(field, field)}: {err['msg']}") from None


def _model(model: type[BaseModel], **fields: Any) -> Any:
    return model_from_options(model, _OPTION_OF_FIELD, **fields)


def show(ctx: Context, model: BaseModel, text: str) -> None:
    """The API's JSON with --output json, else ``text``."""
    ctx.console.print(fmt.to_json(model) if ctx.json else text)


def _cidr(text: str) -> str:
    try:
        return str(parse_cidr(text))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- API keys ------------------------------------------------------------------------------


def _key_row(k: ApiKeyView) -> list[object]:
    return [
        k.name,
        k.prefix + "...",
        k.owner + (" (service account)" if k.service_account else "") or "-",
        k.max_qps,
        k.burst,
        ",".join(k.groups) or "-",
        fmt.ago(k.expires_at) if k.expires_at else "never",
        fmt.ago(k.last_used_at),
        k.status,
    ]


async def cmd_api_key_create(ctx: Context, args: argparse.Namespace) -> int:
    body: ApiKeyCreate = _model(
        ApiKeyCreate,
        name=args.name,
        owner=args.owner,
        service_account=args.service_account,
        groups=args.group,
        max_qps=args.max_qps,
        burst=args.burst,
        expires_in_days=args.expires_in,
    )
    created = await ctx.client.create_api_key(body)
    if ctx.json:
        ctx.console.print(fmt.to_json(created))
        return 0
    expires = fmt.timestamp(created.expires_at) if created.expires_at else "never"
    ctx.console.note(
        f"API key {created.name} created ({created.prefix}..., max QPS {created.max_qps}, "
        f"burst {created.burst}, expires {expires}); it is shown once, keep it now:"
    )
    ctx.console.print(created.key)
    return 0


async def cmd_api_key_list(ctx: Context, args: argparse.Namespace) -> int:
    keys = await ctx.client.list_api_keys()
    if ctx.json:
        ctx.console.print(fmt.to_json({"api_keys": [k.model_dump(mode="json") for k in keys]}))
    elif keys:
        headers = ("NAME", "PREFIX", "OWNER", "MAX QPS", "BURST", "GROUPS", "EXPIRES", "LAST USED")
        ctx.console.print(fmt.table((*headers, "STATUS"), [_key_row(k) for k in keys]))
    else:
        ctx.console.note("no API keys")
    return 0


async def cmd_api_key_revoke(ctx: Context, args: argparse.Namespace) -> int:
    key = await ctx.client.revoke_api_key(args.name)
    show(ctx, key, f"API key {key.name} revoked; every manager refuses it within a second")
    return 0


async def cmd_api_key_defaults(ctx: Context, args: argparse.Namespace) -> int:
    if args.max_qps is None and args.burst is None:
        defaults = await ctx.client.get_api_key_defaults()
    else:
        body = _model(ApiKeyDefaultsUpdate, max_qps=args.max_qps, burst=args.burst)
        defaults = await ctx.client.set_api_key_defaults(body)
    show(ctx, defaults, f"new API keys get: max QPS {defaults.max_qps}, burst {defaults.burst}")
    return 0


# -- the IP allowlist ----------------------------------------------------------------------


def _entry_line(e: AllowlistEntryView) -> str:
    state = "enabled" if e.enabled else "disabled"
    return f"{e.cidr} ({e.id}, {state}){': ' + e.description if e.description else ''}"


def _allowlist_text(view: AllowlistView) -> str:
    rows = [
        [e.id, e.cidr, "yes" if e.enabled else "no", fmt.ago(e.created_at), e.description]
        for e in view.entries
    ]
    lines = [
        f"IP allowlist: {'ENABLED' if view.enabled else 'disabled'}"
        f" (your address as the manager sees it: {view.your_ip or 'unknown'})",
        fmt.table(("ID", "CIDR", "ENABLED", "CREATED", "DESCRIPTION"), rows)
        if rows
        else "no entries",
        f"trusted proxies: {', '.join(view.trusted_proxies) or 'none'}",
    ]
    return "\n".join(lines)


async def cmd_allowlist_list(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.get_allowlist()
    show(ctx, view, _allowlist_text(view))
    return 0


async def cmd_allowlist_add(ctx: Context, args: argparse.Namespace) -> int:
    body = _model(
        AllowlistEntryCreate,
        cidr=_cidr(args.cidr),
        description=args.description,
        enabled=not args.disabled,
    )
    entry = await ctx.client.add_allowlist_entry(body)
    show(ctx, entry, f"added {_entry_line(entry)}")
    return 0


async def cmd_allowlist_remove(ctx: Context, args: argparse.Namespace) -> int:
    entry = await ctx.client.remove_allowlist_entry(args.id, confirm=args.confirm)
    show(ctx, entry, f"removed {_entry_line(entry)}")
    return 0


async def _switch(ctx: Context, args: argparse.Namespace, enabled: bool) -> int:
    if args.id is not None:
        entry = await ctx.client.set_allowlist_entry_enabled(args.id, enabled, confirm=args.confirm)
        show(ctx, entry, _entry_line(entry))
        return 0
    if enabled:
        view = await ctx.client.enable_allowlist(confirm=args.confirm)
    else:
        view = await ctx.client.disable_allowlist()
    show(ctx, view, _allowlist_text(view))
    return 0


async def cmd_allowlist_enable(ctx: Context, args: argparse.Namespace) -> int:
    return await _switch(ctx, args, True)


async def cmd_allowlist_disable(ctx: Context, args: argparse.Namespace) -> int:
    return await _switch(ctx, args, False)


async def cmd_allowlist_trusted_proxies(ctx: Context, args: argparse.Namespace) -> int:
    if args.clear and args.set:
        raise UsageError("--set and --clear do not go together")
    if args.clear or args.set:
        wanted = [_cidr(p) for p in args.set]
        proxies = await ctx.client.set_trusted_proxies(wanted, confirm=args.confirm)
    else:
        proxies = await ctx.client.get_trusted_proxies()
    if ctx.json:
        ctx.console.print(fmt.to_json({"proxies": proxies}))
    elif proxies:
        ctx.console.print("\n".join(proxies))
    else:
        ctx.console.note("no trusted proxies: X-Forwarded-For is ignored")
    return 0


# -- arguments -----------------------------------------------------------------------------


def add_access_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    keys = groups.add_parser("api-key", help="API keys and their rate limits").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    c = keys.add_parser("create", parents=[output], help="create an API key (shown once)")
    c.add_argument("name", metavar="NAME")
    _limit_options(c)
    c.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        help="narrow the key to this user group (repeatable)",
    )
    c.add_argument("--expires-in", type=int, metavar="DAYS", help="default: never")
    c.add_argument(
        "--owner",
        metavar="O",
        help="a service account key: the account it acts for (default: the key name)",
    )
    c.add_argument(
        "--service-account", action="store_true", help="a key of a service, not of a person"
    )
    c.set_defaults(handler=cmd_api_key_create)
    keys.add_parser("list", parents=[output], help="list API keys").set_defaults(
        handler=cmd_api_key_list
    )
    r = keys.add_parser("revoke", parents=[output], help="revoke an API key")
    r.add_argument("name", metavar="NAME")
    r.set_defaults(handler=cmd_api_key_revoke)
    d = keys.add_parser(
        "defaults", parents=[output], help="show (or, with options, set) new keys' limits"
    )
    _limit_options(d)
    d.set_defaults(handler=cmd_api_key_defaults)

    al = groups.add_parser("allowlist", help="the IP allowlist").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    al.add_parser("list", parents=[output], help="entries, state and your address").set_defaults(
        handler=cmd_allowlist_list
    )
    a = al.add_parser("add", parents=[output], help="allow a CIDR range (IPv4 or IPv6)")
    a.add_argument("cidr", metavar="CIDR")
    a.add_argument("--description", default="", metavar="D")
    a.add_argument("--disabled", action="store_true", help="add it switched off")
    a.set_defaults(handler=cmd_allowlist_add)
    rm = al.add_parser("remove", parents=[output], help="remove an entry")
    rm.add_argument("id", metavar="ID")
    _confirm_option(rm)
    rm.set_defaults(handler=cmd_allowlist_remove)
    for name, handler, text in (
        ("enable", cmd_allowlist_enable, "turn the allowlist on (or, with ID, one entry)"),
        ("disable", cmd_allowlist_disable, "turn the allowlist off (or, with ID, one entry)"),
    ):
        p = al.add_parser(name, parents=[output], help=text)
        p.add_argument("id", nargs="?", metavar="ID")
        _confirm_option(p)
        p.set_defaults(handler=handler)
    tp = al.add_parser(
        "trusted-proxies",
        parents=[output],
        help="show (or set) the proxies whose X-Forwarded-For is believed",
    )
    tp.add_argument("--set", action="append", default=[], metavar="CIDR", help="repeatable")
    tp.add_argument("--clear", action="store_true", help="believe no proxy")
    _confirm_option(tp)
    tp.set_defaults(handler=cmd_allowlist_trusted_proxies)


def _limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-qps", type=float, metavar="Q", help="requests a second, on average")
    p.add_argument("--burst", type=int, metavar="N", help="requests at once, after a pause")


def _confirm_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--confirm",
        action="store_true",
        help="go ahead even if it shuts out your own address "
        "(recovery: tether-manager allowlist disable on the manager host)",
    )
