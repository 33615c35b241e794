"""Output of the ``tether`` command: text and JSON renderings of the API models, and the
terminal they go to (stdout/stderr, the "waiting for a delegate" spinner).

Values that come from the server are stripped of control characters before they reach a
table, so a task name or error text cannot move the cursor or recolour the terminal. Log
lines are the task's own output, which a task's code (or whatever it prints) controls: on a
terminal their control characters are shown as visible escapes (``\\x1b``), so no output can
rewrite the screen, retitle the window or hide a line; written to a file or a pipe, and in
``--output json``, they stay the data they are.

A line whose bytes are not UTF-8 text (invalid UTF-8, a NUL) is written to a file or a pipe
as those bytes exactly; on a terminal each byte that is not text shows as ``\\xNN``; in
``--output json`` the entry's ``data`` has them in base64 (and ``text`` shows U+FFFD).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pydantic import BaseModel

from manager.schemas.tasks import DelegateView, LogEntry, TaskView, TokenScopeView, TokenView
from shared.protocol import CapabilityPayload, HttpPayload, ShellPayload, TaskState

__all__ = [
    "SYSTEM_PREFIX",
    "Console",
    "Spinner",
    "delegate_of",
    "delegate_table",
    "duration",
    "summary_line",
    "table",
    "task_details",
    "task_table",
    "timestamp",
    "to_json",
    "token_table",
    "visible",
]

# Lines the manager or delegate write about a task (not its own output) are marked so.
SYSTEM_PREFIX = "[tether] "

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    return _CONTROL.sub(" ", str(value))


# Every C0 control but tab and newline, DEL, and every C1 control (ESC and CSI among them).
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """``text`` with each control character (but tab and newline) written as ``\\xNN``."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _write_bytes(stream: TextIO, data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        # A stream of text only (a test's StringIO): the bytes as the closest text.
        stream.write(data.decode("utf-8", "surrogateescape"))
        stream.flush()
        return
    stream.flush()  # what was written as text goes first
    buffer.write(data)
    buffer.flush()


def to_json(value: BaseModel | dict[str, Any]) -> str:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, indent=2, ensure_ascii=False)


def timestamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def duration(task: TaskView) -> float | None:
    if task.started_at is None or task.finished_at is None:
        return None
    return max(0.0, task.finished_at - task.started_at)


def delegate_of(task: TaskView) -> str | None:
    """The name of the delegate that ran the last attempt, else its id."""
    if task.attempts:
        return task.attempts[-1].delegate_name or task.attempts[-1].delegate_id
    return task.delegate_id


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[clean(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _key_values(pairs: Iterable[tuple[str, object]]) -> str:
    items = list(pairs)
    width = max(len(k) for k, _ in items) + 1
    out: list[str] = []
    for key, value in items:
        text = str(value)
        if "\n" in text:
            # A script: keep its lines, indented under the key.
            lines = [clean(line) for line in text.splitlines()]
            out.append(f"{key + ':':<{width}}")
            out.extend(f"    {line}" for line in lines)
        else:
            out.append(f"{key + ':':<{width}} {clean(text)}".rstrip())
    return "\n".join(out)


def task_details(task: TaskView) -> str:
    pairs: list[tuple[str, object]] = [
        ("id", task.id),
        ("state", task.state.value + (" (cancel requested)" if task.cancel_requested else "")),
        ("type", task.type.value),
    ]
    payload = task.payload
    if isinstance(payload, ShellPayload):
        pairs.append(("interpreter", payload.interpreter))
        pairs.append(("script", payload.script))
        if payload.env:
            pairs.append(("env", ", ".join(sorted(payload.env))))
        if payload.working_dir:
            pairs.append(("working dir", payload.working_dir))
    elif isinstance(payload, HttpPayload):
        pairs.append(("request", f"{payload.method} {payload.url}"))
    elif isinstance(payload, CapabilityPayload):
        pairs.append(("target", payload.target))
    pairs += [
        ("selectors", ", ".join(task.selectors) or "-"),
        ("secret env", ", ".join(task.secret_env_names) or "-"),
        ("delegate", delegate_of(task) or "-"),
        ("attempt", f"{task.attempt} of {task.max_attempts}"),
        ("created", timestamp(task.created_at)),
        ("started", timestamp(task.started_at)),
        ("finished", timestamp(task.finished_at)),
    ]
    took = duration(task)
    if took is not None:
        pairs.append(("duration", f"{took:.2f}s"))
    pairs.append(("timeout", f"{task.timeout_s:g}s (queue {task.queue_timeout_s:g}s)"))
    if task.exit_code is not None:
        pairs.append(("exit code", task.exit_code))
    if task.error:
        pairs.append(("error", task.error))
    if task.idempotency_key:
        pairs.append(("idempotency key", task.idempotency_key))
    if task.deployment is not None:
        dep = task.deployment
        extra = " ".join(x for x in (dep.artifact, dep.version) if x)
        pairs.append(("deployment", f"{dep.service} to {dep.environment} {extra}".rstrip()))
    for key, value in sorted(task.outputs.items()):
        pairs.append((f"output {key}", value))
    return _key_values(pairs)


def task_table(tasks: Sequence[TaskView]) -> str:
    return table(
        ["ID", "STATE", "TYPE", "DELEGATE", "CREATED", "DURATION", "EXIT"],
        (
            [
                t.id,
                t.state.value,
                t.type.value,
                delegate_of(t) or "-",
                timestamp(t.created_at),
                f"{d:.2f}s" if (d := duration(t)) is not None else "-",
                "-" if t.exit_code is None else t.exit_code,
            ]
            for t in tasks
        ),
    )


def deployment_table(tasks: Sequence[TaskView]) -> str:
    return table(
        ["WHEN", "APP", "ENV", "SERVICE", "TO", "VERSION", "STATE", "TASK"],
        (
            [
                timestamp(t.created_at),
                t.app or "-",
                t.env or "-",
                t.deployment.service if t.deployment else "-",
                t.deployment.environment if t.deployment else "-",
                (t.deployment.version if t.deployment else None) or "-",
                t.state.value,
                t.id,
            ]
            for t in tasks
        ),
    )


def delegate_table(delegates: Sequence[DelegateView]) -> str:
    return table(
        [
            "ID",
            "NAME",
            "HOST",
            "STATUS",
            "RUNNING",
            "SELECTORS",
            "ISOLATION",
            "VERSION",
            "LAST HEARTBEAT",
            "TOKEN",
            "SCOPE",
        ],
        (
            [
                d.id,
                d.name,
                d.hostname,
                d.status + (" (draining)" if d.draining else ""),
                f"{len(d.running)}/{d.capacity}",
                ",".join(d.selectors) or "-",
                d.isolation,
                d.version + (" (outdated)" if d.outdated else ""),
                timestamp(d.last_heartbeat),
                d.token or "-",
                "-" if d.scope is None else scope_text(d.scope),
            ]
            for d in delegates
        ),
    )


def scope_text(scope: TokenScopeView) -> str:
    """e.g. ``checkout/prod; selectors prod-pool`` or ``account-wide; any selector``."""
    places = [*scope.apps, *scope.envs, *(f"type {t}" for t in scope.env_types)]
    where = ", ".join(places) if places else "account-wide"
    claims = (
        "any selector"
        if scope.selectors is None
        else "selectors " + (",".join(scope.selectors) or "(none)")
    )
    return f"{where}; {claims}"


def token_table(tokens: Sequence[TokenView]) -> str:
    return table(
        ["NAME", "ID", "CREATED", "REVOKED", "SCOPE"],
        (
            [
                t.name,
                t.id,
                timestamp(t.created_at),
                timestamp(t.revoked_at),
                "account-wide; any selector" if t.scope is None else scope_text(t.scope),
            ]
            for t in tokens
        ),
    )


def summary_line(task: TaskView) -> str:
    """One line on how the task ended, e.g. ``task t_1 succeeded in 0.42s on build-01``;
    then its output variables, one per line."""
    took = duration(task)
    where = f" on {delegate_of(task)}" if delegate_of(task) else ""
    match task.state:
        case TaskState.SUCCEEDED:
            head = "succeeded" + (f" in {took:.2f}s" if took is not None else "")
        case TaskState.FAILED if task.exit_code is not None:
            head = f"failed with exit code {task.exit_code}"
            head += f" after {took:.2f}s" if took is not None else ""
        case TaskState.FAILED:
            head = "failed"
        case TaskState.CANCELLED:
            head = "was cancelled"
        case TaskState.TIMED_OUT:
            head = f"timed out after {task.timeout_s:g}s"
        case TaskState.EXPIRED:
            head = f"expired after {task.queue_timeout_s:g}s in the queue"
        case _:
            head = f"is {task.state.value}"
    line = f"task {task.id} {head}{where}"
    # An error that only repeats the exit code says nothing new.
    if task.error and task.error != f"exit code {task.exit_code}":
        line += f": {task.error}"
    lines = [clean(line)]
    lines += [clean(f"  {key}={value}") for key, value in sorted(task.outputs.items())]
    return "\n".join(lines)


# --- the terminal ------------------------------------------------------------------------------


@dataclass
class Console:
    out: TextIO
    err: TextIO

    @property
    def interactive(self) -> bool:
        return _is_tty(self.err)

    def print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def log(self, entry: LogEntry) -> None:
        to = self.out if entry.stream == "stdout" else self.err
        tty = _is_tty(to)
        if entry.data is not None and not tty:
            prefix = SYSTEM_PREFIX.encode() if entry.stream == "system" else b""
            _write_bytes(to, prefix + entry.raw + b"\n")
            return
        text = entry.text if entry.data is None else entry.raw.decode("utf-8", "backslashreplace")
        text = text.removesuffix("\n")
        if tty:
            text = visible(text)
        if entry.stream == "stdout":
            self.print(text)
        elif entry.stream == "stderr":
            self.note(text)
        else:
            self.note(SYSTEM_PREFIX + text)


class Spinner:
    """A status line on a terminal, redrawn in place until stopped."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: TextIO, text: str, *, interval: float = 0.1) -> None:
        self._stream = stream
        self._text = text
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._frame = 0
        self._since = 0.0

    @property
    def active(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._since = time.monotonic()
            self._draw()
            self._task = asyncio.create_task(self._spin())

    def clear(self) -> None:
        """Blank the line so something else may be printed; the next tick redraws it."""
        if self._task is not None:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            await asyncio.wait([task])
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    async def _spin(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._frame += 1
            self._draw()

    def _draw(self) -> None:
        frame = self.FRAMES[self._frame % len(self.FRAMES)]
        waited = time.monotonic() - self._since
        self._stream.write(f"\r{frame} {self._text} {waited:.0f}s\x1b[K")
        self._stream.flush()
