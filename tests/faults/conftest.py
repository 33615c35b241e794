"""Fixtures of the fault-injection suite: the e2e harness's cluster, and a TCP fault proxy.

Every test here starts real processes (or real sockets), so all of them are marked ``e2e``
the way ``tests/e2e`` marks its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import on_store
from tests.e2e.harness import PRODUCTION_LEASES, Cluster
from tests.faults.tcpproxy import TcpProxy


@pytest.fixture
async def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    c = Cluster(root=tmp_path)
    if request.node.get_closest_marker("production_leases") is not None:
        c.manager_args = PRODUCTION_LEASES
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def running(cluster: Cluster) -> Cluster:
    await cluster.start_manager()
    return cluster


@pytest.fixture(params=["sqlite", "postgres"])
async def on_each_store(cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A started manager on each store, for the faults whose outcome may differ by store."""
    async with on_store(cluster, request) as started:
        yield started


@pytest.fixture
def first_run(tmp_path: Path) -> Iterator[Path]:
    """Where a task's first run notes its process group (support.first_run_hangs); killed
    at the end. The process outlives its killed or frozen delegate, the way it would on a
    real host; the test does not leave it behind."""
    path = tmp_path / "first-run"
    yield path
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.killpg(int((path / "pgid").read_text()), signal.SIGKILL)


@pytest.fixture
async def proxy(running: Cluster) -> AsyncIterator[TcpProxy]:
    """A pass-through proxy in front of the running manager; delegates connect to its url."""
    async with TcpProxy("127.0.0.1", running.port) as p:
        yield p


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
