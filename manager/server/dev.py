"""``tether-manager dev``: a throwaway manager and one delegate, as ``vault server -dev``.

It stays in the foreground: a manager (``serve``) and one local delegate, each a real
process of its own, on a temporary data dir, with what to paste printed once both are up.
Ctrl-C or SIGTERM stops the delegate, then the manager, and removes the directory: nothing
of a dev run is kept. The delegate runs tasks as this user (``--shared-user``): it is for
trying things, not for isolation.

Nothing secret is printed: the admin API key is named by its file, as at a first start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DevError", "run_dev"]

DELEGATE_NAME = "dev-delegate"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 45.0


class DevError(Exception):
    """The dev cluster could not start; one line."""


async def _start(argv: Sequence[str], *, stdout: int | None) -> asyncio.subprocess.Process:
    # The children are this Python's modules, so a dev run uses the code it was started from.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # Their own process group: Ctrl-C reaches this process alone, which stops them in
        # order (a delegate that got Ctrl-C too would take this SIGTERM as a second signal
        # and cancel its running tasks).
        process_group=0,
    )


async def _stop(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _drain(stream: asyncio.StreamReader) -> None:
    # The manager's own first-start text is not this command's: read and drop it.
    while await stream.readline():
        pass


async def _manager_url(manager: asyncio.subprocess.Process) -> str:
    assert manager.stdout is not None
    async with asyncio.timeout(_START_TIMEOUT):
        while line := (await manager.stdout.readline()).decode():
            if line.startswith("tether-manager listening on "):
                return line.split()[-1]
    raise DevError("the manager exited before it listened (its errors are above)")


def _text(root: Path, url: str, data: Path) -> str:
    q = shlex.quote
    return "\n".join(
        [
            "",
            f"tether-manager dev: a manager at {url} and one delegate ({DELEGATE_NAME}),"
            f" all in {root}; Ctrl-C stops both and removes it.",
            "",
            "Paste into another shell:",
            "",
            f"    export TETHER_MANAGER_URL={q(url)}",
            f"    export TETHER_CA_FILE={q(str(data / 'tls' / 'ca.pem'))}",
            f"    export TETHER_API_KEY=$(cat {q(str(data / 'admin-api-key'))})",
            "",
            "then, signed in as the admin: tether whoami; tether task run -- echo hello",
            "(tasks run as this user: a dev delegate does not isolate them)",
            "",
        ]
    )


async def run_dev(listen: str, time_scale: float, log_format: str) -> int:
    root = Path(tempfile.mkdtemp(prefix="tether-dev-"))
    data = root / "manager"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    manager: asyncio.subprocess.Process | None = None
    delegate: asyncio.subprocess.Process | None = None
    drain: asyncio.Task[None] | None = None
    common = ["--time-scale", str(time_scale), "--log-format", log_format]
    try:
        manager = await _start(
            ["manager.cli", "serve", "--data-dir", str(data), "--listen", listen, *common],
            stdout=asyncio.subprocess.PIPE,
        )
        url = await _manager_url(manager)
        assert manager.stdout is not None
        drain = asyncio.create_task(_drain(manager.stdout))
        token = await _start(
            ["manager.cli", "token", "create", DELEGATE_NAME, "--data-dir", str(data)],
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await token.communicate()
        if token.returncode != 0:
            raise DevError("could not make the delegate's token (the error is above)")
        token_file = root / "delegate-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(out.decode().strip().splitlines()[-1] + "\n")
        delegate = await _start(
            [
                "delegate.cli",
                "run",
                "--manager-url",
                url,
                "--ca-file",
                str(data / "tls" / "ca.pem"),
                "--token-file",
                str(token_file),
                "--name",
                DELEGATE_NAME,
                "--data-dir",
                str(root / "delegate"),
                "--shared-user",
                *common,
            ],
            stdout=None,
        )
        print(_text(root, url, data), flush=True)
        # Until asked to stop, or until a child ends on its own (then say so).
        waits = {
            asyncio.create_task(stop.wait()),
            asyncio.create_task(manager.wait()),
            asyncio.create_task(delegate.wait()),
        }
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not stop.is_set():
            print("tether-manager dev: a child process ended; stopping", file=sys.stderr)
            return 1
        return 0
    finally:
        await _stop(delegate)
        await _stop(manager)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        shutil.rmtree(root, ignore_errors=True)
        print(f"tether-manager dev: stopped; removed {root}", flush=True)
