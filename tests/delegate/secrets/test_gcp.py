"""GcpKms against an in-test Cloud KMS: a grpc.aio server speaking the real service's
method paths with google-cloud-kms's own request and response types."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.cloud import kms_v1

from delegate.secrets.base import ProviderConfig, SecretError
from delegate.secrets.gcp import GcpKms, crc32c
from shared.tls import ensure_manager_certificates

SERVICE = "google.cloud.kms.v1.KeyManagementService"
KEY = "projects/p1/locations/global/keyRings/ring/cryptoKeys/tether"
OTHER_KEY = "projects/p1/locations/global/keyRings/ring/cryptoKeys/other"
DATA_KEY = bytes(range(32))
CONTEXT = b"\x00\x01v1\x00\x07account\x00\x06secret"


@dataclass
class FakeKms:
    """Cloud KMS as far as Encrypt and Decrypt go: one AES-256-GCM key per CryptoKey.

    The ciphertext is nonce + AES-GCM(plaintext, AAD), so a wrong AAD fails to decrypt
    (INVALID_ARGUMENT, as the real service answers). ``corrupt`` holds, per method, how
    many answers in a row get a wrong checksum.
    """

    keys: dict[str, bytes] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)
    corrupt: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def add_key(self, name: str) -> None:
        self.keys[name] = AESGCM.generate_key(bit_length=256)

    async def encrypt(self, request: kms_v1.EncryptRequest, context: Any) -> kms_v1.EncryptResponse:
        self.calls.append("encrypt")
        key = await self._key(request.name, context)
        await _verify(request, "plaintext", context)
        await _verify(request, "additional_authenticated_data", context)
        nonce = os.urandom(12)
        aad = request.additional_authenticated_data
        ciphertext = nonce + AESGCM(key).encrypt(nonce, request.plaintext, aad)
        return kms_v1.EncryptResponse(
            name=f"{request.name}/cryptoKeyVersions/1",
            ciphertext=ciphertext,
            ciphertext_crc32c=self._checksum("encrypt", ciphertext),
            verified_plaintext_crc32c="plaintext_crc32c" in request,
            verified_additional_authenticated_data_crc32c=(
                "additional_authenticated_data_crc32c" in request
            ),
        )

    async def decrypt(self, request: kms_v1.DecryptRequest, context: Any) -> kms_v1.DecryptResponse:
        self.calls.append("decrypt")
        key = await self._key(request.name, context)
        await _verify(request, "ciphertext", context)
        await _verify(request, "additional_authenticated_data", context)
        blob = request.ciphertext
        try:
            plaintext = AESGCM(key).decrypt(
                blob[:12], blob[12:], request.additional_authenticated_data
            )
        except (InvalidTag, ValueError):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Decryption failed: the ciphertext is invalid."
            )
        return kms_v1.DecryptResponse(
            plaintext=plaintext, plaintext_crc32c=self._checksum("decrypt", plaintext)
        )

    async def _key(self, name: str, context: Any) -> bytes:
        if name in self.denied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"Permission denied on {name}")
        if name not in self.keys:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{name} not found.")
        if name in self.disabled:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{name}/cryptoKeyVersions/1 is not enabled, current state is: DISABLED.",
            )
        return self.keys[name]

    def _checksum(self, method: str, data: bytes) -> int:
        if self.corrupt.get(method, 0) > 0:
            self.corrupt[method] -= 1
            return crc32c(data) ^ 1
        return crc32c(data)

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Encrypt": grpc.unary_unary_rpc_method_handler(
                    self.encrypt,
                    request_deserializer=kms_v1.EncryptRequest.deserialize,
                    response_serializer=kms_v1.EncryptResponse.serialize,
                ),
                "Decrypt": grpc.unary_unary_rpc_method_handler(
                    self.decrypt,
                    request_deserializer=kms_v1.DecryptRequest.deserialize,
                    response_serializer=kms_v1.DecryptResponse.serialize,
                ),
            },
        )


async def _verify(request: Any, field_name: str, context: Any) -> None:
    """Refuse a request whose checksum does not match, as the real service does."""
    checksum_field = f"{field_name}_crc32c"
    if checksum_field in request and getattr(request, checksum_field) != crc32c(
        getattr(request, field_name)
    ):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{checksum_field} mismatch")


@dataclass
class Server:
    fake: FakeKms
    endpoint: str


@pytest.fixture
def certs(tmp_path: Path) -> Any:
    return ensure_manager_certificates(tmp_path / "tls", ["127.0.0.1"])


async def _start(fake: FakeKms, credentials: Any = None) -> tuple[Any, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([fake.handler()])
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


@pytest.fixture
async def kms() -> AsyncIterator[Server]:
    fake = FakeKms()
    fake.add_key(KEY)
    server, port = await _start(fake)
    yield Server(fake, f"127.0.0.1:{port}")
    await server.stop(None)


@pytest.fixture
async def tls_kms(certs: Any) -> AsyncIterator[Server]:
    fake = FakeKms()
    fake.add_key(KEY)
    credentials = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())]
    )
    server, port = await _start(fake, credentials)
    yield Server(fake, f"127.0.0.1:{port}")
    await server.stop(None)


@pytest.fixture
async def provider(kms: Server) -> AsyncIterator[GcpKms]:
    settings = {"key_name": KEY, "endpoint": kms.endpoint, "insecure": "true"}
    gcp = GcpKms(ProviderConfig("gcp_kms", settings), timeout=5.0)
    yield gcp
    await gcp.aclose()


def _provider(endpoint: str, key: str = KEY, **settings: str) -> GcpKms:
    config = ProviderConfig(
        "gcp_kms", {"key_name": key, "endpoint": endpoint, "insecure": "true", **settings}
    )
    return GcpKms(config, timeout=5.0)


def test_crc32c_matches_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


async def test_wrapped_key_unwraps_with_the_same_context(provider: GcpKms) -> None:
    wrapped = await provider.wrap_key(DATA_KEY, CONTEXT)
    assert DATA_KEY not in wrapped
    assert await provider.unwrap_key(wrapped, CONTEXT) == DATA_KEY


async def test_round_trip_over_tls_with_a_private_ca(tls_kms: Server, certs: Any) -> None:
    config = ProviderConfig(
        "gcp_kms",
        {
            "key_name": KEY,
            "endpoint": tls_kms.endpoint,
            "ca_file": str(certs.ca_cert),
            "anonymous": "true",
        },
    )
    gcp = GcpKms(config, timeout=5.0)
    try:
        wrapped = await gcp.wrap_key(DATA_KEY, CONTEXT)
        assert await gcp.unwrap_key(wrapped, CONTEXT) == DATA_KEY
    finally:
        await gcp.aclose()
    assert tls_kms.fake.calls == ["encrypt", "decrypt"]


async def test_unwrap_with_another_context_fails(provider: GcpKms) -> None:
    wrapped = await provider.wrap_key(DATA_KEY, CONTEXT)
    with pytest.raises(SecretError) as caught:
        await provider.unwrap_key(wrapped, CONTEXT + b"x")
    message = str(caught.value)
    assert KEY in message
    assert "context" in message
    assert DATA_KEY.hex() not in message
    assert repr(DATA_KEY) not in message


async def test_disabled_key_is_reported_as_unusable(kms: Server, provider: GcpKms) -> None:
    kms.fake.disabled.add(KEY)
    with pytest.raises(SecretError, match="disabled or destroyed") as caught:
        await provider.wrap_key(DATA_KEY, CONTEXT)
    assert KEY in str(caught.value)


async def test_unknown_key_is_reported_as_not_found(kms: Server) -> None:
    gcp = _provider(kms.endpoint, key=OTHER_KEY)
    try:
        with pytest.raises(SecretError, match="key not found") as caught:
            await gcp.wrap_key(DATA_KEY, CONTEXT)
    finally:
        await gcp.aclose()
    assert OTHER_KEY in str(caught.value)


async def test_permission_denied_names_the_role_needed(kms: Server, provider: GcpKms) -> None:
    kms.fake.denied.add(KEY)
    with pytest.raises(SecretError, match="cryptoKeyEncrypterDecrypter"):
        await provider.unwrap_key(b"\x00" * 40, CONTEXT)


async def test_one_bad_encrypt_checksum_is_retried(kms: Server, provider: GcpKms) -> None:
    kms.fake.corrupt["encrypt"] = 1
    wrapped = await provider.wrap_key(DATA_KEY, CONTEXT)
    assert kms.fake.calls == ["encrypt", "encrypt"]
    assert await provider.unwrap_key(wrapped, CONTEXT) == DATA_KEY


async def test_one_bad_decrypt_checksum_is_retried(kms: Server, provider: GcpKms) -> None:
    wrapped = await provider.wrap_key(DATA_KEY, CONTEXT)
    kms.fake.corrupt["decrypt"] = 1
    assert await provider.unwrap_key(wrapped, CONTEXT) == DATA_KEY
    assert kms.fake.calls == ["encrypt", "decrypt", "decrypt"]


async def test_persistent_checksum_mismatch_is_an_error(kms: Server, provider: GcpKms) -> None:
    wrapped = await provider.wrap_key(DATA_KEY, CONTEXT)
    kms.fake.corrupt["decrypt"] = 100
    with pytest.raises(SecretError, match="integrity check 3 times") as caught:
        await provider.unwrap_key(wrapped, CONTEXT)
    assert DATA_KEY.hex() not in str(caught.value)
    assert kms.fake.calls.count("decrypt") == 3


async def test_check_round_trips_a_probe(kms: Server, provider: GcpKms) -> None:
    await provider.check()
    assert kms.fake.calls == ["encrypt", "decrypt"]


async def test_check_reports_a_disabled_key(kms: Server, provider: GcpKms) -> None:
    kms.fake.disabled.add(KEY)
    with pytest.raises(SecretError, match="cannot be used"):
        await provider.check()


@pytest.mark.parametrize("flag", ["insecure", "anonymous"])
def test_insecure_and_anonymous_need_a_loopback_endpoint(flag: str) -> None:
    config = ProviderConfig(
        "gcp_kms", {"key_name": KEY, "endpoint": "kms.example.com:443", flag: "true"}
    )
    with pytest.raises(SecretError, match="loopback"):
        GcpKms(config)


@pytest.mark.parametrize(
    "key_name",
    ["", "projects/p/keyRings/r/cryptoKeys/k", f"{KEY}/cryptoKeyVersions/1", "tether"],
)
def test_key_name_must_be_a_crypto_key(key_name: str) -> None:
    with pytest.raises(SecretError, match="key_name"):
        GcpKms(ProviderConfig("gcp_kms", {"key_name": key_name}))


async def test_bad_service_account_json_is_refused_without_echoing_it() -> None:
    secret_looking = '{"type": "service_account", "private_key": "-----BEGIN hunter2'
    config = ProviderConfig(
        "gcp_kms", {"key_name": KEY}, credentials={"service_account_json": secret_looking}
    )
    gcp = GcpKms(config)
    with pytest.raises(SecretError, match="not a valid service account key") as caught:
        await gcp.check()
    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


async def test_missing_default_credentials_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    gcp = GcpKms(ProviderConfig("gcp_kms", {"key_name": KEY}))
    with pytest.raises(SecretError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        await gcp.check()


def test_credentials_are_refused_for_an_anonymous_endpoint() -> None:
    config = ProviderConfig(
        "gcp_kms",
        {"key_name": KEY, "endpoint": "127.0.0.1:1", "insecure": "true"},
        credentials={"service_account_json": json.dumps({"type": "service_account"})},
    )
    with pytest.raises(SecretError, match="anonymous"):
        GcpKms(config)


def test_repr_shows_no_credentials() -> None:
    config = ProviderConfig(
        "gcp_kms", {"key_name": KEY}, credentials={"service_account_json": "hunter2"}
    )
    assert "hunter2" not in repr(GcpKms(config))


async def test_unreachable_endpoint_is_reported_within_the_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ProviderConfig(
        "gcp_kms", {"key_name": KEY, "endpoint": f"127.0.0.1:{port}", "insecure": "true"}
    )
    gcp = GcpKms(config, timeout=0.5)
    try:
        with pytest.raises(SecretError, match=r"no answer within 0\.5 s"):
            await gcp.wrap_key(DATA_KEY, CONTEXT)
    finally:
        await gcp.aclose()
