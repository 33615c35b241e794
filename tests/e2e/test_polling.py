"""The polling fallback: tasks run when the stream is refused, and the stream comes back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shared.tls import issue_certificate
from tests.e2e.conftest import ON_SQLITE
from tests.e2e.harness import Cluster
from tests.e2e.proxy import UpgradeBlockingProxy


@pytest.fixture
async def proxy(running: Cluster) -> AsyncIterator[UpgradeBlockingProxy]:
    p = UpgradeBlockingProxy(running.url, running.data_dir, running.root)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def _status(c: Cluster, name: str) -> str:
    res = await c.tether("delegate", "list", "--output", "json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    rows = data["delegates"] if isinstance(data, dict) else data
    return next(str(d["status"]) for d in rows if d["name"] == name)


async def test_tasks_run_over_polling_when_the_stream_is_refused(
    running: Cluster, proxy: UpgradeBlockingProxy
) -> None:
    await running.start_delegate("poller", url=proxy.url, wait_mode="polling")
    assert proxy.refused >= 1
    assert await _status(running, "poller") == "polling"
    res = await running.tether("task", "run", "--", "echo", "via polling")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "via polling"


@ON_SQLITE
async def test_cancel_reaches_a_polling_delegate(
    running: Cluster, proxy: UpgradeBlockingProxy
) -> None:
    delegate = await running.start_delegate("poller", url=proxy.url, wait_mode="polling")
    res = await running.tether("task", "submit", "--", "sleep", "300")
    task_id = res.last_line
    await delegate.wait_event("task started", task_id=task_id)
    assert (await running.tether("task", "cancel", task_id)).code == 0
    await delegate.wait_event("task finished", task_id=task_id, status="cancelled")


@ON_SQLITE
async def test_delegate_moves_back_to_the_stream_when_it_holds_again(
    running: Cluster, proxy: UpgradeBlockingProxy
) -> None:
    delegate = await running.start_delegate("poller", url=proxy.url, wait_mode="polling")
    seen = len(delegate.events())
    proxy.allow_upgrade = True
    await delegate.wait_event("channel mode", mode="stream", after=seen)
    assert await _status(running, "poller") == "connected"
    res = await running.tether("task", "run", "--", "echo", "back on the stream")
    assert res.code == 0
    assert res.stdout.strip() == "back on the stream"


@ON_SQLITE
async def test_a_delegate_presents_its_client_certificate_where_mtls_is_required(
    running: Cluster, tmp_path: Path
) -> None:
    tls = running.data_dir / "tls"
    cert, key = tmp_path / "delegate.pem", tmp_path / "delegate-key.pem"
    issue_certificate(tls / "ca.pem", tls / "ca-key.pem", cert, key, ["mtls-delegate"], client=True)
    edge = UpgradeBlockingProxy(running.url, running.data_dir, tmp_path, client_ca=tls / "ca.pem")
    edge.allow_upgrade = True
    await edge.start()
    try:
        await running.start_delegate(
            "mtls", url=edge.url, extra=("--client-cert", str(cert), "--client-key", str(key))
        )
        res = await running.tether("task", "run", "--selector", "mtls", "--", "echo", "mutual")
        assert res.stdout.strip() == "mutual"
        refused = await running.start_delegate("no-cert", url=edge.url, wait_mode=None)
        await refused.wait_event("cannot register yet")
    finally:
        await edge.close()
