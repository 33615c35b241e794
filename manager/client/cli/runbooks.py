"""The ``tether runbook`` and ``tether standard`` commands.

    tether runbook apply -f restart-api.yaml     # a new version when it changed
    tether runbook diff -f restart-api.yaml      # what apply would change
    tether runbook export restart-api > restart-api.yaml
    tether runbook run restart-api --input reason=leak    # follow it like `task run`
    tether runbook approve run_... --reason "checked the dashboards"

A runbook file is the definition as YAML (docs/runbooks.md); export writes it back in the
same form (fields left at their defaults omitted), so a file kept in git diffs cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.context import EXIT_ERROR, EXIT_INTERRUPTED, Context, UsageError
from manager.client.cli.tasks import follow_task
from manager.client.client import ApiError, TetherClientError
from manager.schemas.runbooks import (
    ApprovalDecision,
    RunbookDefinition,
    RunbookView,
    RunStart,
    RunView,
    ScoreView,
    StandardDefinition,
)

__all__ = ["add_runbook_parsers", "definition_yaml"]

M = TypeVar("M", bound=BaseModel)
# How often a followed run is read again while it waits (an approval, the next step).
POLL_S = 1.0


def _load(path: Path, model: type[M]) -> M:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"{path} is not valid YAML{at}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise UsageError(f"{path}: {loc}: {first['msg']}") from None


class _Dumper(yaml.SafeDumper):
    """Scripts (text of several lines) as literal blocks, the way people write them."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _whole(value: Any) -> Any:
    """600.0 as 600: what a person wrote, not what the float model made of it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def definition_yaml(definition: BaseModel) -> str:
    """The document as a file holds it: defaults left out, in the model's field order."""
    data = _whole(definition.model_dump(mode="json", exclude_defaults=True))
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _scores(scores: list[ScoreView]) -> list[str]:
    lines = []
    for s in scores:
        rule = f", enforced here at {s.minimum:g} %" if s.enforced else ""
        lines.append(f"standard {s.standard}: {s.score:g} %{rule}")
        lines.extend(f"  unmet: {u}" for u in s.unmet)
    return lines


def _runbook_text(view: RunbookView) -> str:
    d = view.definition
    pairs = [
        ("name", d.name),
        ("version", view.version),
        ("app", d.app),
        ("env", d.env or "(input 'env')"),
        ("tags", ", ".join(d.tags) or "-"),
        ("inputs", ", ".join(f"{i.name}:{i.type}" for i in d.inputs) or "-"),
        ("updated", fmt.timestamp(view.updated_at)),
    ]
    lines = [f"{k:<9} {fmt.clean(v)}" for k, v in pairs]
    lines.append("steps")
    for n, s in enumerate(d.steps, 1):
        extra = f" groups={','.join(s.groups)}" if s.groups else ""
        when = f" when {s.when}" if s.when else ""
        lines.append(f"  {n}. {s.name} ({s.kind}){extra}{when}")
    if d.rollback is not None:
        lines.append(f"  rollback: {d.rollback.name} ({d.rollback.kind})")
    lines.extend(_scores(view.scores) or ["no governance standards"])
    return "\n".join(lines)


def _run_text(run: RunView) -> str:
    pairs = [
        ("run", run.id),
        ("runbook", f"{run.runbook} v{run.version}"),
        ("place", f"{run.app}/{run.env}"),
        ("state", run.state),
        ("started", f"{fmt.timestamp(run.created_at)} by {run.started_by} ({run.trigger})"),
        ("inputs", ", ".join(run.inputs) or "-"),
    ]
    if run.reason:
        pairs.append(("reason", run.reason))
    lines = [f"{k:<8} {fmt.clean(v)}" for k, v in pairs]
    lines.append("steps")
    for s in [*run.steps, *([run.rollback] if run.rollback else [])]:
        task = f" task {s.task_id}" if s.task_id else ""
        why = f": {s.reason}" if s.reason else ""
        lines.append(f"  {s.name} ({s.kind}) {s.status}{task}{fmt.clean(why)}")
        for a in s.approvals:
            said = f": {a['reason']}" if a.get("reason") else ""
            lines.append(f"    {a['decision']} by {a['user']} for {a['group']}{fmt.clean(said)}")
    lines.extend(_scores(run.scores))
    return "\n".join(lines)


def _show(ctx: Context, model: BaseModel, text: str) -> None:
    ctx.console.print(fmt.to_json(model) if ctx.json else text)


# -- definitions ----------------------------------------------------------------------------


async def cmd_apply(ctx: Context, args: argparse.Namespace) -> int:
    definition = _load(args.file, RunbookDefinition)
    view = await ctx.client.put_runbook(definition)
    _show(ctx, view, f"runbook {view.name} at version {view.version}")
    return 0


async def cmd_diff(ctx: Context, args: argparse.Namespace) -> int:
    definition = _load(args.file, RunbookDefinition)
    try:
        current = definition_yaml((await ctx.client.get_runbook(definition.name)).definition)
        label = f"{definition.name} (stored)"
    except ApiError as exc:
        if exc.status != 404:
            raise
        current, label = "", f"{definition.name} (not stored)"
    wanted = definition_yaml(definition)
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        wanted.splitlines(keepends=True),
        fromfile=label,
        tofile=str(args.file),
    )
    text = "".join(diff)
    ctx.console.print(text.rstrip("\n") if text else "no changes")
    return 0


async def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.get_runbook(args.name, args.version)
    ctx.console.print(definition_yaml(view.definition).rstrip("\n"))
    return 0


async def cmd_get(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.get_runbook(args.name, args.version)
    _show(ctx, view, _runbook_text(view))
    return 0


async def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    views = await ctx.client.list_runbooks()
    if ctx.json:
        ctx.console.print(fmt.to_json({"runbooks": [v.model_dump(mode="json") for v in views]}))
        return 0

    def worst(v: RunbookView) -> str:
        return f"{min(s.score for s in v.scores):g} %" if v.scores else "-"

    rows = [
        [v.name, v.version, f"{v.definition.app}/{v.definition.env or '*'}", worst(v)]
        for v in views
    ]
    ctx.console.print(fmt.table(("NAME", "VERSION", "PLACE", "LOWEST SCORE"), rows))
    return 0


async def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_runbook(args.name)
    ctx.console.print(f"runbook {args.name} deleted")
    return 0


# -- runs -----------------------------------------------------------------------------------


def _inputs(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--input takes NAME=VALUE, got {item!r}")
        out[name] = value
    return out


async def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    start = RunStart(
        inputs=_inputs(args.input),
        idempotency_key=args.idempotency_key,
        override_freeze=args.override_freeze,
    )
    run = await ctx.client.start_runbook_run(args.name, start)
    if args.no_follow:
        ctx.console.print(fmt.to_json(run) if ctx.json else run.id)
        return 0
    ctx.console.note(f"run {run.id} of runbook {run.runbook} v{run.version} started")
    for line in _scores(run.scores):
        ctx.console.note(line)
    final = await _follow(ctx, run, quiet=args.quiet)
    if final is None:
        return EXIT_INTERRUPTED
    if ctx.json:
        ctx.console.print(fmt.to_json(final))
    else:
        why = f": {final.reason}" if final.reason else ""
        ctx.console.note(f"run {final.id} {final.state}{fmt.clean(why)}")
    return 0 if final.state == "succeeded" else EXIT_ERROR


async def _follow(ctx: Context, run: RunView, *, quiet: bool) -> RunView | None:
    """Each step's log as its task runs, and a note when the run waits for a decision;
    the final run, or None after Ctrl-C (which cancels the run, as `task run` does)."""
    followed: set[str] = set()
    announced: set[str] = set()
    while True:
        for step in [*run.steps, *([run.rollback] if run.rollback else [])]:
            if step.task_id and step.task_id not in followed:
                followed.add(step.task_id)
                if not quiet:
                    ctx.console.note(f"step {step.name}: task {step.task_id}")
                task = await follow_task(
                    ctx, step.task_id, state=None, quiet=quiet, cancel_on_interrupt=False
                )
                if task is None:
                    await _interrupted(ctx, run)
                    return None
            if step.status == "waiting" and step.name not in announced:
                announced.add(step.name)
                ctx.console.note(
                    f"step {step.name} waits for approval by {', '.join(step.groups)}:"
                    f" tether runbook approve {run.id}"
                )
        if run.state in ("succeeded", "failed", "cancelled"):
            return run
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.interrupted.wait(), POLL_S)
        if ctx.interrupted.is_set():
            await _interrupted(ctx, run)
            return None
        run = await ctx.client.get_runbook_run(run.id)


async def _interrupted(ctx: Context, run: RunView) -> None:
    ctx.console.note(f"interrupted: cancelling run {run.id}")
    try:
        await ctx.client.cancel_runbook_run(run.id)
    except TetherClientError as exc:
        ctx.console.note(f"error: could not cancel run {run.id}: {exc}")
    return


async def cmd_runs(ctx: Context, args: argparse.Namespace) -> int:
    runs = await ctx.client.list_runbook_runs(args.runbook)
    if ctx.json:
        ctx.console.print(fmt.to_json({"runs": [r.model_dump(mode="json") for r in runs]}))
        return 0
    rows = [
        [r.id, r.runbook, f"{r.app}/{r.env}", r.state, r.started_by, fmt.timestamp(r.created_at)]
        for r in runs
    ]
    ctx.console.print(fmt.table(("ID", "RUNBOOK", "PLACE", "STATE", "BY", "STARTED"), rows))
    return 0


async def cmd_run_get(ctx: Context, args: argparse.Namespace) -> int:
    run = await ctx.client.get_runbook_run(args.run_id)
    _show(ctx, run, _run_text(run))
    return 0


async def _decide(ctx: Context, args: argparse.Namespace, *, approve: bool) -> int:
    decision = ApprovalDecision(reason=args.reason, step=args.step)
    run = await ctx.client.decide_runbook_run(args.run_id, decision, approve=approve)
    _show(ctx, run, _run_text(run))
    return 0


async def cmd_approve(ctx: Context, args: argparse.Namespace) -> int:
    return await _decide(ctx, args, approve=True)


async def cmd_reject(ctx: Context, args: argparse.Namespace) -> int:
    return await _decide(ctx, args, approve=False)


async def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    run = await ctx.client.cancel_runbook_run(args.run_id)
    _show(ctx, run, _run_text(run))
    return 0


# -- standards ------------------------------------------------------------------------------


async def cmd_standard_apply(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.put_standard(_load(args.file, StandardDefinition))
    _show(ctx, view, f"standard {view.name} at version {view.version}")
    return 0


async def cmd_standard_list(ctx: Context, args: argparse.Namespace) -> int:
    views = await ctx.client.list_standards()
    if ctx.json:
        ctx.console.print(fmt.to_json({"standards": [v.model_dump(mode="json") for v in views]}))
        return 0
    rows = [
        [
            v.name,
            v.version,
            len(v.definition.rules),
            ",".join(v.definition.enforce_env_types) or "-",
            f"{v.definition.minimum:g} %" if v.definition.enforce_env_types else "-",
        ]
        for v in views
    ]
    ctx.console.print(fmt.table(("NAME", "VERSION", "RULES", "ENFORCED IN", "MINIMUM"), rows))
    return 0


async def cmd_standard_get(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.get_standard(args.name)
    if ctx.json:
        ctx.console.print(fmt.to_json(view))
    else:
        ctx.console.print(definition_yaml(view.definition).rstrip("\n"))
    return 0


async def cmd_standard_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_standard(args.name)
    ctx.console.print(f"standard {args.name} deleted")
    return 0


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("a positive number")
    return int(value)


def add_runbook_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    rb = groups.add_parser("runbook", help="runbooks and their runs").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    p = rb.add_parser("apply", parents=[output], help="store a runbook file as its next version")
    p.add_argument("-f", "--file", type=Path, required=True, metavar="FILE")
    p.set_defaults(handler=cmd_apply)
    p = rb.add_parser("diff", parents=[output], help="what applying a runbook file would change")
    p.add_argument("-f", "--file", type=Path, required=True, metavar="FILE")
    p.set_defaults(handler=cmd_diff)
    for name, handler, text in (
        ("export", cmd_export, "print a runbook as its YAML file"),
        ("get", cmd_get, "show a runbook and its conformance scores"),
    ):
        p = rb.add_parser(name, parents=[output], help=text)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--version", type=_positive, metavar="N", help="an earlier version")
        p.set_defaults(handler=handler)
    rb.add_parser("list", parents=[output], help="list runbooks").set_defaults(handler=cmd_list)
    p = rb.add_parser("delete", parents=[output], help="delete a runbook (its runs stay)")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_delete)
    p = rb.add_parser(
        "run", parents=[output], help="start a run and follow it; exit 0 when it succeeds"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--idempotency-key", metavar="KEY", help="a retry returns the same run")
    p.add_argument(
        "--override-freeze",
        metavar="REASON",
        help="run through an active freeze window (needs override_freeze); the reason is audited",
    )
    p.add_argument("--no-follow", action="store_true", help="print the run's id and return")
    p.add_argument("-q", "--quiet", action="store_true", help="no step logs or notes")
    p.set_defaults(handler=cmd_run)
    p = rb.add_parser("runs", parents=[output], help="list runs, newest first")
    p.add_argument("--runbook", metavar="NAME")
    p.set_defaults(handler=cmd_runs)
    p = rb.add_parser("run-get", parents=[output], help="show a run and its steps")
    p.add_argument("run_id", metavar="RUN")
    p.set_defaults(handler=cmd_run_get)
    for name, handler, text in (
        ("approve", cmd_approve, "approve the step a run waits on"),
        ("reject", cmd_reject, "reject the step a run waits on (the run fails)"),
    ):
        p = rb.add_parser(name, parents=[output], help=text)
        p.add_argument("run_id", metavar="RUN")
        p.add_argument("--reason", default="", metavar="TEXT")
        p.add_argument("--step", metavar="STEP", help="the step (default: the one waiting)")
        p.set_defaults(handler=handler)
    p = rb.add_parser("cancel", parents=[output], help="cancel a run and its running step")
    p.add_argument("run_id", metavar="RUN")
    p.set_defaults(handler=cmd_cancel)

    std = groups.add_parser("standard", help="governance standards").add_subparsers(
        dest="subcommand", metavar="SUBCOMMAND", required=True
    )
    p = std.add_parser("apply", parents=[output], help="create or change a standard from a file")
    p.add_argument("-f", "--file", type=Path, required=True, metavar="FILE")
    p.set_defaults(handler=cmd_standard_apply)
    std.add_parser("list", parents=[output], help="list standards").set_defaults(
        handler=cmd_standard_list
    )
    for name, handler, text in (
        ("get", cmd_standard_get, "print a standard"),
        ("delete", cmd_standard_delete, "delete a standard"),
    ):
        p = std.add_parser(name, parents=[output], help=text)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(handler=handler)
