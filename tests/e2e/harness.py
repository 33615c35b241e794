"""Real processes on loopback: start the actual commands, and wait on what they print.

Every wait here is on an event a process reports (a JSON log line, a printed URL, an exit),
never a sleep. Timings are scaled with ``--time-scale`` so heartbeats and leases run in
tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
# Manager and delegate timings in tests: heartbeat 0.5 s, lost after 1.5 s.
TIME_SCALE = 0.05
# A manager's arguments for the production timings: a 30 s lease, 45 s of grace after a
# start. Tests marked ``production_leases`` run their managers so (Cluster.manager_args)
# while the delegates keep the harness's fast timings for what is theirs (reconnects, the
# spool's retries; the heartbeat interval they take from the manager): a test whose path
# crosses a manager restart or an outage cannot lose a lease on the way, however loaded the
# machine. At the harness's scale a lease is 1.5 s, less than a loaded machine may take to
# start a process.
PRODUCTION_LEASES = ("--time-scale", "1")
WAIT = 30.0
# A process's start (a manager's imports, migrations, keys and certificate; a command run
# to its end) on a machine loaded by other work: a timeout, not a pace, so a generous one
# costs nothing.
START_WAIT = 120.0


class Proc:
    """A child process whose output lines are collected and can be waited for."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []

    async def start(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._pumps = [
            asyncio.create_task(self._pump(self.proc.stdout, self.stdout)),
            asyncio.create_task(self._pump(self.proc.stderr, self.stderr)),
        ]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def _pump(self, reader: asyncio.StreamReader, into: list[str]) -> None:
        # TETHER_TEST_OUTPUT=DIR keeps every child's output there too, one file per process
        # (for reading a failed soak or fault run after the fact).
        keep = os.environ.get("TETHER_TEST_OUTPUT")
        path = None if not keep else Path(keep) / f"{self.name}-{self.pid}.log"
        while line := await reader.readline():
            into.append(line.decode(errors="replace").rstrip("\n"))
            if path is not None:
                with path.open("ab") as f:
                    f.write(line)
            self._changed.set()
        self._changed.set()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    async def wait_until(self, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    result = check()
                    if result:
                        return result
                    if (
                        self.proc is not None
                        and self.proc.returncode is not None
                        and all(p.done() for p in self._pumps)
                    ):
                        code = self.proc.returncode
                        raise AssertionError(
                            f"{self.name} exited ({code}) before {what}\n{self.tail()}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: timed out waiting for {what}\n{self.tail()}"
            ) from None

    async def wait_event(
        self, event: str, timeout: float = WAIT, after: int = 0, **fields: Any
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            for e in self.events()[after:]:
                if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()):
                    return e
            return None

        return await self.wait_until(check, f"event {event!r} {fields}", timeout)  # type: ignore[no-any-return]

    async def wait_stdout(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        rx = re.compile(pattern)

        def check() -> re.Match[str] | None:
            return next((m for line in self.stdout if (m := rx.search(line))), None)

        return await self.wait_until(check, f"stdout /{pattern}/", timeout)  # type: ignore[no-any-return]

    async def wait_exit(self, timeout: float = WAIT) -> int:
        assert self.proc is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await asyncio.gather(*self._pumps)
        return code

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            return await self.wait_exit(timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.wait_exit(timeout)

    def tail(self, n: int = 30) -> str:
        return "\n".join(
            [f"[{self.name} stdout] {s}" for s in self.stdout[-n:]]
            + [f"[{self.name} stderr] {s}" for s in self.stderr[-n:]]
        )


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        return self.stdout.strip().splitlines()[-1]


@dataclass
class Cluster:
    root: Path
    procs: list[Proc] = field(default_factory=list)
    manager: Proc | None = None
    url: str = ""
    data_dir: Path = Path()
    # postgresql://... to run the manager on PostgreSQL instead of SQLite in the data dir.
    database: str | None = None
    # Every timing of the manager and the delegates it starts from now on, scaled.
    time_scale: float = TIME_SCALE
    # Arguments every start of the manager gets (PRODUCTION_LEASES, say); a start's own
    # come after, and win.
    manager_args: tuple[str, ...] = ()

    def store_args(self) -> list[str]:
        return ["--database", self.database] if self.database else []

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin-api-key").read_text().strip()

    async def start_manager(self, *extra: str, port: int = 0) -> Proc:
        self.data_dir = self.root / "manager"
        proc = Proc(
            "manager",
            [
                str(BIN / "tether-manager"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--time-scale",
                str(self.time_scale),
                "--log-format",
                "json",
                *self.store_args(),
                *self.manager_args,
                *extra,
            ],
        )
        await proc.start()
        self.procs.append(proc)
        match = await proc.wait_stdout(r"listening on (https://\S+)", timeout=START_WAIT)
        self.url = match.group(1)
        self.manager = proc
        return proc

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def restart_manager(self, sig: int = signal.SIGTERM) -> Proc:
        assert self.manager is not None
        await self.manager.stop(sig)
        return await self.start_manager(port=self.port)

    async def run(
        self,
        *argv: str,
        env: Mapping[str, str] | None = None,
        timeout: float = START_WAIT,
        stdin: bytes | None = None,
    ) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate(stdin)
        except TimeoutError:
            proc.kill()
            out, err = await proc.communicate()
            raise AssertionError(f"{argv} timed out\n{out.decode()}\n{err.decode()}") from None
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    async def token(self, name: str) -> str:
        res = await self.run(
            str(BIN / "tether-manager"),
            "token",
            "create",
            name,
            "--data-dir",
            str(self.data_dir),
            *self.store_args(),
        )
        assert res.code == 0, res.stderr
        return res.last_line

    def cli_env(self) -> dict[str, str]:
        return {
            "TETHER_MANAGER_URL": self.url,
            "TETHER_CA_FILE": str(self.ca_file),
            "TETHER_API_KEY": self.admin_key,
        }

    async def tether(self, *args: str, timeout: float = START_WAIT) -> Result:
        return await self.run(str(BIN / "tether"), *args, env=self.cli_env(), timeout=timeout)

    async def start_delegate(
        self,
        name: str,
        *selectors: str,
        token: str | None = None,
        url: str | None = None,
        wait_mode: str | None = "stream",
        extra: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        shared_user: bool = True,
    ) -> Proc:
        """``shared_user``: tasks run as the test's own user (no task users exist here);
        tests/e2e/test_isolation.py starts delegates that switch users."""
        token = token or await self.token(name)
        argv = [
            str(BIN / "tether-delegate"),
            "run",
            "--manager-url",
            url or self.url,
            "--ca-file",
            str(self.ca_file),
            "--name",
            name,
            "--data-dir",
            str(self.root / f"delegate-{name}"),
            "--time-scale",
            str(self.time_scale),
            "--log-format",
            "json",
            *(("--shared-user",) if shared_user else ()),
            *extra,
        ]
        for s in selectors:
            argv += ["--selector", s]
        proc = Proc(f"delegate-{name}", argv, env={**(env or {}), "TETHER_TOKEN": token})
        await proc.start()
        self.procs.append(proc)
        if wait_mode is not None:
            await proc.wait_event("channel mode", mode=wait_mode)
        return proc

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await proc.stop(signal.SIGKILL if proc is not self.manager else signal.SIGTERM)
