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
import io
import json
import os
import re
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import yaml
from pydantic import BaseModel
from rich.console import Console as RichConsole
from rich.spinner import Spinner as RichSpinner
from rich.table import Table
from rich.text import Text

from manager.schemas.tasks import DelegateView, LogEntry, TaskView, TokenScopeView, TokenView
from shared.protocol import CapabilityPayload, HttpPayload, ShellPayload, TaskState

__all__ = [
    "STATE_STYLES",
    "SYSTEM_PREFIX",
    "Console",
    "Spinner",
    "ago",
    "clean",
    "delegate_of",
    "delegate_table",
    "deployment_table",
    "duration",
    "exit_text",
    "json_line",
    "labels_text",
    "rfc3339",
    "scope_text",
    "styled",
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


# Keys whose numbers are moments (seconds since the epoch): RFC 3339 in --output json|yaml.
_TIME_KEYS = frozenset({"ts", "last_heartbeat", "since", "until"})


def _is_time_key(key: str) -> bool:
    return key in _TIME_KEYS or key.endswith("_at")


def rfc3339(ts: float) -> str:
    """``2026-11-22T10:00:00.250Z``: UTC, milliseconds."""
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _times_as_text(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: rfc3339(v)
            if _is_time_key(str(k)) and isinstance(v, int | float) and not isinstance(v, bool)
            else _times_as_text(v)
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [_times_as_text(v) for v in data]
    return data


def to_json(value: BaseModel | dict[str, Any]) -> str:
    """The document for --output json (or yaml: :class:`Console` turns it into YAML), with
    every moment in RFC 3339."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(_times_as_text(data), indent=2, ensure_ascii=False)


def json_line(value: BaseModel) -> str:
    """One event or log line of a stream (NDJSON), moments in RFC 3339."""
    return json.dumps(_times_as_text(value.model_dump(mode="json")), ensure_ascii=False)


def timestamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def ago(ts: float | None, now: float | None = None) -> str:
    """A moment as a table shows it: ``3m ago``, ``in 2h``; a date past two months."""
    if ts is None:
        return "-"
    delta = (time.time() if now is None else now) - ts
    size = abs(delta)
    if size < 1:
        return "just now"
    if size >= 60 * 86400:
        return timestamp(ts)[:10]
    unit, span = next((u, n) for u, n in _UNITS if size >= n)
    amount = f"{int(size // span)}{unit}"
    return f"{amount} ago" if delta > 0 else f"in {amount}"


_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def duration(task: TaskView) -> float | None:
    if task.started_at is None or task.finished_at is None:
        return None
    return max(0.0, task.finished_at - task.started_at)


def delegate_of(task: TaskView) -> str | None:
    """The name of the delegate that ran the last attempt, else its id."""
    if task.attempts:
        return task.attempts[-1].delegate_name or task.attempts[-1].delegate_id
    return task.delegate_id


# --- tables ------------------------------------------------------------------------------------

# The colour of a state wherever a table shows one (only on a colour terminal).
STATE_STYLES = {
    "succeeded": "green",
    "running": "cyan",
    "assigned": "cyan",
    "queued": "yellow",
    "failed": "red",
    "timed_out": "red",
    "expired": "red",
    "cancelled": "magenta",
    "connected": "green",
    "polling": "cyan",
    "disconnected": "red",
    "draining": "yellow",
    "enabled": "green",
    "disabled": "red",
    "active": "green",
    "invited": "yellow",
    "revoked": "red",
}


@dataclass
class Terminal:
    """How tables render: set from the stream they go to by :class:`Console`. Off a terminal
    (a pipe, a file, a test's buffer) a table is plain text of any width."""

    width: int | None = None
    color: bool = False


_terminal = Terminal()


def styled(text: object, style: str | None = None) -> Text:
    """A cell with a style of its own (a state's colour by default)."""
    value = clean(text)
    return Text(value, style=style or STATE_STYLES.get(value.split(" ")[0], ""))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A table as text: fitted to the terminal's width (cells cut with …), coloured where a
    cell is a state; plain and whole when the output is not a terminal."""
    cells = [[c if isinstance(c, Text) else styled(c) for c in row] for row in rows]
    widths = _fit(
        [
            max([len(h), *(c.cell_len for c in col)])
            for h, col in zip(headers, _columns(headers, cells), strict=True)
        ],
        [len(h) for h in headers],
        _terminal.width,
    )
    grid = Table(
        box=None, show_edge=False, pad_edge=False, header_style="bold", padding=(0, 2, 0, 0)
    )
    for header, width in zip(headers, widths, strict=True):
        grid.add_column(header, no_wrap=True, overflow="ellipsis", width=width)
    for row in cells:
        grid.add_row(*row)
    buffer = io.StringIO()
    render = RichConsole(
        file=buffer,
        width=_terminal.width or 100_000,
        force_terminal=_terminal.color,
        no_color=not _terminal.color,
        color_system="standard" if _terminal.color else None,
        highlight=False,
        emoji=False,
        markup=False,
    )
    render.print(grid, crop=True, soft_wrap=False)
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").split("\n"))


def _columns(headers: Sequence[str], cells: list[list[Text]]) -> list[list[Text]]:
    return [[row[i] for row in cells] for i in range(len(headers))]


# A column is never cut below its header or this many characters (ids stay recognisable).
_MIN_COLUMN = 8
_GAP = 2


def _fit(natural: list[int], headers: list[int], width: int | None) -> list[int]:
    """Column widths within ``width``: the widest column gives up a character at a time, so
    short columns (states, times) stay whole and long ones (ids, scopes) are cut first."""
    widths = list(natural)
    if width is None:
        return widths
    floors = [min(n, max(h, _MIN_COLUMN)) for n, h in zip(natural, headers, strict=True)]
    budget = width - _GAP * (len(widths) - 1)
    while sum(widths) > budget:
        room = [w - f for w, f in zip(widths, floors, strict=True)]
        widest = max(range(len(widths)), key=lambda i: (room[i] > 0, widths[i]))
        if room[widest] <= 0:
            break  # every column at its floor: the terminal crops what is left
        widths[widest] -= 1
    return widths


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


def exit_text(task: TaskView) -> str:
    """The EXIT column: the code; ``cancelled`` (not the -15 of the SIGTERM that did it);
    a signal by name (``SIGKILL``) for a process killed otherwise."""
    if task.state is TaskState.CANCELLED:
        return "cancelled"
    code = task.exit_code
    if code is None:
        return "-"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return str(code)


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def task_details(task: TaskView) -> str:
    pairs: list[tuple[str, object]] = [("id", task.id)]
    if task.name:
        pairs.append(("name", task.name))
    pairs += [
        ("state", task.state.value + (" (cancel requested)" if task.cancel_requested else "")),
        ("type", task.type.value),
    ]
    if task.labels:
        pairs.append(("labels", labels_text(task.labels)))
    if task.app:
        pairs.append(("app", f"{task.app}/{task.env}"))
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
    if task.exit_code is not None or task.state is TaskState.CANCELLED:
        pairs.append(("exit code", exit_text(task)))
    if task.error and not _repeats_state(task):
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


def _repeats_state(task: TaskView) -> bool:
    """Whether the task's error only says again what its state and exit code say."""
    error = (task.error or "").strip()
    return (
        error == f"exit code {task.exit_code}"
        or (task.state is TaskState.TIMED_OUT and error.startswith("timed out after"))
        or (task.state is TaskState.CANCELLED and error in ("cancelled", "canceled"))
    )


def task_table(tasks: Sequence[TaskView]) -> str:
    return table(
        ["NAME", "ID", "STATE", "DELEGATE", "CREATED", "DURATION", "EXIT", "LABELS"],
        (
            [
                t.name or "-",
                t.id,
                t.state.value,
                delegate_of(t) or "-",
                ago(t.created_at),
                f"{d:.2f}s" if (d := duration(t)) is not None else "-",
                exit_text(t),
                labels_text(t.labels),
            ]
            for t in tasks
        ),
    )


def deployment_table(tasks: Sequence[TaskView]) -> str:
    return table(
        ["WHEN", "APP", "ENV", "SERVICE", "VERSION", "STATE", "TASK"],
        (
            [
                ago(t.created_at),
                t.app or "-",
                t.env or (t.deployment.environment if t.deployment else "-"),
                t.deployment.service if t.deployment else "-",
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
            "NAME",
            "ID",
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
                d.name,
                d.id,
                d.hostname,
                styled(d.status + (" (draining)" if d.draining else "")),
                f"{len(d.running)}/{d.capacity}",
                ",".join(d.selectors) or "-",
                d.isolation,
                d.version + (" (outdated)" if d.outdated else ""),
                ago(d.last_heartbeat),
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
                ago(t.created_at),
                ago(t.revoked_at),
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
            head = f"failed with exit code {exit_text(task)}"
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
    name = f" ({task.name})" if task.name else ""
    line = f"task {task.id}{name} {head}{where}"
    # An error that only repeats the state says nothing new.
    if task.error and not _repeats_state(task):
        line += f": {task.error}"
    lines = [clean(line)]
    lines += [clean(f"  {key}={value}") for key, value in sorted(task.outputs.items())]
    return "\n".join(lines)


# --- the terminal ------------------------------------------------------------------------------


def _width(stream: TextIO, env: Mapping[str, str]) -> int:
    if env.get("COLUMNS", "").isdigit():
        return int(env["COLUMNS"])
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 80


@dataclass
class Console:
    """Where output goes. ``output`` is the --output format: in ``yaml`` a JSON document
    printed is written as YAML. Tables fit ``out``'s width and are coloured when ``out`` is
    a terminal and the environment has no ``NO_COLOR`` (https://no-color.org)."""

    out: TextIO
    err: TextIO
    output: str = "text"

    def configure(self, env: Mapping[str, str], output: str = "text") -> None:
        self.output = output
        tty = _is_tty(self.out)
        _terminal.width = _width(self.out, env) if tty else None
        _terminal.color = tty and not env.get("NO_COLOR") and env.get("TERM") != "dumb"

    @property
    def interactive(self) -> bool:
        return _is_tty(self.err)

    @property
    def color(self) -> bool:
        return _terminal.color

    def print(self, text: str) -> None:
        if self.output == "yaml" and text[:1] in ("{", "["):
            text = _as_yaml(text)
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def log(self, entry: LogEntry, *, timestamps: bool = False) -> None:
        to = self.out if entry.stream == "stdout" else self.err
        tty = _is_tty(to)
        stamp = f"{rfc3339(entry.ts)} " if timestamps else ""
        if entry.data is not None and not tty:
            prefix = SYSTEM_PREFIX.encode() if entry.stream == "system" else b""
            _write_bytes(to, stamp.encode() + prefix + entry.raw + b"\n")
            return
        text = entry.text if entry.data is None else entry.raw.decode("utf-8", "backslashreplace")
        text = text.removesuffix("\n")
        if tty:
            text = visible(text)
        if entry.stream == "stdout":
            self.print(stamp + text)
        elif entry.stream == "stderr":
            self.note(stamp + text)
        else:
            self.note(stamp + SYSTEM_PREFIX + text)


def _as_yaml(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, explicit_start=True).rstrip()


class Spinner:
    """A status line on a terminal, redrawn in place until stopped: rich's spinner, drawn
    from the event loop (no thread of its own), so it can be cleared before a log line."""

    def __init__(self, stream: TextIO, text: str, *, interval: float = 0.1) -> None:
        self._stream = stream
        self._text = text
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._since = 0.0
        self._spinner = RichSpinner("dots", style="cyan")
        self._render = RichConsole(
            file=io.StringIO(),
            force_terminal=True,
            no_color=not _terminal.color,
            color_system="standard" if _terminal.color else None,
            width=_width(stream, os.environ),
            highlight=False,
            markup=False,
        )

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
            self._draw()

    def _draw(self) -> None:
        waited = time.monotonic() - self._since
        self._spinner.update(text=Text(f"{self._text} {waited:.0f}s"))
        frame = self._spinner.render(waited)
        with self._render.capture() as captured:
            self._render.print(frame, end="", crop=True, soft_wrap=False)
        self._stream.write(f"\r{captured.get()}\x1b[K")
        self._stream.flush()
