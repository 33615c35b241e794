"""Fixtures of the fault-injection suite: the e2e harness's cluster, and a TCP fault proxy.

Every test here starts real processes (or real sockets), so all of them are marked ``e2e``
the way ``tests/e2e`` marks its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cluster
from tests.faults.tcpproxy import TcpProxy


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(root=tmp_path)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    await cluster.start_manager()
    return cluster


@pytest.fixture
async def proxy(running: Cluster) -> AsyncIterator[TcpProxy]:
    """A pass-through proxy in front of the running manager; delegates connect to its url."""
    async with TcpProxy("127.0.0.1", running.port) as p:
        yield p


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
