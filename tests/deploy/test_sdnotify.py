"""shared.sdnotify against a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import sdnotify
from tests.deploy.notify import NotifySocket

WAIT = 5.0


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


async def test_ready_sends_one_datagram_with_its_status(path_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": path_socket.name}
    assert sdnotify.ready("connected (stream)", environ=env)
    assert await path_socket.receive(WAIT) == {"READY": "1", "STATUS": "connected (stream)"}


async def test_abstract_namespace_socket_is_reached_through_the_at_sign(
    abstract_socket: NotifySocket,
) -> None:
    assert abstract_socket.name.startswith("@")
    env = {"NOTIFY_SOCKET": abstract_socket.name}
    assert sdnotify.stopping(environ=env)
    assert sdnotify.watchdog(environ=env)
    assert await abstract_socket.receive(WAIT) == {"STOPPING": "1"}
    assert await abstract_socket.receive(WAIT) == {"WATCHDOG": "1"}


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    assert not sdnotify.ready(environ={})
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""})
    # A transport this client does not speak is not an error either.
    assert not sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_unreachable_socket_returns_false_rather_than_raising(tmp_path: Path) -> None:
    assert not sdnotify.ready(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_watchdog_interval_reads_watchdog_usec_in_seconds() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_interval_is_none_when_meant_for_another_process() -> None:
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert sdnotify.watchdog_interval(mine) == 2.0
    assert sdnotify.watchdog_interval(other) is None


async def test_watchdog_loop_pings_only_while_healthy() -> None:
    health = iter([False, True, True, False, False, True])
    ticks: list[bool] = []
    pings: list[int] = []
    done = asyncio.Event()

    def healthy() -> bool:
        value = next(health, None)
        if value is None:
            done.set()
            return False
        ticks.append(value)
        return value

    def ping() -> bool:
        pings.append(len(ticks) - 1)  # which tick it belongs to
        return True

    loop = asyncio.create_task(sdnotify.watchdog_loop(healthy, 0, ping=ping))
    await asyncio.wait_for(done.wait(), WAIT)
    await sdnotify.stop_watchdog(loop)
    assert loop.cancelled()
    assert pings == [1, 2, 5]


async def test_start_watchdog_pings_at_half_the_timeout(abstract_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": abstract_socket.name, "WATCHDOG_USEC": "20000"}
    task = sdnotify.start_watchdog(lambda: True, environ=env)
    assert task is not None
    try:
        assert await abstract_socket.wait_for("WATCHDOG", "1", WAIT)
        assert await abstract_socket.wait_for("WATCHDOG", "1", WAIT)
    finally:
        await sdnotify.stop_watchdog(task)


async def test_start_watchdog_does_nothing_without_a_watchdog(
    abstract_socket: NotifySocket,
) -> None:
    assert sdnotify.start_watchdog(lambda: True, environ={}) is None
    assert sdnotify.start_watchdog(lambda: True, environ={"WATCHDOG_USEC": "20000"}) is None
    assert (
        sdnotify.start_watchdog(lambda: True, environ={"NOTIFY_SOCKET": abstract_socket.name})
        is None
    )
    await sdnotify.stop_watchdog(None)
