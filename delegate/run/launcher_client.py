"""The delegate's side of the task launcher (delegate/launcher/): a :class:`Switcher` that
asks it, over its Unix socket, to start, signal and sweep tasks.

Each task has a connection of its own, open as long as the task runs: the launcher kills
a task whose connection closes, so a delegate that dies takes its tasks with it, as it
does when it runs them itself. The task's output pipes come back over the connection
(``SCM_RIGHTS``) and are read here exactly as a child's own pipes are.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from delegate.launcher.protocol import (
    CD_THEN_EXEC,
    MAX_FDS,
    RECORD_BYTES,
    Assembler,
    Refused,
    encode,
    parse_reply,
    records,
)
from delegate.launcher.wire import receive, send
from delegate.run.isolation import TaskUser
from delegate.run.process import Child, open_pipe

__all__ = ["LauncherError", "ThroughLauncher", "fetch_pool"]

log = structlog.get_logger("tether.delegate")


class LauncherError(OSError):
    """The launcher could not be reached, or refused; ``strerror`` says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)

    def __str__(self) -> str:
        return str(self.strerror)


def _refusal(reply: dict[str, Any]) -> LauncherError:
    return LauncherError(f"the task launcher refused: {str(reply.get('error'))[:300]}")


def fetch_pool(path: Path, *, timeout: float = 10.0) -> tuple[tuple[TaskUser, ...], Path]:
    """The launcher's task users, in slot order, and its work directory; at start, before
    the event loop runs. :class:`LauncherError` when it cannot be asked."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            with contextlib.suppress(BrokenPipeError):
                # A refused peer is answered, then hung up on: the answer is still to read.
                sock.send(records(encode({"id": 0, "op": "pool"}))[0])
            assembler = Assembler()
            message = None
            while message is None:
                record = sock.recv(RECORD_BYTES + 2)
                if not record:
                    raise LauncherError(f"the task launcher at {path} hung up")
                message = assembler.feed(record)
    except (OSError, Refused) as exc:
        if isinstance(exc, LauncherError):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LauncherError(f"cannot reach the task launcher at {path}: {reason}") from None
    reply = parse_reply(message)
    if reply.get("ok") is not True:
        raise _refusal(reply)
    try:
        users = tuple(
            TaskUser(str(u["name"]), int(u["uid"]), int(u["gid"])) for u in reply["users"]
        )
        return users, Path(reply["work_dir"])
    except (KeyError, TypeError, ValueError):
        raise LauncherError("the task launcher's answer names no task users") from None


def _open_tree(task_dir: Path) -> list[int]:
    """Descriptors of the task's directory (first) and of everything in it: what the
    launcher hands to the task's user. The delegate made all of it, just now."""
    entries = [(task_dir, True)]
    for folder, dirs, files in os.walk(task_dir):
        entries += [(Path(folder, d), True) for d in dirs]
        entries += [(Path(folder, f), False) for f in files]
    if len(entries) > MAX_FDS:
        raise LauncherError(f"the task's directory holds more than {MAX_FDS - 1} entries")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fds: list[int] = []
    try:
        for path, is_dir in entries:
            fds.append(os.open(path, flags | (os.O_DIRECTORY if is_dir else 0)))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


class _Remote:
    """A task's leader, started by the launcher: its exit comes as an event on the
    connection, a signal goes as a request on it."""

    def __init__(self, sock: socket.socket, assembler: Assembler, pid: int) -> None:
        self._sock = sock
        self._assembler = assembler
        self._pid = pid
        self._returncode: int | None = None
        self._ids = itertools.count(1)
        self._exited = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        await self._exited.wait()
        assert self._returncode is not None
        return self._returncode

    def signal_group(self, sig: signal.Signals) -> bool:
        if self._returncode is not None:
            return False
        request = {"id": next(self._ids), "op": "signal", "signal": sig.name.removeprefix("SIG")}
        try:
            # One record of a few bytes: a socket buffer holds thousands.
            self._sock.send(records(encode(request))[0])
        except OSError:
            return False
        return True

    async def _read(self) -> None:
        try:
            while True:
                got = await receive(self._sock, self._assembler)
                if got is None:
                    break
                data, fds = got
                for fd in fds:
                    os.close(fd)
                message = parse_reply(data)
                if message.get("event") == "exit" and type(message.get("code")) is int:
                    self._returncode = message["code"]
                    break
                if message.get("ok") is False:
                    log.warning("task launcher refused a request", error=message.get("error"))
        except (OSError, Refused) as exc:
            log.warning("task launcher connection failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if self._returncode is None:
                # The launcher went away; its tasks are in its cgroup and go with it.
                log.warning("task launcher connection lost before the task ended", pid=self._pid)
                self._returncode = -signal.SIGKILL
            self._sock.close()
            self._exited.set()


Connect = Callable[[Path], Awaitable[socket.socket]]


async def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except BaseException:
        sock.close()
        raise
    return sock


class ThroughLauncher:
    """Tasks run by the task launcher listening on ``path``. ``connect`` opens a
    non-blocking connection to it (tests connect as another user than their own)."""

    def __init__(
        self, path: Path, users: Sequence[TaskUser], *, connect: Connect = _connect
    ) -> None:
        self.path = path
        self._users = tuple(users)
        self._open = connect

    @property
    def users(self) -> tuple[TaskUser, ...]:
        return self._users

    async def _connect(self) -> socket.socket:
        try:
            return await self._open(self.path)
        except OSError as exc:
            raise LauncherError(
                f"cannot reach the task launcher at {self.path}: {exc.strerror or exc}"
            ) from None

    async def _ask(
        self,
        sock: socket.socket,
        assembler: Assembler,
        request: dict[str, Any],
        fds: Sequence[int] = (),
    ) -> tuple[dict[str, Any], list[int]]:
        try:
            with contextlib.suppress(BrokenPipeError):
                # A refused peer is answered, then hung up on: the answer is still to read.
                await send(sock, encode(request), fds)
            got = await receive(sock, assembler)
        except Refused as exc:
            raise LauncherError(f"the task launcher's answer is malformed: {exc}") from None
        except OSError as exc:
            raise LauncherError(f"the task launcher failed: {exc.strerror or exc}") from None
        if got is None:
            raise LauncherError("the task launcher hung up")
        data, received = got
        reply = parse_reply(data)
        if reply.get("ok") is not True:
            for fd in received:
                os.close(fd)
            raise _refusal(reply)
        return reply, received

    async def start(
        self,
        user: TaskUser,
        argv: Sequence[str],
        *,
        task_dir: Path,
        cwd: Path,
        env: Mapping[str, str],
    ) -> Child:
        if cwd.is_relative_to(task_dir):
            relative = str(cwd.relative_to(task_dir))
        else:
            # An absolute working_dir: the task's user changes into it, with its own rights,
            # as it could from inside its directory anyway.
            relative = "."
            argv = ["/bin/sh", "-c", CD_THEN_EXEC, str(cwd), *argv]
        request = {
            "id": 0,
            "op": "start",
            "slot": self._users.index(user),
            "dir": task_dir.name,
            "cwd": relative,
            "argv": list(argv),
            "env": dict(env),
        }
        handed = await asyncio.to_thread(_open_tree, task_dir)
        sock = await self._connect()
        assembler = Assembler()
        try:
            reply, pipes = await self._ask(sock, assembler, request, handed)
        except BaseException:
            sock.close()
            raise
        finally:
            for fd in handed:
                os.close(fd)
        # Here on, closing the connection kills the task: every failure path does that.
        if len(pipes) != 2 or type(reply.get("pid")) is not int:
            for fd in pipes:
                os.close(fd)
            sock.close()
            raise LauncherError("the task launcher's answer to start is malformed")
        out_r, err_r = pipes
        try:
            stdout = await open_pipe(out_r)
        except BaseException:
            os.close(err_r)
            sock.close()
            raise
        try:
            stderr = await open_pipe(err_r)
        except BaseException:
            stdout.close()
            sock.close()
            raise
        return Child(proc=_Remote(sock, assembler, reply["pid"]), stdout=stdout, stderr=stderr)

    async def sweep(self, user: TaskUser, directory: Path | None) -> bool:
        request = {
            "id": 0,
            "op": "sweep",
            "slot": self._users.index(user),
            "dir": None if directory is None else directory.name,
        }
        try:
            sock = await self._connect()
            try:
                reply, _ = await self._ask(sock, Assembler(), request)
            finally:
                sock.close()
        except LauncherError as exc:
            log.warning("sweeping a task slot failed", user=user.name, error=str(exc))
            return False
        return reply.get("clean") is True
