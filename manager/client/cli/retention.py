"""``tether retention get|set``: how long task logs, tasks and audit events are kept.

``set`` changes one thing at a time (a rule for an application and environment type, or the
audit trail's or incidents' days) and sends the whole settings back: what it did not name
stays as it was.
"""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.context import Context, UsageError
from manager.schemas.retention import RetentionSettings
from shared.protocol import describe_validation_error

__all__ = ["add_retention_parsers"]


def _days(value: float | None) -> str:
    return "forever" if value is None else f"{value:g} days"


def _text(s: RetentionSettings) -> str:
    lines = []
    if s.rules:
        rows = [(r.app, r.env_type, _days(r.logs_days), _days(r.tasks_days)) for r in s.rules]
        lines.append(fmt.table(("APP", "ENV TYPE", "LOGS", "TASKS"), rows))
    else:
        lines.append("tasks and logs: kept forever (no rule)")
    lines.append(f"audit events: {_days(s.audit_days)}")
    lines.append(f"incidents: {_days(s.incidents_days)}")
    return "\n".join(lines)


async def cmd_retention_get(ctx: Context, args: argparse.Namespace) -> int:
    settings = await ctx.client.get_retention()
    ctx.console.print(fmt.to_json(settings) if ctx.json else _text(settings))
    return 0


def _changed(current: RetentionSettings, args: argparse.Namespace) -> RetentionSettings:
    data: dict[str, Any] = current.model_dump(mode="json")
    touched = False
    for name in ("audit_days", "incidents_days"):
        value = getattr(args, name)
        if value is not None:
            data[name] = None if value == "forever" else value
            touched = True
    rules = [r for r in data["rules"] if (r["app"], r["env_type"]) != (args.app, args.env_type)]
    if args.clear:
        touched = True
    elif args.logs_days is not None or args.tasks_days is not None:
        old: dict[str, Any] = next(
            (r for r in data["rules"] if (r["app"], r["env_type"]) == (args.app, args.env_type)),
            {},
        )
        rule = {"app": args.app, "env_type": args.env_type}
        for name in ("logs_days", "tasks_days"):
            value = getattr(args, name)
            rule[name] = old.get(name) if value is None else (None if value == "forever" else value)
        rules.append(rule)
        touched = True
    else:
        rules = data["rules"]
    if not touched:
        raise UsageError(
            "nothing to set: --logs-days, --tasks-days, --clear, --audit-days or --incidents-days"
        )
    data["rules"] = rules
    try:
        return RetentionSettings.model_validate(data)
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        raise UsageError(f"{field}: {message}" if field else message) from None


async def cmd_retention_set(ctx: Context, args: argparse.Namespace) -> int:
    settings = await ctx.client.put_retention(_changed(await ctx.client.get_retention(), args))
    ctx.console.print(fmt.to_json(settings) if ctx.json else _text(settings))
    return 0


def _days_arg(value: str) -> float | str:
    if value == "forever":
        return value
    try:
        days = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of days or 'forever', got {value!r}"
        ) from None
    if not days > 0:
        raise argparse.ArgumentTypeError("days must be positive")
    return days


def add_retention_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    ret = groups.add_parser(
        "retention", help="how long logs, tasks and audit events are kept"
    ).add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    ret.add_parser("get", parents=[output], help="show the retention settings").set_defaults(
        handler=cmd_retention_get
    )
    s = ret.add_parser(
        "set",
        parents=[output],
        help="set one rule (per app and env type) or the audit/incident days; the rest stays",
    )
    s.add_argument("--app", default="*", metavar="APP", help="an application, or * (default)")
    s.add_argument(
        "--env-type", choices=("production", "non_production", "*"), default="*", help="default *"
    )
    s.add_argument("--logs-days", type=_days_arg, metavar="DAYS|forever")
    s.add_argument("--tasks-days", type=_days_arg, metavar="DAYS|forever")
    s.add_argument("--clear", action="store_true", help="remove the rule for --app/--env-type")
    s.add_argument("--audit-days", type=_days_arg, metavar="DAYS|forever")
    s.add_argument("--incidents-days", type=_days_arg, metavar="DAYS|forever")
    s.set_defaults(handler=cmd_retention_set)
