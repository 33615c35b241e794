"""The ``tether task`` commands, and following a task's log until it ends.

``task run`` and ``task logs --follow`` exit like the task (see :func:`exit_code_for`);
Ctrl-C while following sets :attr:`Context.interrupted` (a second one interrupts as usual).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
from collections.abc import Iterator

from manager.client import (
    ConnectionFailed,
    EndEvent,
    FollowEvent,
    LogEvent,
    StateEvent,
    TetherClientError,
)
from manager.client.cli import output as fmt
from manager.client.cli.context import (
    EXIT_ERROR,
    EXIT_EXPIRED,
    EXIT_INTERRUPTED,
    EXIT_TIMED_OUT,
    Context,
    UsageError,
)
from manager.client.cli.output import SYSTEM_PREFIX, Spinner
from manager.client.cli.refs import resolve_task
from manager.schemas.tasks import LogEntry, TaskList, TaskView
from shared.protocol import FINAL_STATES, TaskState

__all__ = [
    "cmd_deployments",
    "cmd_task_cancel",
    "cmd_task_get",
    "cmd_task_list",
    "cmd_task_logs",
    "cmd_task_run",
    "cmd_task_submit",
    "exit_code_for",
    "follow_task",
]


def parse_labels(values: list[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` words as a dict."""
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label expects KEY=VALUE; {item!r} has no '='")
        if key in labels:
            raise UsageError(f"--label: {key} is given twice")
        labels[key] = value
    return labels


def exit_code_for(task: TaskView) -> int:
    """The exit status of ``tether task run`` for a task in its final state."""
    match task.state:
        case TaskState.SUCCEEDED:
            return 0
        case TaskState.CANCELLED:
            return EXIT_INTERRUPTED
        case TaskState.TIMED_OUT:
            return EXIT_TIMED_OUT
        case TaskState.EXPIRED:
            return EXIT_EXPIRED
        case TaskState.FAILED if task.exit_code is not None:
            code = task.exit_code
            if code < 0:
                code = 128 - code  # killed by signal -code, as a shell reports it
            return min(max(code, 1), 255)
        case _:
            return EXIT_ERROR  # failed without a process status, e.g. delegate_lost


# --- following a task ----------------------------------------------------------------------


async def follow_task(
    ctx: Context,
    task_id: str,
    *,
    state: TaskState | None,
    quiet: bool,
    cancel_on_interrupt: bool,
    after: str | None = None,
) -> TaskView | None:
    """Print the task's log as it comes (after the cursor ``after``); the final task, or
    None after Ctrl-C."""
    spinner = None
    if ctx.console.interactive and not quiet:
        spinner = Spinner(ctx.console.err, "waiting for a delegate…")
    if state is TaskState.QUEUED and spinner is not None:
        spinner.start()
    follow = asyncio.create_task(_consume(ctx, task_id, spinner, after))
    interrupt = asyncio.create_task(ctx.interrupted.wait())
    try:
        with _sigint_sets(ctx.interrupted, enabled=ctx.handle_signals):
            await asyncio.wait({follow, interrupt}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        follow.cancel()
        interrupt.cancel()
        await asyncio.wait({follow, interrupt})
        if spinner is not None:
            await spinner.stop()
    if not follow.cancelled():
        return follow.result()
    if cancel_on_interrupt:
        ctx.console.note(f"{SYSTEM_PREFIX}interrupted: cancelling task {task_id}")
        try:
            await ctx.client.cancel_task(task_id)
        except TetherClientError as exc:
            ctx.console.note(f"error: could not cancel task {task_id}: {exc}")
    return None


async def _consume(
    ctx: Context, task_id: str, spinner: Spinner | None, after: str | None = None
) -> TaskView:
    async with contextlib.aclosing(ctx.client.follow_logs(task_id, after)) as events:
        async for event in events:
            await _show(ctx, event, spinner)
            if isinstance(event, EndEvent):
                return event.task
    return await ctx.client.get_task(task_id)


async def _show(ctx: Context, event: FollowEvent, spinner: Spinner | None) -> None:
    if spinner is not None:
        if isinstance(event, StateEvent) and event.state is TaskState.QUEUED:
            spinner.start()
        elif isinstance(event, StateEvent | EndEvent):
            await spinner.stop()
        else:
            spinner.clear()
    if ctx.json:
        ctx.console.print(fmt.json_line(event))
    elif isinstance(event, LogEvent):
        ctx.console.log(event.line, timestamps=ctx.timestamps)


@contextlib.contextmanager
def _sigint_sets(event: asyncio.Event, *, enabled: bool) -> Iterator[None]:
    """While following, Ctrl-C sets ``event``; a second Ctrl-C interrupts as usual."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGINT)
    installed = False

    def restore() -> None:
        nonlocal installed
        if installed:
            installed = False
            loop.remove_signal_handler(signal.SIGINT)
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def on_sigint() -> None:
        event.set()
        restore()

    if enabled:
        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            installed = True
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no signals here: Ctrl-C stays plain
    try:
        yield
    finally:
        restore()


# --- commands ------------------------------------------------------------------------------


async def _warn_unmatched(ctx: Context, task: TaskView) -> None:
    """Say so when no connected delegate has every selector the task asks for (it would
    wait in the queue until one comes). A hint only: a delegate may connect meanwhile."""
    try:
        delegates = await ctx.client.list_delegates()
    except TetherClientError:
        return  # the caller may not list delegates (or the call failed): no hint
    live = [d for d in delegates if d.status != "disconnected" and not d.draining]
    want = set(task.selectors)
    if any(want <= {*d.selectors, d.name} for d in live):
        return
    asked = ", ".join(sorted(want)) or "no selectors"
    ctx.console.note(
        f"{SYSTEM_PREFIX}warning: no connected delegate matches {asked} "
        f"({len(live)} connected); the task waits up to {task.queue_timeout_s:g}s for one"
    )


async def cmd_task_run(ctx: Context, args: argparse.Namespace) -> int:
    task = await ctx.client.submit_task(args.submit)
    if not args.quiet:
        ctx.console.note(f"{SYSTEM_PREFIX}task {task.id} submitted")
        if task.state is TaskState.QUEUED:
            await _warn_unmatched(ctx, task)
    try:
        final = await follow_task(
            ctx, task.id, state=task.state, quiet=args.quiet, cancel_on_interrupt=True
        )
    except ConnectionFailed as exc:
        raise ConnectionFailed(
            f"{exc.message}. The task goes on; follow it with: tether task logs {task.id} --follow",
            "stream",
        ) from exc
    if final is None:
        return EXIT_INTERRUPTED
    if not args.quiet:
        ctx.console.note(fmt.summary_line(final))
    return exit_code_for(final)


async def cmd_task_submit(ctx: Context, args: argparse.Namespace) -> int:
    wait = getattr(args, "wait", None)
    task = await ctx.client.submit_task(args.submit, wait=wait)
    ctx.console.print(fmt.to_json(task) if ctx.json else task.id)
    if wait is None:
        return 0
    if task.state not in FINAL_STATES:
        return EXIT_TIMED_OUT  # as timeout(1): the wait ran out; the task goes on
    if not ctx.json:
        ctx.console.note(fmt.summary_line(task))
    return exit_code_for(task)


async def cmd_task_get(ctx: Context, args: argparse.Namespace) -> int:
    task = await resolve_task(ctx, args.task_id)
    ctx.console.print(fmt.to_json(task) if ctx.json else fmt.task_details(task))
    return 0


async def cmd_task_list(ctx: Context, args: argparse.Namespace) -> int:
    tasks = await ctx.client.list_tasks(
        state=args.state,
        delegate=args.delegate,
        since=args.since,
        until=args.until,
        limit=args.limit,
        app=args.app,
        env=args.app_env,
        name=args.name,
        labels=parse_labels(args.label),
    )
    if ctx.json:
        ctx.console.print(fmt.to_json(TaskList(tasks=tasks)))
    elif tasks:
        ctx.console.print(fmt.task_table(tasks))
    else:
        ctx.console.note("no tasks")
    return 0


async def cmd_deployments(ctx: Context, args: argparse.Namespace) -> int:
    tasks = await ctx.client.list_deployments(
        app=args.app,
        env=args.app_env,
        service=args.service,
        status=args.status,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    if ctx.json:
        ctx.console.print(fmt.to_json(TaskList(tasks=tasks)))
    elif tasks:
        ctx.console.print(fmt.deployment_table(tasks))
    else:
        # The usual surprise: a task counts only when it names the service it deploys.
        ctx.console.note(
            "no deployments (a task is one when run with --deploy-service, e.g. "
            "tether task run --app APP --app-env ENV --deploy-service SERVICE -- ...)"
        )
    return 0


async def cmd_task_logs(ctx: Context, args: argparse.Namespace) -> int:
    task_id = (await resolve_task(ctx, args.task_id)).id
    ctx.timestamps = args.timestamps
    cursor: str | None = None
    # --tail N: read to the end keeping the last N lines (the API pages forwards only).
    tail: collections.deque[LogEntry] | None = None
    if args.tail is not None:
        tail = collections.deque(maxlen=args.tail)
    while True:
        page = await ctx.client.get_logs(task_id, after=cursor)
        for entry in page.lines:
            if tail is not None:
                tail.append(entry)
            else:
                _print_entry(ctx, entry)
        if not page.lines or page.cursor == cursor:
            break
        cursor = page.cursor
    for entry in tail or ():
        _print_entry(ctx, entry)
    if not args.follow:
        return 0
    # Go on from where the pages ended: no line twice.
    final = await follow_task(
        ctx, task_id, state=None, quiet=False, cancel_on_interrupt=False, after=cursor or None
    )
    return EXIT_INTERRUPTED if final is None else exit_code_for(final)


def _print_entry(ctx: Context, entry: LogEntry) -> None:
    if ctx.json:
        ctx.console.print(fmt.json_line(entry))
    else:
        ctx.console.log(entry, timestamps=ctx.timestamps)


async def cmd_task_cancel(ctx: Context, args: argparse.Namespace) -> int:
    task = await ctx.client.cancel_task((await resolve_task(ctx, args.task_id)).id)
    if ctx.json:
        ctx.console.print(fmt.to_json(task))
    elif task.state in FINAL_STATES:
        ctx.console.print(f"task {task.id} already ended: {task.state.value}")
    else:
        ctx.console.print(f"cancel requested for task {task.id} ({task.state.value})")
    return 0
