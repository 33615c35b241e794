"""Helpers the fault tests share: reading tasks and logs through the REST API, waiting on
events (JSON log lines of the processes, a task's log stream), and speaking the delegate plane
as a delegate that was killed, to send what it would send late.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from manager.client import EndEvent, LogEvent, TetherClient
from shared import __version__
from shared.limits import Timings
from shared.protocol import (
    PROTOCOL_VERSION,
    LogBatch,
    LogLine,
    RegisterRequest,
    TaskResult,
    TaskType,
)
from shared.sealing import load_or_create_private_key, public_from_private, public_key_b64
from shared.tls import client_context
from tests.e2e.harness import TIME_SCALE, Cluster, Proc

__all__ = [
    "TIMINGS",
    "Impostor",
    "KnownBug",
    "client",
    "delegate_dir",
    "first_run_hangs",
    "known_bug",
    "log_entries",
    "numbered_lines_script",
    "task_view",
    "token",
    "wait_final",
    "wait_for",
    "wait_for_line",
]

Event = dict[str, Any]

# The timings every process of the harness runs with (heartbeat 0.5 s, lost after 1.5 s).
TIMINGS = Timings().scaled(TIME_SCALE)


class KnownBug(AssertionError):
    """An expectation that a known product bug breaks.

    Tests mark it ``xfail(strict=True, raises=KnownBug)``: a failure anywhere else in such a
    test (a setup step, a timeout) is still reported as a failure, not hidden as expected.
    """


def logged_at(event: dict[str, Any]) -> float:
    """When a process logged ``event``, on the wall clock (its own timestamp)."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def known_bug(holds: bool, message: str) -> None:
    if not holds:
        raise KnownBug(message)


def first_run_hangs(marker: Path, rerun: str = "echo rerun") -> str:
    """A task whose first run (noting its process group in ``marker``) hangs for a minute,
    while a rerun runs ``rerun`` and ends."""
    return (
        f"if mkdir {marker} 2>/dev/null; then echo $$ > {marker}/pgid; echo first-run;"
        f" sleep 60; else {rerun}; fi"
    )


def numbered_lines_script(count: int, every: float) -> str:
    """A task that prints ``line-1`` .. ``line-<count>``, one every ``every`` seconds."""
    return f"for i in $(seq 1 {count}); do echo line-$i; sleep {every}; done"


def client(c: Cluster) -> TetherClient:
    """The REST API as the admin. Reads go through it rather than the CLI: each CLI run
    costs a Python start, and these tests read a lot."""
    return TetherClient(c.url, api_key=c.admin_key, ca_file=c.ca_file)


async def token(c: Cluster, name: str) -> str:
    async with client(c) as api:
        return (await api.create_token(name)).token


async def task_view(c: Cluster, task_id: str) -> dict[str, Any]:
    """The task as ``tether task get --output json`` shows it (attempts included)."""
    async with client(c) as api:
        return (await api.get_task(task_id)).model_dump(mode="json")


async def log_entries(c: Cluster, task_id: str) -> list[dict[str, Any]]:
    """Every stored line of the task, in (attempt, seq) order, as the API returns them."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    async with client(c) as api:
        while True:
            page = await api.get_logs(task_id, after=cursor)
            out += [ln.model_dump(mode="json") for ln in page.lines]
            if not page.lines or page.cursor == cursor:
                return out
            cursor = page.cursor


async def wait_for_line(c: Cluster, task_id: str, text: str, timeout: float = 30) -> None:
    """Follow the task's log (straight from the manager) until a line ``text`` is stored."""
    try:
        async with (
            client(c) as api,
            asyncio.timeout(timeout),
            contextlib.aclosing(api.follow_logs(task_id)) as events,
        ):
            async for event in events:
                if isinstance(event, LogEvent) and event.line.text == text:
                    return
                if isinstance(event, EndEvent):
                    raise AssertionError(f"{task_id} ended before {text!r}: {event.task}")
    except TimeoutError:
        raise AssertionError(f"timed out waiting for line {text!r} of {task_id}") from None


async def wait_final(c: Cluster, task_id: str, timeout: float = 30) -> dict[str, Any]:
    """Follow the task (straight from the manager) until it is final; its view then."""
    try:
        async with (
            client(c) as api,
            asyncio.timeout(timeout),
            contextlib.aclosing(api.follow_logs(task_id)) as events,
        ):
            async for event in events:
                if isinstance(event, EndEvent):
                    return event.task.model_dump(mode="json")
    except TimeoutError:
        pass
    raise AssertionError(f"timed out waiting for {task_id} to end")


async def wait_for(
    proc: Proc, what: str, check: Callable[[Event], bool], *, after: int = 0, timeout: float = 30
) -> Event:
    """The first JSON log event of ``proc`` past index ``after`` for which ``check`` holds."""

    def find() -> Event | None:
        return next((e for e in proc.events()[after:] if check(e)), None)

    found: Event = await proc.wait_until(find, what, timeout)
    return found


def delegate_dir(c: Cluster, name: str) -> Path:
    return c.root / f"delegate-{name}"


@dataclass
class Impostor:
    """A killed delegate's identity (its token and its key file) used to send late messages.

    Registration by the same public key returns the same delegate id, so the manager sees
    exactly what the killed process would have sent had it come back after its lease ran out.
    """

    base: str
    ca_file: Path
    delegate_id: str
    credential: str

    @classmethod
    async def register(
        cls, c: Cluster, name: str, token: str, selectors: list[str] | None = None
    ) -> Impostor:
        key_file = delegate_dir(c, name) / "delegate.key"
        assert key_file.exists(), f"no key of a delegate {name} at {key_file}"
        key = load_or_create_private_key(key_file)
        req = RegisterRequest(
            name=name,
            hostname=socket.gethostname(),
            version=__version__,
            protocol_version=PROTOCOL_VERSION,
            selectors=selectors or [],
            capacity=4,
            task_types=list(TaskType),
            public_key=public_key_b64(public_from_private(key)),
        )
        status, body = await _post(
            c.url, c.ca_file, "/api/v1/delegate/register", token, req.model_dump_json()
        )
        assert status == 200, body
        return cls(c.url, c.ca_file, str(body["delegate_id"]), str(body["session_token"]))

    async def post_result(self, task_id: str, result: TaskResult) -> tuple[int, Event]:
        return await _post(
            self.base,
            self.ca_file,
            f"/api/v1/delegate/tasks/{task_id}/result",
            self.credential,
            result.model_dump_json(),
        )

    async def post_logs(self, task_id: str, attempt: int, texts: list[str]) -> tuple[int, Event]:
        # Sequence numbers far past anything the task wrote: a late batch adds new lines.
        lines = [
            LogLine(seq=10_000 + i, stream="stdout", ts=0.0, text=t) for i, t in enumerate(texts)
        ]
        return await _post(
            self.base,
            self.ca_file,
            f"/api/v1/delegate/tasks/{task_id}/logs",
            self.credential,
            LogBatch(attempt=attempt, lines=lines).model_dump_json(),
        )


async def _post(base: str, ca_file: Path, path: str, bearer: str, body: str) -> tuple[int, Event]:
    connector = aiohttp.TCPConnector(ssl=client_context(ca_file))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            base + path,
            data=body,
            headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
        ) as resp,
    ):
        data = await resp.json(content_type=None)
        assert isinstance(data, dict)
        return resp.status, data
