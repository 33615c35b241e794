"""The ``tether audit`` commands: list, export and verify the audit trail; saved filters.

tether audit list --since 7d --type secret --action delete
tether audit export --format csv -o audit.csv
tether audit verify            # exit 1, naming the first broken link, when it is broken
tether audit filter save deletes --action delete
"""

from __future__ import annotations

import argparse
import codecs
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.context import EXIT_ERROR, Context, UsageError, parse_when
from manager.schemas.audit import AuditEventView, AuditQueryModel

__all__ = ["add_audit_parsers"]


def _query(args: argparse.Namespace, *, with_limit: bool = True) -> AuditQueryModel:
    fields: dict[str, Any] = {
        "since": args.since,
        "until": args.until,
        "actor": args.actor,
        "type": args.type,
        "app": args.app,
        "action": args.action,
        "text": args.text,
    }
    if with_limit:
        fields["limit"] = args.limit
    try:
        return AuditQueryModel.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors(include_input=False, include_url=False)[0]
        name = ".".join(str(p) for p in err["loc"])
        raise UsageError(f"--{name}: {err['msg']}") from None


def _event_line(e: AuditEventView) -> list[object]:
    return [
        e.seq,
        fmt.timestamp(e.ts),
        f"{e.actor_name} ({e.actor_kind})",
        e.action,
        e.resource_type,
        e.resource_name or e.resource_id,
        e.summary,
    ]


async def cmd_audit_list(ctx: Context, args: argparse.Namespace) -> int:
    page = await ctx.client.list_audit(
        _query(args), before=args.before, saved_filter=args.saved_filter
    )
    if ctx.json:
        ctx.console.print(fmt.to_json(page))
    elif page.events:
        headers = ("SEQ", "TIME", "ACTOR", "ACTION", "TYPE", "RESOURCE", "SUMMARY")
        ctx.console.print(fmt.table(headers, [_event_line(e) for e in page.events]))
        if page.next:
            ctx.console.note(f"more: --before {page.next}")
    else:
        ctx.console.note("no audit events")
    return 0


async def cmd_audit_export(ctx: Context, args: argparse.Namespace) -> int:
    chunks = ctx.client.export_audit(
        args.format, _query(args, with_limit=False), saved_filter=args.saved_filter
    )
    if args.output_file is None:
        # Through the console's text stream; a chunk may end inside a UTF-8 character.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in chunks:
            ctx.console.out.write(decoder.decode(chunk))
        ctx.console.out.write(decoder.decode(b"", final=True))
        ctx.console.out.flush()
        return 0
    path: Path = args.output_file
    # 0600: the trail tells who changed what, which is for the people who may read it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        async for chunk in chunks:
            out.write(chunk)
    ctx.console.note(f"audit events written to {path}")
    return 0


async def cmd_audit_verify(ctx: Context, args: argparse.Namespace) -> int:
    report = await ctx.client.verify_audit()
    if ctx.json:
        ctx.console.print(fmt.to_json(report))
    elif report.broken is None:
        ctx.console.print(
            f"audit trail intact: {report.checked} event(s) chained up to seq {report.head_seq}"
        )
    else:
        ctx.console.print(
            f"audit trail BROKEN at seq {report.broken.seq}: {report.broken.reason}"
            f" ({report.checked} event(s) before it are intact)"
        )
    return 0 if report.ok else EXIT_ERROR


async def cmd_audit_filter_save(ctx: Context, args: argparse.Namespace) -> int:
    saved = await ctx.client.save_audit_filter(args.name, _query(args))
    if ctx.json:
        ctx.console.print(fmt.to_json(saved))
    else:
        ctx.console.note(
            f"saved audit filter {saved.name}: tether audit list --filter {saved.name}"
        )
    return 0


async def cmd_audit_filter_list(ctx: Context, args: argparse.Namespace) -> int:
    saved = await ctx.client.list_audit_filters()
    if ctx.json:
        ctx.console.print(fmt.to_json({"filters": [f.model_dump(mode="json") for f in saved]}))
    elif saved:
        rows = [
            [
                f.name,
                " ".join(
                    f"--{k} {fmt.timestamp(v) if k in ('since', 'until') else v}"
                    for k, v in f.query.model_dump(exclude_none=True).items()
                )
                or "(everything)",
            ]
            for f in saved
        ]
        ctx.console.print(fmt.table(("NAME", "FILTERS"), rows))
    else:
        ctx.console.note("no saved audit filters")
    return 0


async def cmd_audit_filter_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_audit_filter(args.name)
    ctx.console.note(f"audit filter {args.name} deleted")
    return 0


# -- arguments -----------------------------------------------------------------------------


def _filter_options(p: argparse.ArgumentParser, *, limit: bool = True) -> None:
    p.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="at or after: ISO time, or 30m, 2h, 7d ago"
    )
    p.add_argument(
        "--until", type=parse_when, metavar="WHEN", help="before: ISO time or duration ago"
    )
    p.add_argument("--actor", metavar="WHO", help="an actor's id or name")
    p.add_argument("--type", metavar="T", help="resource type: task, token, secret, ...")
    p.add_argument("--app", metavar="APP", help="application")
    p.add_argument("--action", metavar="A", help="create, update, delete, revoke, ...")
    p.add_argument("--text", metavar="S", help="in the summary, resource name or diff")
    if limit:
        p.add_argument("--limit", type=int, metavar="N", help="at most N events (default 100)")


def add_audit_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    audit = groups.add_parser("audit", help="the audit trail of every change").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    ls = audit.add_parser("list", parents=[output], help="list audit events, newest first")
    _filter_options(ls)
    ls.add_argument("--before", metavar="SEQ", help="older than this seq (the next page)")
    ls.add_argument(
        "--filter", dest="saved_filter", metavar="NAME", help="a saved filter (options narrow it)"
    )
    ls.set_defaults(handler=cmd_audit_list)

    ex = audit.add_parser(
        "export", parents=[output], help="export audit events, oldest first, as jsonl or csv"
    )
    ex.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ex.add_argument(
        "-o", "--output-file", type=Path, metavar="FILE", help="write to FILE (0600), not stdout"
    )
    _filter_options(ex, limit=False)
    ex.add_argument("--filter", dest="saved_filter", metavar="NAME", help="a saved filter")
    ex.set_defaults(handler=cmd_audit_export)

    audit.add_parser(
        "verify", parents=[output], help="check the hash chain; exit 1 if a link is broken"
    ).set_defaults(handler=cmd_audit_verify)

    flt = audit.add_parser("filter", help="saved audit filters").add_subparsers(
        dest="filter_command", metavar="SUBCOMMAND", required=True
    )
    save = flt.add_parser("save", parents=[output], help="save the given filters under a name")
    save.add_argument("name", metavar="NAME")
    _filter_options(save)
    save.set_defaults(handler=cmd_audit_filter_save)
    flt.add_parser("list", parents=[output], help="list your saved filters").set_defaults(
        handler=cmd_audit_filter_list
    )
    rm = flt.add_parser("delete", parents=[output], help="delete a saved filter")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(handler=cmd_audit_filter_delete)
