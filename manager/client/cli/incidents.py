"""The ``tether`` commands of incident response and freezes:

    tether freeze create NAME --cron '0 22 * * 5' --duration 60h --timezone Europe/Berlin \\
        --env-type production
    tether freeze list | delete NAME
    tether webhook create NAME --kind alertmanager --auth bearer [--runbook R --map in=path]
    tether webhook list | get NAME | delete NAME | rotate-secret NAME
    tether incident list [--status open] | get ID | ack ID | resolve ID | note ID TEXT
    tether incident retention [--days N]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.context import Context, UsageError
from manager.schemas.freezes import FreezeCreate, FreezeView
from manager.schemas.incidents import IncidentView, WebhookCreate, WebhookCreated, WebhookView

__all__ = ["add_incident_commands", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``8h``, ``2d``, ``1w`` as seconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise UsageError(f"not a duration: {text!r} (use 90s, 15m, 8h, 2d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _instant(text: str | None) -> float | None:
    """Epoch seconds, or an ISO 8601 time with its offset."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (epoch seconds or 2026-12-24T18:00+01:00)"
        ) from None
    if parsed.tzinfo is None:
        raise UsageError(f"give {text!r} with its offset (+01:00, Z)")
    return parsed.timestamp()


def _model(model: type[BaseModel], **fields: Any) -> Any:
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{where}: {first['msg']}" if where else first["msg"]) from None


def _show(ctx: Context, model: BaseModel, text: str) -> None:
    ctx.console.print(fmt.to_json(model.model_dump(mode="json")) if ctx.json else text)


def _listing(
    ctx: Context,
    key: str,
    items: Sequence[BaseModel],
    headers: tuple[str, ...],
    rows: Callable[[], list[tuple[object, ...]]],
) -> int:
    if ctx.json:
        ctx.console.print(fmt.to_json({key: [i.model_dump(mode="json") for i in items]}))
    elif items:
        ctx.console.print(fmt.table(headers, rows()))
    else:
        ctx.console.note(f"no {key}")
    return 0


# -- freeze windows -------------------------------------------------------------------------


def _freeze_when(f: FreezeView) -> str:
    if f.cron or f.rrule:
        rule = f"cron {f.cron}" if f.cron else f"rrule {f.rrule}"
        return f"{rule} ({f.timezone}) for {f.duration_s:g}s"
    return f"{fmt.timestamp(f.start)} to {fmt.timestamp(f.end)}"


def _freeze_where(f: FreezeView) -> str:
    parts = [*(f"app {a}" for a in f.apps), *(f"env {e}" for e in f.envs)]
    parts += [f"{t} envs" for t in f.env_types]
    return ", ".join(parts) or "everywhere"


async def cmd_freeze_create(ctx: Context, args: argparse.Namespace) -> int:
    body = _model(
        FreezeCreate,
        name=args.name,
        description=args.description,
        start=_instant(args.start),
        end=_instant(args.end),
        cron=args.cron,
        rrule=args.rrule,
        timezone=args.timezone,
        duration_s=0.0 if args.duration is None else parse_duration(args.duration),
        dtstart=args.dtstart,
        until=_instant(args.until),
        apps=args.app,
        envs=args.env,
        env_types=args.env_type,
    )
    f = await ctx.client.create_freeze(body)
    active = f" (active until {fmt.timestamp(f.active_until)})" if f.active_until else ""
    _show(ctx, f, f"freeze window {f.name} ({f.id}): {_freeze_when(f)}, {_freeze_where(f)}{active}")
    return 0


async def cmd_freeze_list(ctx: Context, args: argparse.Namespace) -> int:
    freezes = await ctx.client.list_freezes()
    return _listing(
        ctx,
        "freezes",
        freezes,
        ("NAME", "WHEN", "WHERE", "ACTIVE UNTIL"),
        lambda: [
            (
                f.name,
                _freeze_when(f),
                _freeze_where(f),
                fmt.timestamp(f.active_until) if f.active_until else "-",
            )
            for f in freezes
        ],
    )


async def cmd_freeze_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_freeze(args.name)
    if ctx.json:
        ctx.console.print(fmt.to_json({"deleted": args.name}))
    else:
        ctx.console.print(f"freeze window {args.name} deleted")
    return 0


# -- webhooks -------------------------------------------------------------------------------


def _webhook_text(w: WebhookView) -> str:
    mapping = ", ".join(f"{k}={v}" for k, v in w.mapping.items()) or "-"
    rejected = ", ".join(f"{r}: {n}" for r, n in sorted(w.rejected.items())) or "none"
    return (
        f"{w.name} ({w.id})\npath: {w.path}\nauth: {w.auth}\nkind: {w.kind}\n"
        f"runbook: {w.runbook or '-'}\nmapping: {mapping}\ngroups: {', '.join(w.groups) or '-'}"
        f"\nsecret: {w.secret_name}\naccepted: {w.accepted}\nrejected: {rejected}"
    )


def _created_text(w: WebhookCreated, what: str) -> str:
    how = {
        "hmac": "sign X-Tether-Timestamp.body with it (X-Tether-Signature: sha256=...)",
        "github": "set it as the GitHub webhook's secret",
        "bearer": "send it as Authorization: Bearer",
    }[w.auth]
    return f"{_webhook_text(w)}\n\n{what}: {w.secret}\nshown once: keep it now ({how})"


def _mapping(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--map takes INPUT=PATH, not {pair!r}")
        out[name] = path
    return out


async def cmd_webhook_create(ctx: Context, args: argparse.Namespace) -> int:
    body = _model(
        WebhookCreate,
        name=args.name,
        description=args.description,
        auth=args.auth,
        kind=args.kind,
        runbook=args.runbook,
        mapping=_mapping(args.map),
        groups=args.group,
    )
    w = await ctx.client.create_webhook(body)
    _show(ctx, w, _created_text(w, "secret"))
    return 0


async def cmd_webhook_list(ctx: Context, args: argparse.Namespace) -> int:
    hooks = await ctx.client.list_webhooks()
    return _listing(
        ctx,
        "webhooks",
        hooks,
        ("NAME", "KIND", "AUTH", "RUNBOOK", "ACCEPTED", "REJECTED"),
        lambda: [
            (w.name, w.kind, w.auth, w.runbook or "-", w.accepted, sum(w.rejected.values()))
            for w in hooks
        ],
    )


async def cmd_webhook_get(ctx: Context, args: argparse.Namespace) -> int:
    w = await ctx.client.get_webhook(args.name)
    _show(ctx, w, _webhook_text(w))
    return 0


async def cmd_webhook_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_webhook(args.name)
    if ctx.json:
        ctx.console.print(fmt.to_json({"deleted": args.name}))
    else:
        ctx.console.print(f"webhook {args.name} and its secret deleted")
    return 0


async def cmd_webhook_rotate(ctx: Context, args: argparse.Namespace) -> int:
    w = await ctx.client.rotate_webhook_secret(args.name)
    _show(ctx, w, _created_text(w, "new secret"))
    return 0


# -- incidents ------------------------------------------------------------------------------


def _incident_text(i: IncidentView) -> str:
    lines = [
        f"{i.title} ({i.id})",
        f"status: {i.status}",
        f"severity: {i.severity}",
        f"source: {i.source}",
        f"opened: {fmt.timestamp(i.created_at)}",
        f"updated: {fmt.timestamp(i.updated_at)}",
        "timeline:",
    ]
    lines += [
        f"  {fmt.timestamp(t.at)}  {t.kind:<8} {fmt.clean(t.text)}"
        + (f"  ({fmt.clean(t.actor)})" if t.actor else "")
        for t in i.timeline
    ]
    return "\n".join(lines)


async def cmd_incident_list(ctx: Context, args: argparse.Namespace) -> int:
    found = await ctx.client.list_incidents(args.status)
    return _listing(
        ctx,
        "incidents",
        found,
        ("ID", "STATUS", "SEVERITY", "TITLE", "SOURCE", "UPDATED"),
        lambda: [
            (i.id, i.status, i.severity, fmt.clean(i.title), i.source, fmt.timestamp(i.updated_at))
            for i in found
        ],
    )


async def cmd_incident_get(ctx: Context, args: argparse.Namespace) -> int:
    i = await ctx.client.get_incident(args.id)
    _show(ctx, i, _incident_text(i))
    return 0


async def cmd_incident_ack(ctx: Context, args: argparse.Namespace) -> int:
    i = await ctx.client.change_incident(args.id, "ack")
    _show(ctx, i, f"incident {i.id} {i.status}")
    return 0


async def cmd_incident_resolve(ctx: Context, args: argparse.Namespace) -> int:
    i = await ctx.client.change_incident(args.id, "resolve")
    _show(ctx, i, f"incident {i.id} {i.status}")
    return 0


async def cmd_incident_note(ctx: Context, args: argparse.Namespace) -> int:
    i = await ctx.client.change_incident(args.id, "notes", note=" ".join(args.text))
    _show(ctx, i, f"note added to incident {i.id}")
    return 0


async def cmd_incident_retention(ctx: Context, args: argparse.Namespace) -> int:
    r = await ctx.client.incident_retention(args.days)
    _show(ctx, r, f"incidents are kept {r.days} days after their last update")
    return 0


def add_incident_commands(groups: Any, output: argparse.ArgumentParser) -> None:
    fr = groups.add_parser("freeze", help="freeze windows").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    c = fr.add_parser("create", parents=[output], help="create a freeze window")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--description", default="")
    c.add_argument("--start", metavar="TIME", help="one-off: ISO time with offset, or epoch")
    c.add_argument("--end", metavar="TIME", help="one-off: when it ends")
    c.add_argument("--cron", metavar="EXPR", help="recurring: when each occurrence starts")
    c.add_argument("--rrule", metavar="RULE", help="recurring: an RFC 5545 RRULE")
    c.add_argument("--dtstart", metavar="LOCAL", help="the RRULE's first start, local time")
    c.add_argument("--timezone", default="UTC", metavar="ZONE", help="IANA, e.g. Europe/Berlin")
    c.add_argument("--duration", metavar="D", help="each occurrence's length: 90m, 8h, 2d")
    c.add_argument("--until", metavar="TIME", help="no occurrence starts after it")
    c.add_argument("--app", action="append", default=[], metavar="APP", help="repeatable")
    c.add_argument(
        "--env", action="append", default=[], metavar="ENV", help="app/env or an id; repeatable"
    )
    c.add_argument(
        "--env-type", action="append", default=[], choices=("production", "non_production")
    )
    c.set_defaults(handler=cmd_freeze_create)
    fr.add_parser("list", parents=[output], help="list freeze windows").set_defaults(
        handler=cmd_freeze_list
    )
    d = fr.add_parser("delete", parents=[output], help="delete a freeze window")
    d.add_argument("name", metavar="NAME")
    d.set_defaults(handler=cmd_freeze_delete)

    wh = groups.add_parser("webhook", help="incoming webhooks").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    c = wh.add_parser("create", parents=[output], help="create a webhook (secret shown once)")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--description", default="")
    c.add_argument("--auth", choices=("hmac", "github", "bearer"), default="hmac")
    c.add_argument("--kind", choices=("generic", "alertmanager"), default="generic")
    c.add_argument("--runbook", metavar="NAME", help="run on each delivery (alerts: on opening)")
    c.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="INPUT=PATH",
        help="a runbook input from the payload: alerts[0].labels.alertname or /a/b",
    )
    c.add_argument("--group", action="append", default=[], metavar="GROUP", help="runs act with it")
    c.set_defaults(handler=cmd_webhook_create)
    wh.add_parser("list", parents=[output], help="list webhooks").set_defaults(
        handler=cmd_webhook_list
    )
    for verb, handler, text in (
        ("get", cmd_webhook_get, "show a webhook and its delivery counts"),
        ("delete", cmd_webhook_delete, "delete a webhook and its secret"),
        ("rotate-secret", cmd_webhook_rotate, "replace a webhook's secret (shown once)"),
    ):
        p = wh.add_parser(verb, parents=[output], help=text)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(handler=handler)

    inc = groups.add_parser("incident", help="incidents opened by alerts").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    ls = inc.add_parser("list", parents=[output], help="list incidents, latest first")
    ls.add_argument("--status", choices=("open", "acknowledged", "resolved"))
    ls.set_defaults(handler=cmd_incident_list)
    for verb, handler, text in (
        ("get", cmd_incident_get, "show an incident and its timeline"),
        ("ack", cmd_incident_ack, "acknowledge an incident"),
        ("resolve", cmd_incident_resolve, "resolve an incident"),
    ):
        p = inc.add_parser(verb, parents=[output], help=text)
        p.add_argument("id", metavar="ID")
        p.set_defaults(handler=handler)
    n = inc.add_parser("note", parents=[output], help="add a note to an incident's timeline")
    n.add_argument("id", metavar="ID")
    n.add_argument("text", nargs="+", metavar="TEXT")
    n.set_defaults(handler=cmd_incident_note)
    r = inc.add_parser("retention", parents=[output], help="show or set how long incidents stay")
    r.add_argument("--days", type=int, metavar="N", help="set it (needs manage_governance)")
    r.set_defaults(handler=cmd_incident_retention)
