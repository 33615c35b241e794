"""The ``tether verify`` commands: named verification specs, and judging a deployment.

    tether verify apply -f verify.yaml            # a new version when the spec changed
    tether verify list
    tether verify get-spec checkout --version 2
    tether verify delete checkout
    tether verify run --deployment task_... --spec verify.yaml   # follow, exit like the task
    tether verify run --deployment task_... --verification checkout
    tether verify get task_...                    # verdict, per-query stats and sparklines

A spec file is YAML: the spec itself (provider, queries, window, ...), with an optional
top-level ``name`` that ``apply`` uses when no NAME is given.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from manager.client.cli import output as fmt
from manager.client.cli.context import EXIT_INTERRUPTED, Context, UsageError
from manager.client.cli.tasks import exit_code_for, follow_task
from manager.schemas.tasks import TaskView
from manager.schemas.verify import VerificationList, VerificationPut, VerificationView, VerifyRun
from shared.protocol import describe_validation_error
from shared.verify.report import QueryReport, Report, sparkline
from shared.verify.spec import VerifySpec

__all__ = ["add_verify_parsers", "read_spec_file", "render_report"]


def read_spec_file(path: Path) -> tuple[str | None, VerifySpec]:
    """(the file's ``name``, its spec); UsageError naming the file and the first problem."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not YAML ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: a spec is a YAML mapping")
    name = doc.pop("name", None)
    try:
        return (None if name is None else str(name)), VerifySpec.model_validate(doc)
    except ValidationError as exc:
        raise UsageError(f"{path}: {describe_validation_error(exc)[1]}") from None


def _spec_yaml(view: VerificationView) -> str:
    doc: dict[str, Any] = {"name": view.name}
    doc.update(view.spec.model_dump(mode="json", exclude_defaults=True))
    return yaml.safe_dump(doc, sort_keys=False).rstrip()


def _num(v: float | None, unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}{unit}"


def _query_text(q: QueryReport) -> str:
    values = [v for _, v in q.baseline_series] + [v for _, v in q.after_series]
    lo, hi = (min(values), max(values)) if values else (None, None)
    lines = [
        f"  {q.name}: {q.outcome}",
        f"    {q.statistic} before {_num(q.baseline, q.unit)}  after {_num(q.after, q.unit)}"
        f"  {q.threshold} (limit {_num(q.limit, q.unit)}, margin {_num(q.margin, q.unit)})"
        + ("" if q.p_value is None else f"  Mann-Whitney p={q.p_value:.3g}"),
        f"    points: {q.baseline_points} before, {q.after_points} after, step {q.step_s:g} s",
        f"    before {sparkline([v for _, v in q.baseline_series], lo=lo, hi=hi)}",
        f"    after  {sparkline([v for _, v in q.after_series], lo=lo, hi=hi)}",
        f"    {q.reason}",
    ]
    return "\n".join(lines)


def render_report(task: TaskView) -> str:
    """The verdict of a verify task, per query, for people."""
    raw = task.outputs.get("report")
    if raw is None:
        why = task.error or f"the task is {task.state}"
        return f"verification {task.id}: no verdict ({why})"
    report = Report.model_validate_json(raw)
    head = f"verdict: {report.verdict}"
    if report.verdict == "inconclusive" and report.on_inconclusive == "pass_with_warning":
        head += " (passed with a warning, as the spec asks)"
    lines = [
        head,
        f"provider: {report.provider}",
        f"baseline: {fmt.timestamp(report.baseline_start)} .. {fmt.timestamp(report.baseline_end)}",
        f"after:    {fmt.timestamp(report.analysis_start)} .. {fmt.timestamp(report.analysis_end)}",
        "queries:",
        *(_query_text(q) for q in report.queries),
    ]
    return "\n".join(lines)


async def cmd_verify_apply(ctx: Context, args: argparse.Namespace) -> int:
    file_name, spec = read_spec_file(args.file)
    name = args.name or file_name
    if not name:
        raise UsageError("name the verification: NAME, or name: in the file")
    view = await ctx.client.put_verification(name, VerificationPut(spec=spec))
    ctx.console.print(fmt.to_json(view) if ctx.json else f"{view.name} version {view.version}")
    return 0


async def cmd_verify_get_spec(ctx: Context, args: argparse.Namespace) -> int:
    view = await ctx.client.get_verification(args.name, args.version)
    ctx.console.print(fmt.to_json(view) if ctx.json else _spec_yaml(view))
    return 0


async def cmd_verify_list(ctx: Context, args: argparse.Namespace) -> int:
    views = await ctx.client.list_verifications()
    if ctx.json:
        ctx.console.print(fmt.to_json(VerificationList(verifications=views)))
    elif not views:
        ctx.console.note("no verifications")
    else:
        for v in views:
            queries = ", ".join(q.name for q in v.spec.queries)
            ctx.console.print(f"{v.name}\tversion {v.version}\t{v.spec.provider.url}\t{queries}")
    return 0


async def cmd_verify_delete(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.client.delete_verification(args.name)
    if not ctx.json:
        ctx.console.note(f"deleted verification {args.name}")
    return 0


async def cmd_verify_run(ctx: Context, args: argparse.Namespace) -> int:
    spec = None if args.spec is None else read_spec_file(args.spec)[1]
    try:
        body = VerifyRun(
            deployment=args.deployment,
            spec=spec,
            verification=args.verification,
            version=args.version,
            selectors=args.selector or [],
            timeout_s=args.timeout,
        )
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)[1]) from None
    task = await ctx.client.run_verification(body)
    if not args.quiet:
        ctx.console.note(f"[tether] verification task {task.id} submitted")
    final = await follow_task(
        ctx, task.id, state=task.state, quiet=args.quiet, cancel_on_interrupt=True
    )
    if final is None:
        return EXIT_INTERRUPTED
    ctx.console.print(fmt.to_json(final) if ctx.json else render_report(final))
    return exit_code_for(final)


async def cmd_verify_get(ctx: Context, args: argparse.Namespace) -> int:
    task = await ctx.client.get_task(args.task_id)
    if task.type != "verify":
        raise UsageError(f"task {task.id} is a {task.type} task, not a verification")
    ctx.console.print(fmt.to_json(task) if ctx.json else render_report(task))
    return 0


def add_verify_parsers(groups: Any, output: argparse.ArgumentParser) -> None:
    verify = groups.add_parser(
        "verify", help="judge deployments from your monitoring"
    ).add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    apply = verify.add_parser(
        "apply", parents=[output], help="create or change a verification from a YAML spec"
    )
    apply.add_argument("-f", "--file", type=Path, required=True, metavar="YAML")
    apply.add_argument("name", metavar="NAME", nargs="?")
    apply.set_defaults(handler=cmd_verify_apply)
    get_spec = verify.add_parser("get-spec", parents=[output], help="print a verification's spec")
    get_spec.add_argument("name", metavar="NAME")
    get_spec.add_argument("--version", type=int)
    get_spec.set_defaults(handler=cmd_verify_get_spec)
    verify.add_parser("list", parents=[output], help="list verifications").set_defaults(
        handler=cmd_verify_list
    )
    delete = verify.add_parser("delete", parents=[output], help="delete a verification")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=cmd_verify_delete)
    run = verify.add_parser(
        "run",
        parents=[output],
        help="verify a finished deployment task on a delegate; follow it, exit with its status",
    )
    run.add_argument("--deployment", required=True, metavar="TASK_ID")
    which = run.add_mutually_exclusive_group(required=True)
    which.add_argument("--spec", type=Path, metavar="YAML")
    which.add_argument("--verification", metavar="NAME")
    run.add_argument("--version", type=int, help="of the named verification (default latest)")
    run.add_argument("--selector", action="append", metavar="SEL", help="delegate selector")
    run.add_argument("--timeout", type=float, metavar="SECONDS")
    run.add_argument("-q", "--quiet", action="store_true", help="print only the verdict")
    run.set_defaults(handler=cmd_verify_run)
    get = verify.add_parser("get", parents=[output], help="a verification task's verdict")
    get.add_argument("task_id", metavar="TASK_ID")
    get.set_defaults(handler=cmd_verify_get)
