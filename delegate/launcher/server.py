"""The task launcher itself: starts, signals and sweeps the delegate's tasks as their
slots' users, for the delegate's user alone.

What it will do, whoever asks (a delegate taken over included):
- talk only to a peer whose uid (``SO_PEERCRED``, taken by the kernel at connect) is the
  delegate's;
- run a program only as one of its own task users (looked up at its start, each checked to
  be neither root nor the delegate's user), picked by slot number, one task per slot;
- hand a task only objects the delegate's user owns (regular files and directories, by
  descriptor: it never follows a path the delegate could swap for a link), the first of
  them the task's directory, a direct entry of its own work directory;
- signal only the process group it started on the same connection, and only while its
  leader is not yet reaped (a zombie leader keeps the group id from being reused);
- sweep a slot only while no task runs in it, and only as that slot's user.
When a connection closes while its task runs (the delegate died, or gave it up), the task's
group is killed and its slot swept: no task runs on unsupervised.

It logs slots, users and pids; never a task's arguments or environment, which may hold the
task's secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from delegate.launcher.protocol import (
    CD_THEN_EXEC,
    Assembler,
    Pool,
    Refused,
    Signal,
    Start,
    Sweep,
    encode,
    parse_request,
)
from delegate.launcher.wire import receive, send
from delegate.run.isolation import TaskUser, sweep

__all__ = ["Launcher", "LauncherConfig", "peer_credentials"]

log = structlog.get_logger("tether.launcher")

# One per running task and a few for sweeps: a peer opening more is refused, not served.
MAX_CONNECTIONS = 256
# How long a refused peer has to send the request its refusal answers.
_TURN_AWAY_WAIT = 5.0


@dataclass(frozen=True)
class LauncherConfig:
    client_uid: int
    users: tuple[TaskUser, ...]
    work_root: Path


@dataclass(eq=False)
class _Task:
    slot: int
    user: TaskUser
    dir: str
    popen: subprocess.Popen[bytes]
    pidfd: int
    returncode: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def signal(self, sig: signal.Signals) -> bool:
        """Signal the task's group; False when it is over. Only while the leader is not
        reaped: until then its pid, the group's id, cannot belong to anyone else."""
        if self.returncode is not None:
            return False
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return False
        return True


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # The exit event and a reply may be sent at once; records must not interleave.
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        async with self._lock:
            await send(self.sock, encode(message), fds)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected, as the kernel recorded them."""
    fmt = "3i"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    pid, uid, gid = struct.unpack(fmt, raw)
    return pid, uid, gid


class Launcher:
    def __init__(self, config: LauncherConfig) -> None:
        self.config = config
        self._running: dict[int, _Task] = {}
        self._open = 0
        self._handlers: set[asyncio.Task[None]] = set()

    async def serve(self, listener: socket.socket) -> None:
        """Accept connections until cancelled; running tasks are killed on the way out."""
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, _ = await loop.sock_accept(listener)
                conn.setblocking(False)
                if self._open >= MAX_CONNECTIONS:
                    log.warning("connection refused: too many open", limit=MAX_CONNECTIONS)
                    conn.close()
                    continue
                handler = asyncio.create_task(self._serve(conn))
                self._handlers.add(handler)
                handler.add_done_callback(self._handlers.discard)
        finally:
            for task in list(self._running.values()):
                task.signal(signal.SIGKILL)
            for handler in list(self._handlers):
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, sock: socket.socket) -> None:
        self._open += 1
        conn = _Connection(sock)
        task: _Task | None = None
        try:
            pid, uid, _ = peer_credentials(sock)
            if uid != self.config.client_uid:
                log.warning("connection refused", peer_uid=uid, peer_pid=pid)
                await self._turn_away(conn, f"uid {uid} may not use this launcher")
                return
            assembler = Assembler()
            while True:
                try:
                    got = await receive(sock, assembler)
                except Refused as exc:
                    # Framing is lost: answer once, then hang up.
                    await conn.send(_error(None, str(exc)))
                    return
                if got is None:
                    return
                data, fds = got
                try:
                    request = parse_request(data, fds=len(fds), slots=len(self.config.users))
                    if isinstance(request, Start):
                        task = await self._start(conn, request, fds, uid, task)
                    else:
                        await conn.send(await self._answer(request, task))
                except Refused as exc:
                    await conn.send(_error(exc.request_id, str(exc)))
                finally:
                    for fd in fds:
                        os.close(fd)
        except OSError as exc:
            log.info("connection lost", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._open -= 1
            sock.close()
            if task is not None and task.returncode is None:
                log.warning("connection closed with its task running: killed", slot=task.slot)
                task.signal(signal.SIGKILL)
                await task.exited.wait()
                await sweep(task.user, self.config.work_root / task.dir)

    async def _turn_away(self, conn: _Connection, reason: str) -> None:
        """Answer the peer's first message with ``reason``, read nothing of it. Answered
        before it is read, a request left unread would make the close a reset, and the
        peer would see that instead of the reason."""
        with contextlib.suppress(Refused, TimeoutError):
            got = await asyncio.wait_for(receive(conn.sock, Assembler()), _TURN_AWAY_WAIT)
            for fd in got[1] if got else ():
                os.close(fd)
        await conn.send(_error(None, reason))

    async def _answer(self, request: Pool | Signal | Sweep, task: _Task | None) -> dict[str, Any]:
        if isinstance(request, Pool):
            users = [{"name": u.name, "uid": u.uid, "gid": u.gid} for u in self.config.users]
            work_dir = str(self.config.work_root)
            return {"id": request.id, "ok": True, "users": users, "work_dir": work_dir}
        if isinstance(request, Signal):
            sent = task is not None and task.signal(request.signal)
            return {"id": request.id, "ok": True, "sent": sent}
        if request.slot in self._running:
            raise Refused(f"slot {request.slot} is running a task", request.id)
        user = self.config.users[request.slot]
        directory = None if request.dir is None else self.config.work_root / request.dir
        clean = await sweep(user, directory)
        log.info("slot swept", slot=request.slot, user=user.name, clean=clean)
        return {"id": request.id, "ok": True, "clean": clean}

    def _hand_over(self, request: Start, fds: Sequence[int], peer_uid: int) -> None:
        """Give the task user the objects sent, once every one of them has passed."""
        try:
            entry = os.lstat(self.config.work_root / request.dir)
        except OSError:
            raise Refused(f"no task directory {request.dir}", request.id) from None
        handed = [os.fstat(fd) for fd in fds]
        if not stat.S_ISDIR(entry.st_mode) or (handed[0].st_dev, handed[0].st_ino) != (
            entry.st_dev,
            entry.st_ino,
        ):
            raise Refused("the first descriptor is not the task's directory", request.id)
        for st in handed:
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise Refused("only files and directories are handed to a task", request.id)
            if st.st_uid != peer_uid:
                raise Refused("only the delegate's own files are handed to a task", request.id)
        user = self.config.users[request.slot]
        for fd in fds:
            os.fchown(fd, user.uid, user.gid)

    async def _start(
        self,
        conn: _Connection,
        request: Start,
        fds: Sequence[int],
        peer_uid: int,
        started: _Task | None,
    ) -> _Task:
        if started is not None:
            raise Refused("this connection started its task already", request.id)
        if request.slot in self._running:
            raise Refused(f"slot {request.slot} is running a task", request.id)
        self._hand_over(request, fds, peer_uid)
        user = self.config.users[request.slot]
        cwd = self.config.work_root / request.dir / request.cwd
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                # Not asyncio's: the launcher reaps the leader itself, after it has killed
                # the group (see _watch). A fork and exec: no wait worth a thread.
                popen = subprocess.Popen(  # noqa: ASYNC220
                    ["/bin/sh", "-c", CD_THEN_EXEC, str(cwd), *request.argv],
                    cwd="/",
                    env=dict(request.env),
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    start_new_session=True,
                    user=user.uid,
                    group=user.gid,
                    extra_groups=[],
                    close_fds=True,
                )
            except OSError as exc:
                raise Refused(f"cannot start: {exc.strerror or exc}", request.id) from None
            finally:
                # Only the child may hold the write ends: EOF must mean every writer is gone.
                os.close(out_w)
                os.close(err_w)
            task = _Task(request.slot, user, request.dir, popen, os.pidfd_open(popen.pid))
            self._running[request.slot] = task
            log.info("task started", slot=request.slot, user=user.name, pid=popen.pid)
            watcher = asyncio.create_task(self._watch(conn, task))
            self._handlers.add(watcher)
            watcher.add_done_callback(self._handlers.discard)
            await conn.send({"id": request.id, "ok": True, "pid": popen.pid}, [out_r, err_r])
        finally:
            os.close(out_r)
            os.close(err_r)
        return task

    async def _watch(self, conn: _Connection, task: _Task) -> None:
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(task.pidfd, on_exit)
        try:
            await gone
        finally:
            loop.remove_reader(task.pidfd)
        # The leader is a zombie: its group id is still its own. Members left behind (a
        # background child) die now, before the group id can be reused; see kill_group.
        task.signal(signal.SIGKILL)
        task.returncode = task.popen.wait()
        os.close(task.pidfd)
        del self._running[task.slot]
        task.exited.set()
        log.info("task exited", slot=task.slot, pid=task.popen.pid, code=task.returncode)
        with contextlib.suppress(OSError):
            await conn.send({"event": "exit", "code": task.returncode})


def _error(request_id: int | None, reason: str) -> dict[str, Any]:
    return {"id": request_id, "ok": False, "error": reason}
