from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from delegate.run import process
from delegate.run.process import Child, drain, kill_group, spawn, terminate_group

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


async def wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Return once ``pid`` has exited (a zombie counts: it runs nothing and holds nothing).

    A pidfd becomes readable when its process exits, so this waits on an event, not a clock.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await asyncio.wait_for(exited, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def reap_stray(pid: int) -> None:
    """Test hygiene: a failed assertion must not leave a sleeper behind."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        kill_group(child.pgid)
        await child.proc.wait()
        child.close()


async def start(children: list[Child], script: str, tmp_path: Path) -> Child:
    child = await spawn(["bash", "-c", script], cwd=tmp_path, env=ENV)
    children.append(child)
    return child


async def read_line(child: Child) -> str:
    return (await asyncio.wait_for(child.stdout.reader.readline(), 5)).decode().strip()


async def test_child_leads_its_own_session_and_process_group(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, "echo ready; exec sleep 1000", tmp_path)
    assert await read_line(child) == "ready"

    assert os.getpgid(child.proc.pid) == child.proc.pid
    assert os.getsid(child.proc.pid) == child.proc.pid
    assert os.getpgid(child.proc.pid) != os.getpgid(0)


async def test_child_stdin_is_at_eof(children: list[Child], tmp_path: Path) -> None:
    child = await start(children, "cat; echo done", tmp_path)

    assert await read_line(child) == "done"
    assert await asyncio.wait_for(child.proc.wait(), 5) == 0


async def test_child_runs_in_the_given_cwd_with_only_the_given_env(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, 'echo "$PWD ${HOME-nohome}"', tmp_path)

    assert await read_line(child) == f"{tmp_path} nohome"


async def test_stderr_is_a_pipe_of_its_own(children: list[Child], tmp_path: Path) -> None:
    child = await start(children, "echo out; echo err >&2", tmp_path)

    err = await asyncio.wait_for(child.stderr.reader.read(), 5)
    out = await asyncio.wait_for(child.stdout.reader.read(), 5)

    assert (out, err) == (b"out\n", b"err\n")


async def test_spawn_of_a_missing_program_raises_and_leaks_no_descriptor(
    tmp_path: Path,
) -> None:
    before = set(os.listdir("/proc/self/fd"))

    with pytest.raises(FileNotFoundError):
        await spawn(["/nonexistent/program"], cwd=tmp_path, env=ENV)

    assert set(os.listdir("/proc/self/fd")) == before


async def test_terminate_group_kills_a_background_child(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, "sleep 1000 & echo $!; wait", tmp_path)
    background = int(await read_line(child))
    try:
        await terminate_group(child.proc, grace=5)

        assert child.proc.returncode == -signal.SIGTERM
        await wait_gone(background)
    finally:
        reap_stray(background)


async def test_terminate_group_sigkills_a_group_that_ignores_sigterm(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, "trap '' TERM; echo ready; sleep 1000", tmp_path)
    assert await read_line(child) == "ready"

    await asyncio.wait_for(terminate_group(child.proc, grace=0.2), 5)

    assert child.proc.returncode == -signal.SIGKILL


async def test_terminate_group_sigkills_members_that_outlive_the_leader(
    children: list[Child], tmp_path: Path
) -> None:
    # The leader dies on SIGTERM at once; its background child ignores it.
    child = await start(children, "(trap '' TERM; sleep 1000) & echo $!; wait", tmp_path)
    background = int(await read_line(child))
    try:
        await asyncio.wait_for(terminate_group(child.proc, grace=5), 5)

        await wait_gone(background)
    finally:
        reap_stray(background)


async def test_terminate_group_of_an_exited_group_does_not_raise(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, "exit 3", tmp_path)
    await child.proc.wait()

    await terminate_group(child.proc, grace=0.2)

    assert child.proc.returncode == 3


async def test_kill_group_after_leader_exit_kills_orphans_and_frees_the_pipes(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, "sleep 1000 & echo $!", tmp_path)
    background = int(await read_line(child))
    try:
        await child.proc.wait()

        kill_group(child.pgid)

        await wait_gone(background)
        assert await asyncio.wait_for(child.stdout.reader.read(), 5) == b""
    finally:
        reap_stray(background)


async def test_closing_a_pipe_ends_its_reader_even_while_a_writer_holds_it(
    children: list[Child], tmp_path: Path
) -> None:
    child = await start(children, "echo ready; exec sleep 1000", tmp_path)
    assert await read_line(child) == "ready"

    child.stdout.close()

    assert await asyncio.wait_for(child.stdout.reader.read(), 5) == b""


async def test_a_child_is_reaped_through_its_pidfd_without_a_thread(
    tmp_path: Path, children: list[Child]
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    before = set(threading.enumerate())
    child = await start(children, f"read -r code < {gate}; exit $code", tmp_path)
    # The child is blocked on the fifo: it is running, and whatever waits for it is set up.
    assert child.proc.returncode is None
    assert set(threading.enumerate()) == before  # asyncio's 3.11 default: a thread per child
    # A waiter that gives up does not stop the reaping.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(child.proc.wait(), 0)
    fd = await asyncio.to_thread(os.open, gate, os.O_WRONLY)
    os.write(fd, b"7\n")
    os.close(fd)
    assert await child.proc.wait() == 7
    assert child.proc.returncode == 7
    # Reaped: the pid is no process of ours any more.
    with pytest.raises(ChildProcessError):
        os.waitpid(child.proc.pid, os.WNOHANG)


async def test_without_pidfds_a_child_is_started_and_reaped_by_asyncio(
    tmp_path: Path, children: list[Child], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A kernel before 5.3, or a seccomp filter that refuses pidfd_open.
    import delegate.run.process as process

    monkeypatch.setattr(process, "_pidfds", lambda: False)
    child = await start(children, "echo out; echo err >&2; exit 3", tmp_path)
    assert await child.stdout.reader.read() == b"out\n"
    assert await child.stderr.reader.read() == b"err\n"
    assert await child.proc.wait() == 3


# --- drain: a slow reader is not a pipe held by a process outside the group ----------------


class _StubPipe:
    """A pipe whose unread bytes the test decides (``unread`` counts the looks)."""

    def __init__(self, unread: int, eof: asyncio.Future[None] | None = None) -> None:
        self.bytes_left = unread
        self.looks = 0
        self.closed = False
        self._eof = eof

    def unread(self) -> int:
        self.looks += 1
        return self.bytes_left

    def close(self) -> None:
        self.closed = True
        if self._eof is not None:
            self._eof.set_result(None)  # a closed pipe reads to its end


class _StubPump:
    def __init__(self, pipe: _StubPipe, task: asyncio.Future[None]) -> None:
        self.pipe = pipe
        self.task = task
        self.reading = True


async def test_drain_waits_for_a_pipe_that_still_holds_output() -> None:
    # On a loaded machine the loop may not have come round to a pump whose pipe still holds
    # what the task wrote before it exited: closing it then dropped that output
    # (test_large_output_is_not_lost failed so under load). Judged by the pipe, not a clock.
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    pipe = _StubPipe(unread=4096)
    pump = _StubPump(pipe, done)

    async def reader_catches_up() -> None:
        while pipe.looks < 3:  # drain looked three times and waited each time
            await asyncio.sleep(0)
        done.set_result(None)

    catching_up = asyncio.create_task(reader_catches_up())
    closed_any = await drain([pump], grace=0.001)  # type: ignore[list-item]
    await catching_up
    assert (closed_any, pipe.closed) == (False, False)


async def test_drain_closes_an_empty_pipe_held_open_and_bounds_a_chatty_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "MAX_SLOW_ROUNDS", 3)
    loop = asyncio.get_running_loop()
    ends: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]
    idle = _StubPipe(unread=0, eof=ends[0])  # held by a process outside the group, silent
    chatty = _StubPipe(unread=1, eof=ends[1])  # held by one that writes without end
    pumps = [_StubPump(idle, ends[0]), _StubPump(chatty, ends[1])]

    assert await drain(pumps, grace=0.001) is True  # type: ignore[arg-type]
    assert idle.closed
    assert chatty.closed
    assert chatty.looks <= process.MAX_SLOW_ROUNDS + 1
