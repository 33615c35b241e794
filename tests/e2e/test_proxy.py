"""A delegate behind a corporate proxy: the stream and the HTTPS calls both tunnel through it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.conftest import ON_SQLITE
from tests.e2e.connect_proxy import ConnectProxy
from tests.e2e.harness import Cluster


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = ConnectProxy("corp-user", "s3cret-pw")
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@ON_SQLITE
async def test_delegate_reaches_the_manager_only_through_an_authenticating_proxy(
    running: Cluster, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://corp-user:s3cret-pw@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    delegate = await running.start_delegate("proxied")
    target = f"127.0.0.1:{running.port}"
    # Registration (HTTPS) and the stream (WSS) both went through the tunnel.
    assert proxy.tunnels.count(target) >= 2
    monkeypatch.delenv("HTTPS_PROXY")
    res = await running.tether(
        "task", "run", "--selector", "proxied", "--", "echo", "through the proxy"
    )
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "through the proxy"
    assert delegate.proc is not None
    assert "s3cret-pw" not in "\n".join(delegate.stderr)


@ON_SQLITE
async def test_no_proxy_bypasses_the_proxy(
    running: Cluster, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://corp-user:s3cret-pw@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    await running.start_delegate("direct")
    assert proxy.tunnels == []


@ON_SQLITE
async def test_wrong_proxy_credentials_are_refused_by_the_proxy(
    running: Cluster, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://corp-user:wrong@127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    delegate = await running.start_delegate("stuck", wait_mode=None)
    await delegate.wait_until(lambda: proxy.refused >= 1, "the proxy refusing the credentials")
    assert proxy.tunnels == []
