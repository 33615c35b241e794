"""TLS 1.3 for every connection, and the manager's own CA when the operator brings none.

At first start the manager makes a CA and a server certificate in its data directory and
keeps them: delegates are given the CA once (``--ca-file``) and it must not change under
them. Only the server certificate is reissued, from the same CA, when a host name it should
answer for is missing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "CertPaths",
    "client_context",
    "default_hostnames",
    "ensure_manager_certificates",
    "issue_certificate",
    "san_problem",
    "server_context",
]

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=730)
# Clocks of delegates and the manager disagree; a certificate valid from "now" would be
# refused by a peer a minute behind.
_BACKDATE = datetime.timedelta(hours=1)
_CA_NAME = "Tether manager CA"
# A server certificate this close to its end is reissued at start-up.
_RENEW_BEFORE = datetime.timedelta(days=30)

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# One label of a DNS name (RFC 1123): letters, digits, inner hyphens.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True, slots=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def default_hostnames() -> list[str]:
    """Names the server certificate always carries, so local clients just work."""
    return ["localhost", "127.0.0.1", "::1", socket.gethostname()]


def san_problem(names: Iterable[str]) -> str | None:
    """Why a --tls-san value cannot name a certificate, or None when all can."""
    for name in names:
        if _as_ip(name) is not None:
            continue
        labels = name.removeprefix("*.").split(".")
        if not name or not all(_LABEL.fullmatch(label) for label in labels):
            return f"--tls-san {name!r} is not a DNS name or an IP address"
    return None


def ensure_manager_certificates(tls_dir: Path, hostnames: Sequence[str]) -> CertPaths:
    """The manager's CA and server certificate in ``tls_dir``, made on first start."""
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = CertPaths(
        ca_cert=tls_dir / "ca.pem",
        ca_key=tls_dir / "ca-key.pem",
        server_cert=tls_dir / "server.pem",
        server_key=tls_dir / "server-key.pem",
    )
    wanted = _dedupe([*hostnames, *default_hostnames()])
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        _create_ca(paths.ca_cert, paths.ca_key)
    if not _server_cert_fits(paths, wanted):
        # Keep the names the old certificate had: an operator who once added a name
        # should not lose it because today's start-up passed a shorter list.
        previous = _san_names(paths.server_cert) if paths.server_cert.exists() else []
        issue_certificate(
            paths.ca_cert,
            paths.ca_key,
            paths.server_cert,
            paths.server_key,
            _dedupe([*wanted, *previous]),
        )
    return paths


def issue_certificate(
    ca_cert: Path,
    ca_key: Path,
    out_cert: Path,
    out_key: Path,
    hostnames: Sequence[str],
    *,
    client: bool = False,
    validity: datetime.timedelta = LEAF_VALIDITY,
) -> None:
    """Sign a new leaf certificate (server, or client for mTLS) with the CA at hand."""
    if not hostnames:
        raise ValueError("a certificate needs at least one host name")
    issuer_cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    issuer_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(issuer_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca_key} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_general_names(hostnames)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    _write_private(out_key, key)
    _write_public(out_cert, cert)


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context that speaks TLS 1.3 and nothing older."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: Path | None,
    *,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> ssl.SSLContext:
    """A client context that speaks TLS 1.3, checks host names, and trusts ``ca_file``
    (or the system store when it is None)."""
    if ca_file is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    elif client_key is not None:
        raise ValueError("client_key given without client_cert")
    return context


def _create_ca(cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    _write_public(cert_path, cert)


def _general_names(hostnames: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        address = _as_ip(host)
        if address is None:
            names.append(x509.DNSName(host))
        else:
            names.append(x509.IPAddress(address))
    return names


def _server_cert_fits(paths: CertPaths, hostnames: Iterable[str]) -> bool:
    """Whether the server certificate on disk can be kept as it is."""
    if not (paths.server_cert.exists() and paths.server_key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    try:
        # A CA made anew (its key was lost) has to reissue what the old one signed.
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < _RENEW_BEFORE:
        return False
    present = {_normal(name) for name in _san_names(paths.server_cert)}
    return all(_normal(host) in present for host in hostnames)


def _san_names(cert_path: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [str(name) for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def _as_ip(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _normal(host: str) -> str:
    # DNS names compare without case; IP addresses in their canonical spelling.
    address = _as_ip(host)
    return str(address) if address is not None else host.lower().rstrip(".")


def _dedupe(hostnames: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for host in hostnames:
        host = host.strip()
        if host and _normal(host) not in seen:
            seen.add(_normal(host))
            out.append(host)
    return out


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write under a temporary name created 0600 and rename: the key is never readable by
    # others, not even for a moment, and a crash never leaves half a key behind.
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    os.replace(tmp, path)


def _write_public(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)
