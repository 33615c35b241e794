"""The notify protocol from the real processes, received on a socket the test binds.

The manager and the delegate run as in tests/e2e (real commands on loopback, timings
scaled by the harness), each with $NOTIFY_SOCKET naming a socket of its own. The waits are
on datagrams and log events; the one fixed wait is how long an absence is watched for.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.deploy.notify import NotifySocket
from tests.e2e.harness import WAIT, Cluster

pytestmark = pytest.mark.e2e

# 50 ms between pings: many per heartbeat (500 ms at the harness's time scale).
WATCHDOG_USEC = 100_000
PING = WATCHDOG_USEC / 2 / 1_000_000


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(root=tmp_path)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


async def test_manager_notifies_ready_once_listening_then_watchdog_then_stopping(
    cluster: Cluster, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    manager = await cluster.start_manager()
    ready = await notify_socket.receive(WAIT)
    assert ready == {"READY": "1", "STATUS": f"listening on {cluster.url}"}
    await notify_socket.wait_for("WATCHDOG", "1", WAIT)
    await manager.stop(signal.SIGTERM)
    await notify_socket.wait_for("STOPPING", "1", WAIT)


async def test_delegate_notifies_ready_when_connected_and_feeds_watchdog_only_while_acked(
    cluster: Cluster, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cluster.start_manager()
    token = await cluster.token("svc-1")
    with monkeypatch.context() as env:
        # Only the delegate's environment: the manager restarted below must not write here.
        env.setenv("NOTIFY_SOCKET", notify_socket.name)
        env.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        delegate = await cluster.start_delegate("svc-1", token=token, wait_mode=None)

    # READY is the first word, and it already says the stream holds.
    assert await notify_socket.receive(WAIT) == {"READY": "1", "STATUS": "connected (stream)"}
    for _ in range(3):
        await notify_socket.wait_for("WATCHDOG", "1", WAIT)

    # The manager goes away: heartbeats stop being acknowledged, and the pings stop.
    assert cluster.manager is not None
    await cluster.manager.stop(signal.SIGTERM)
    await delegate.wait_event("watchdog withheld: service unhealthy")
    notify_socket.drain()
    with pytest.raises(TimeoutError):
        # Ten ping intervals without a ping; a datagram of another kind would fail too.
        await notify_socket.receive(10 * PING)

    # Back on the same port: acknowledged heartbeats feed the watchdog again.
    await cluster.start_manager(port=cluster.port)
    await notify_socket.wait_for("WATCHDOG", "1", WAIT)
    await delegate.wait_event("watchdog resumed")

    await delegate.stop(signal.SIGTERM)
    await notify_socket.wait_for("STOPPING", "1", WAIT)
