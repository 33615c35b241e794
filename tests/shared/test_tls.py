from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from shared.tls import (
    CertPaths,
    client_context,
    ensure_manager_certificates,
    issue_certificate,
    server_context,
)

HOSTS = ["manager.example.com", "10.1.2.3"]


def _files(paths: CertPaths) -> dict[str, bytes]:
    files = [paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key]
    return {p.name: p.read_bytes() for p in files}


def _sans(cert_path: Path) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return dns, ips


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return ensure_manager_certificates(tmp_path / "tls", HOSTS)


# --- certificates --------------------------------------------------------------------------


def test_certificates_are_made_once_and_reused(tmp_path: Path, certs: CertPaths) -> None:
    first = _files(certs)
    again = ensure_manager_certificates(tmp_path / "tls", HOSTS)
    assert again == certs
    assert _files(again) == first


def test_server_certificate_carries_requested_and_local_names(certs: CertPaths) -> None:
    dns, ips = _sans(certs.server_cert)
    assert {"manager.example.com", "localhost", socket.gethostname()} <= dns
    assert {"10.1.2.3", "127.0.0.1", "::1"} <= ips
    assert "10.1.2.3" not in dns


def test_ca_is_a_p256_signing_ca(certs: CertPaths) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    assert ca.subject.rfc4514_string() == "CN=Tether manager CA"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)


def test_private_keys_are_0600_and_directory_0700(certs: CertPaths) -> None:
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.ca_cert.parent.stat().st_mode) == 0o700


def test_missing_name_reissues_server_certificate_from_the_same_ca(
    tmp_path: Path, certs: CertPaths
) -> None:
    before = _files(certs)
    again = ensure_manager_certificates(tmp_path / "tls", [*HOSTS, "new.example.com"])
    after = _files(again)
    assert after["ca.pem"] == before["ca.pem"]
    assert after["ca-key.pem"] == before["ca-key.pem"]
    assert after["server.pem"] != before["server.pem"]
    dns, _ = _sans(again.server_cert)
    assert {"new.example.com", "manager.example.com"} <= dns


def test_lost_ca_key_reissues_server_certificate_from_the_new_ca(
    tmp_path: Path, certs: CertPaths
) -> None:
    certs.ca_key.unlink()
    again = ensure_manager_certificates(tmp_path / "tls", HOSTS)
    ca = x509.load_pem_x509_certificate(again.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(again.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_ip_literal_in_brackets_becomes_an_ip_san(tmp_path: Path) -> None:
    paths = ensure_manager_certificates(tmp_path / "tls", ["[fd00::1]"])
    _, ips = _sans(paths.server_cert)
    assert str(ipaddress.ip_address("fd00::1")) in ips


# --- handshakes ----------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        ssl_object = writer.get_extra_info("ssl_object")
        writer.write(ssl_object.version().encode() + b" " + line)
        await writer.drain()
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(context: ssl.SSLContext) -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def port(certs: CertPaths) -> AsyncIterator[int]:
    async for value in _serve(server_context(certs.server_cert, certs.server_key)):
        yield value


async def _roundtrip(port: int, context: ssl.SSLContext, host: str = "localhost") -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=host
    )
    try:
        writer.write(b"ping\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def test_tls13_client_trusting_the_ca_connects(certs: CertPaths, port: int) -> None:
    assert await _roundtrip(port, client_context(certs.ca_cert)) == b"TLSv1.3 ping\n"


def test_client_pinned_to_tls12_is_refused(certs: CertPaths) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(cafile=certs.ca_cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    client_error, server_error = _refused_handshake(
        server_context(certs.server_cert, certs.server_key), old
    )
    assert client_error.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert server_error.reason == "UNSUPPORTED_PROTOCOL"


async def test_client_context_refuses_a_host_name_not_in_the_certificate(
    certs: CertPaths, port: int
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _roundtrip(port, client_context(certs.ca_cert), host="other.example.com")


async def test_client_context_refuses_a_server_from_another_ca(tmp_path: Path, port: int) -> None:
    stranger = ensure_manager_certificates(tmp_path / "other", ["localhost"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _roundtrip(port, client_context(stranger.ca_cert))


def test_client_context_never_offers_less_than_tls13(certs: CertPaths) -> None:
    context = client_context(certs.ca_cert)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


async def test_mutual_tls_accepts_a_client_certificate_from_the_ca(
    tmp_path: Path, certs: CertPaths
) -> None:
    client_cert, client_key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    issue_certificate(
        certs.ca_cert, certs.ca_key, client_cert, client_key, ["delegate-1"], client=True
    )
    context = server_context(certs.server_cert, certs.server_key, client_ca=certs.ca_cert)
    async for port in _serve(context):
        client = client_context(certs.ca_cert, client_cert=client_cert, client_key=client_key)
        assert await _roundtrip(port, client) == b"TLSv1.3 ping\n"


def test_mutual_tls_refuses_a_client_without_certificate(certs: CertPaths) -> None:
    context = server_context(certs.server_cert, certs.server_key, client_ca=certs.ca_cert)
    client_error, server_error = _refused_handshake(context, client_context(certs.ca_cert))
    # In TLS 1.3 the client finishes first; the server's refusal arrives on its first read.
    assert client_error.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def _refused_handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[ssl.SSLError, ssl.SSLError]:
    """One blocking connection on loopback; returns (client error, server error).

    Plain sockets and a thread, not asyncio: asyncio's server drops a refused connection
    before its TLS alert is flushed, which would hide the reason from the client.
    """
    server_errors: list[ssl.SSLError] = []
    client_errors: list[ssl.SSLError] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept_one() -> None:
            conn, _ = listener.accept()
            conn.settimeout(60)
            with server.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) as tls:
                try:
                    tls.do_handshake()
                    tls.recv(16)
                except ssl.SSLError as exc:
                    server_errors.append(exc)
                    # Hang up only after the client has read the alert: closing with the
                    # client's unread bytes still queued sends a reset, which can overtake
                    # the alert on a loaded machine (the client then sees a bare EOF).
                    with contextlib.suppress(OSError):
                        tls.shutdown(socket.SHUT_WR)
                        while tls.recv(4096):
                            pass

        thread = threading.Thread(target=accept_one)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=60) as raw:
                try:
                    with client.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(b"ping\n")
                        tls.recv(16)
                except ssl.SSLError as exc:
                    client_errors.append(exc)
        finally:
            thread.join()
    assert len(client_errors) == 1, "the client was not refused"
    assert len(server_errors) == 1, "the server did not refuse"
    return client_errors[0], server_errors[0]
