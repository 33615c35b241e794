"""``serve --tls-san``: the self-made certificate names what clients connect to, so the
README's manager.example.com verifies, with real TLS against the running manager."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests.e2e.harness import BIN, Cluster, Proc


async def _handshake(cluster: Cluster, server_name: str) -> None:
    """A TLS handshake with the manager on loopback, checking the certificate for
    ``server_name`` against the manager's CA (as a client that resolved the name would)."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    _, writer = await asyncio.open_connection(
        "127.0.0.1", cluster.port, ssl=context, server_hostname=server_name
    )
    writer.close()
    await writer.wait_closed()


async def test_a_certificate_made_with_tls_san_verifies_for_that_name(cluster: Cluster) -> None:
    await cluster.start_manager("--tls-san", "manager.example.com", "--tls-san", "10.1.2.3")
    await _handshake(cluster, "manager.example.com")
    await _handshake(cluster, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"manager\.other\.com"):
        await _handshake(cluster, "manager.other.com")
    # A restart without the flag keeps the names (the certificate is not made anew).
    assert cluster.manager is not None
    await cluster.manager.stop()
    await cluster.start_manager()
    await _handshake(cluster, "manager.example.com")


async def test_a_bad_tls_san_is_a_usage_error() -> None:
    proc = await Proc(
        "m",
        [str(BIN / "tether-manager"), "serve", "--data-dir", "/nonexistent/x", "--tls-san", "a b"],
    ).start()
    assert await proc.wait_exit() == 2
    assert proc.stderr == ["error: --tls-san 'a b' is not a DNS name or an IP address"]
