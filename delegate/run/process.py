"""Running a task's child process in a process group of its own.

A task's script is free to start background children. Signals therefore go to the whole
group (``os.killpg``), never to the one process we started, and the group is killed once the
script ends even when it ended on its own; see :func:`spawn` and :func:`kill_group`.

The output pipes are made here rather than by ``asyncio.subprocess.PIPE`` so that the
delegate can close its read ends itself: a process that left the group (``setsid``) may hold
the write ends open for ever, and asyncio offers no public way to let go of its own pipes
while the child's transport is still alive.

The child is started with ``subprocess.Popen`` (vfork and exec: the delegate's memory is not
copied) and reaped through a pidfd the event loop watches, as the task launcher does: no
thread per child, which asyncio's default child watcher on Python 3.11 starts for every
process. Where pidfds are missing (Linux before 5.3, or a seccomp filter that refuses
``pidfd_open``), asyncio's own subprocess support is used instead.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import termios
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from delegate.launcher.protocol import CD_THEN_EXEC
from delegate.run.isolation import TaskUser
from shared.limits import KIB

__all__ = [
    "READ_CHUNK",
    "Child",
    "OutputPipe",
    "OutputPump",
    "TaskProcess",
    "drain",
    "kill_group",
    "open_pipe",
    "signal_group",
    "spawn",
    "terminate_group",
]

# Output is read in chunks, not lines: a line may be megabytes long, or never end.
READ_CHUNK = 64 * KIB
# Rounds of drain()'s grace given to pipes that still hold output once the group is gone.
MAX_SLOW_ROUNDS = 50


@dataclass(eq=False)
class OutputPipe:
    """The delegate's read end of one of the child's output streams."""

    reader: asyncio.StreamReader
    transport: asyncio.ReadTransport

    def close(self) -> None:
        """Stop reading; what is already buffered can still be read, then EOF."""
        self.transport.close()

    def unread(self) -> int:
        """Bytes written to the pipe that this end has not read yet (0 once closed)."""
        pipe = self.transport.get_extra_info("pipe")
        if pipe is None or self.transport.is_closing():
            return 0
        count = array.array("i", [0])
        try:
            fcntl.ioctl(pipe.fileno(), termios.FIONREAD, count)
        except (OSError, ValueError):
            return 0
        return count[0]


class TaskProcess(Protocol):
    """A task's leader, started in this process or by the task launcher."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def signal_group(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the leader's process group; False when nobody in it is left."""
        ...


@dataclass(eq=False)
class _Local:
    """A child of this process, as a :class:`TaskProcess`."""

    proc: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal_group(self, sig: signal.Signals) -> bool:
        return signal_group(self.proc.pid, sig)


class _Reaped:
    """A child of this process reaped through its pidfd, as a :class:`TaskProcess`."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self._pidfd = pidfd
        loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = loop.create_future()
        # Readable once the process has exited: then waitpid does not block.
        loop.add_reader(pidfd, self._reap)

    def _reap(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self._popen.wait()
        if not self._exited.done():
            self._exited.set_result(code)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        # Shielded: a waiter cancelled (a timeout) must not cancel the reaping.
        return await asyncio.shield(self._exited)

    def signal_group(self, sig: signal.Signals) -> bool:
        return signal_group(self._popen.pid, sig)


@dataclass(eq=False)
class Child:
    proc: TaskProcess
    stdout: OutputPipe
    stderr: OutputPipe

    @property
    def pgid(self) -> int:
        # start_new_session makes the child a session and group leader: pgid == pid.
        return self.proc.pid

    def kill_group(self) -> None:
        """SIGKILL what is left of the group; see :func:`kill_group`."""
        self.proc.signal_group(signal.SIGKILL)

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()


class OutputPump:
    """Copies one output pipe to ``write``, a chunk at a time, until EOF.

    ``write`` is awaited before the next read: when it is slow, the pipe fills and the
    child blocks on its next write, which is the backpressure we want.
    """

    def __init__(self, pipe: OutputPipe, write: Callable[[bytes], Awaitable[None]]) -> None:
        self.pipe = pipe
        self._write = write
        # True while waiting on the pipe rather than on ``write``; see drain().
        self.reading = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.reading = True
            chunk = await self.pipe.reader.read(READ_CHUNK)
            self.reading = False
            if not chunk:
                return
            await self._write(chunk)


async def drain(pumps: Sequence[OutputPump], grace: float) -> bool:
    """Let the pumps reach EOF, once the task's process group is gone.

    A process that left the group (``setsid``) may hold a pipe open for ever. A pump still
    waiting on an empty pipe ``grace`` seconds after the group died is waiting on such a
    process, so its pipe is closed. A pump busy in ``write``, or one whose pipe still holds
    bytes (the loop has not come round to it: a loaded machine), is only slow and is waited
    for; closing it would drop output the task wrote. The latter only for
    ``MAX_SLOW_ROUNDS`` more rounds: a process outside the group that writes without end
    must not hold the task open for ever.

    Returns True when a pipe had to be closed. A pump's exception is raised here.
    """
    closed: list[OutputPump] = []
    slow_rounds = 0
    while True:
        _, pending = await asyncio.wait([p.task for p in pumps], timeout=grace)
        if not pending:
            break
        waiting = [p for p in pumps if not p.task.done() and p.reading and p not in closed]
        if slow_rounds < MAX_SLOW_ROUNDS and any(p.pipe.unread() for p in waiting):
            slow_rounds += 1
            continue
        for pump in waiting:
            pump.pipe.close()
            closed.append(pump)
    for pump in pumps:
        if (exc := pump.task.exception()) is not None:
            raise exc
    return bool(closed)


async def spawn(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], user: TaskUser | None = None
) -> Child:
    """Start ``argv`` as the leader of a new session, stdin from /dev/null; as ``user``
    (its uid, its group and no other group) when given.

    Raises what ``subprocess.Popen`` raises (``FileNotFoundError``, ``PermissionError``)
    when the program cannot be started; no descriptor leaks in that case.
    """
    if user is not None:
        # subprocess changes directory before it switches users, and this process may have
        # no right to enter the task's directory (it holds no CAP_DAC_*).
        argv = ["/bin/sh", "-c", CD_THEN_EXEC, str(cwd), *argv]
        cwd = Path("/")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await _start(argv, cwd, env, user, out_w, err_w)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        # Only the child may hold the write ends: EOF must mean every writer is gone.
        os.close(out_w)
        os.close(err_w)
    try:
        stdout = await open_pipe(out_r)
    except BaseException:
        os.close(err_r)
        _abandon(proc)
        raise
    try:
        stderr = await open_pipe(err_r)
    except BaseException:
        stdout.close()
        _abandon(proc)
        raise
    return Child(proc=proc, stdout=stdout, stderr=stderr)


@cache
def _pidfds() -> bool:
    """Whether this kernel (and its seccomp filter) lets this process open pidfds."""
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (OSError, AttributeError):
        return False
    return True


async def _start(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    user: TaskUser | None,
    out_w: int,
    err_w: int,
) -> TaskProcess:
    uid = None if user is None else user.uid
    gid = None if user is None else user.gid
    groups: list[int] | None = None if user is None else []
    # The same child either way; only how it is waited on differs.
    options: dict[str, Any] = {
        "cwd": cwd,
        "env": dict(env),
        "stdin": subprocess.DEVNULL,
        "stdout": out_w,
        "stderr": err_w,
        "start_new_session": True,
        # Switched in the child between fork and exec (C code, no preexec_fn).
        "user": uid,
        "group": gid,
        "extra_groups": groups,
    }
    if not _pidfds():
        return _Local(await asyncio.create_subprocess_exec(*argv, **options))
    # A fork and exec (vfork when no user is switched), as asyncio's own subprocess support
    # does it: nothing to wait on.
    popen = subprocess.Popen(argv, **options)  # noqa: ASYNC220
    try:
        pidfd = os.pidfd_open(popen.pid)
    except OSError:
        # Only when out of descriptors: the child must not run unwatched.
        signal_group(popen.pid, signal.SIGKILL)
        popen.wait()
        raise
    try:
        return _Reaped(popen, pidfd)
    except BaseException:
        os.close(pidfd)
        raise


def _abandon(proc: TaskProcess) -> None:
    """Kill a child whose pipes could not be set up; it is reaped as it exits."""
    proc.signal_group(signal.SIGKILL)


async def open_pipe(fd: int) -> OutputPipe:
    """The read end ``fd`` as an :class:`OutputPipe`; ``fd`` is closed on failure."""
    loop = asyncio.get_running_loop()
    try:
        pipe = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    except BaseException:
        pipe.close()
        raise
    return OutputPipe(reader=reader, transport=transport)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the group; False when nobody in it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid: int) -> None:
    """SIGKILL every process left in the group.

    Called right after the group's leader exits, even on success: a background child
    (``cmd &``, ``nohup``) would otherwise outlive the task, keep running with the task's
    secrets in its environment, and hold the output pipes open so the task never reaches
    EOF. GitHub's runner and the Buildkite agent clean up orphans the same way.

    The leader's pid is reaped by then, but Linux does not hand out a pid that is still
    some live process's group id, so while members remain, ``pgid`` can only mean them.
    """
    signal_group(pgid, signal.SIGKILL)


async def terminate_group(proc: TaskProcess, grace: float) -> None:
    """SIGTERM the group, give the leader ``grace`` seconds to exit, then SIGKILL the group.

    The SIGKILL is sent even when the leader exited in time: members that ignore SIGTERM
    must not survive the task.
    """
    proc.signal_group(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    proc.signal_group(signal.SIGKILL)
    await proc.wait()
