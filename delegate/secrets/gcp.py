"""Google Cloud KMS as an envelope provider: Encrypt and Decrypt with a symmetric CryptoKey.

Settings:

- ``key_name``: the CryptoKey, ``projects/P/locations/L/keyRings/R/cryptoKeys/K``. Encrypt
  uses its primary version; Decrypt finds the version from the ciphertext.
- ``endpoint`` (optional): ``host:port`` instead of ``cloudkms.googleapis.com:443``, e.g. a
  Private Service Connect name.
- ``ca_file`` (optional): trust only this CA for the endpoint's TLS certificate.
- ``insecure`` / ``anonymous`` (optional, ``"true"``): plaintext gRPC, and no credentials at
  all. Both are refused unless ``endpoint`` is a loopback address: they exist for tests and
  local emulators. ``insecure`` implies ``anonymous``, since a token must not travel in the
  clear.

Credentials: ``{"service_account_json": "<the key file's content>"}`` from the builtin
secret manager, else the delegate's environment (GOOGLE_APPLICATION_CREDENTIALS, workload
identity, the metadata server: Application Default Credentials).

The envelope context travels as additional authenticated data, so a wrapped key only
unwraps with the context it was wrapped under. Every request and response carries CRC32C
checksums, checked as Google recommends: a mismatch discards the response and the call is
tried again a limited number of times.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

import google.auth
import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.api_core.retry import AsyncRetry, if_exception_type
from google.auth import credentials as auth_credentials
from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import (
    KeyManagementServiceGrpcAsyncIOTransport,
)
from google.oauth2 import service_account

from delegate.secrets.base import EnvelopeProvider, ProviderConfig, SecretError

__all__ = ["GcpKms", "crc32c"]

_SCOPES = ["https://www.googleapis.com/auth/cloudkms"]
_KEY_NAME = re.compile(r"projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/cryptoKeys/[^/\s]+")
_CHECK_CONTEXT = b"tether:connection-check"
_T = TypeVar("_T")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum Cloud KMS uses for integrity fields.

    A table-driven loop in Python: the data here is a 32-byte key, its ciphertext and a
    short context, so speed does not matter and google-crc32c is not needed.
    """
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class GcpKms(EnvelopeProvider):
    """Wraps data keys with a Cloud KMS symmetric key, through the gRPC async client."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        timeout: float = 10.0,
        checksum_attempts: int = 3,
    ) -> None:
        self.kind = config.kind
        settings = config.settings
        self._key_name = settings.get("key_name", "").strip()
        if not _is_key_name(self._key_name):
            raise SecretError(
                "gcp_kms: key_name must be projects/P/locations/L/keyRings/R/cryptoKeys/K"
            )
        self._endpoint = settings.get("endpoint", "").strip() or None
        loopback = self._endpoint is not None and _is_loopback(self._endpoint)
        self._insecure = _flag(settings, "insecure", self._key_name)
        self._anonymous = self._insecure or _flag(settings, "anonymous", self._key_name)
        if (self._insecure or self._anonymous) and not loopback:
            raise SecretError(
                f"gcp_kms {self._key_name}: insecure and anonymous are only allowed "
                "for a loopback endpoint"
            )
        unknown = sorted(set(config.credentials) - {"service_account_json"})
        if unknown:
            raise SecretError(
                f"gcp_kms {self._key_name}: unsupported credential fields {unknown}; "
                "expected service_account_json"
            )
        if self._anonymous and config.credentials:
            raise SecretError(
                f"gcp_kms {self._key_name}: credentials given for an anonymous endpoint"
            )
        ca_file = settings.get("ca_file", "").strip()
        self._ca_file = Path(ca_file) if ca_file else None
        if self._insecure and self._ca_file is not None:
            raise SecretError(f"gcp_kms {self._key_name}: ca_file given with insecure")
        self._service_account_json = config.credentials.get("service_account_json")
        self._timeout = timeout
        self._checksum_attempts = max(1, checksum_attempts)
        # Only transient failures are retried, and never past the caller's timeout.
        self._retry = AsyncRetry(
            predicate=if_exception_type(
                api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded
            ),
            initial=0.1,
            maximum=2.0,
            timeout=timeout,
        )
        self._client: kms_v1.KeyManagementServiceAsyncClient | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"GcpKms(key_name={self._key_name!r}, endpoint={self._endpoint!r})"

    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        client = await self._get_client()
        request = kms_v1.EncryptRequest(
            name=self._key_name,
            plaintext=data_key,
            plaintext_crc32c=crc32c(data_key),
            additional_authenticated_data=context,
            additional_authenticated_data_crc32c=crc32c(context),
        )
        for _ in range(self._checksum_attempts):
            response = await self._call("encrypt", client.encrypt, request)
            if not response.name.startswith(self._key_name + "/cryptoKeyVersions/"):
                raise SecretError(f"gcp_kms {self._key_name}: encrypt answered for another key")
            if (
                response.verified_plaintext_crc32c
                and response.verified_additional_authenticated_data_crc32c
                and _checksum(response.ciphertext_crc32c) == crc32c(response.ciphertext)
            ):
                return bytes(response.ciphertext)
        raise SecretError(
            f"gcp_kms {self._key_name}: encrypt failed its integrity check "
            f"{self._checksum_attempts} times"
        )

    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        client = await self._get_client()
        request = kms_v1.DecryptRequest(
            name=self._key_name,
            ciphertext=wrapped,
            ciphertext_crc32c=crc32c(wrapped),
            additional_authenticated_data=context,
            additional_authenticated_data_crc32c=crc32c(context),
        )
        for _ in range(self._checksum_attempts):
            response = await self._call("decrypt", client.decrypt, request)
            if _checksum(response.plaintext_crc32c) == crc32c(response.plaintext):
                return bytes(response.plaintext)
        raise SecretError(
            f"gcp_kms {self._key_name}: decrypt failed its integrity check "
            f"{self._checksum_attempts} times"
        )

    async def check(self) -> None:
        """Encrypt and decrypt a random probe: proves reach, rights and an enabled key."""
        probe = os.urandom(32)
        wrapped = await self.wrap_key(probe, _CHECK_CONTEXT)
        if await self.unwrap_key(wrapped, _CHECK_CONTEXT) != probe:
            raise SecretError(f"gcp_kms {self._key_name}: the probe did not round-trip")

    async def aclose(self) -> None:
        """Close the gRPC channel. The provider opens a new one if used again."""
        client, self._client = self._client, None
        if client is not None:
            await client.transport.close()  # type: ignore[no-untyped-call]  # untyped in the SDK

    async def _call(
        self,
        operation: str,
        method: Callable[..., Awaitable[_T]],
        request: kms_v1.EncryptRequest | kms_v1.DecryptRequest,
    ) -> _T:
        """One RPC, its failures translated into messages that name the key and no data."""
        prefix = f"gcp_kms {self._key_name}: {operation}"
        try:
            return await method(request=request, retry=self._retry, timeout=self._timeout)
        except api_exceptions.NotFound:
            raise SecretError(f"{prefix}: key not found") from None
        except api_exceptions.PermissionDenied:
            raise SecretError(
                f"{prefix}: permission denied (the caller needs "
                "roles/cloudkms.cryptoKeyEncrypterDecrypter on the key)"
            ) from None
        except api_exceptions.FailedPrecondition:
            raise SecretError(
                f"{prefix}: the key cannot be used (its version is disabled or destroyed)"
            ) from None
        except api_exceptions.InvalidArgument:
            if operation == "decrypt":
                raise SecretError(
                    f"{prefix}: refused (the ciphertext is damaged, or was wrapped with "
                    "another key or another context)"
                ) from None
            raise SecretError(f"{prefix}: the request was refused as invalid") from None
        except api_exceptions.Unauthenticated:
            raise SecretError(f"{prefix}: the credentials were not accepted") from None
        except (api_exceptions.RetryError, api_exceptions.DeadlineExceeded):
            raise SecretError(f"{prefix}: no answer within {self._timeout:g} s") from None
        except api_exceptions.GoogleAPICallError as exc:
            raise SecretError(f"{prefix}: failed ({_status_name(exc)})") from None
        except GoogleAuthError as exc:
            raise SecretError(
                f"{prefix}: could not get an access token ({type(exc).__name__})"
            ) from None

    async def _get_client(self) -> kms_v1.KeyManagementServiceAsyncClient:
        async with self._lock:
            if self._client is None:
                self._client = await self._build_client()
            return self._client

    async def _build_client(self) -> kms_v1.KeyManagementServiceAsyncClient:
        # Files and Application Default Credentials may block (ADC can ask the metadata
        # server), so they are loaded off the event loop.
        credentials, root_certificates = await asyncio.to_thread(self._load)
        options = ClientOptions(api_endpoint=self._endpoint) if self._endpoint else None
        if self._insecure:
            assert self._endpoint is not None  # checked in __init__
            channel = grpc.aio.insecure_channel(self._endpoint)
            transport = KeyManagementServiceGrpcAsyncIOTransport(
                host=self._endpoint, channel=channel
            )
            return kms_v1.KeyManagementServiceAsyncClient(
                transport=transport, client_options=options
            )
        if root_certificates is not None:
            transport = KeyManagementServiceGrpcAsyncIOTransport(
                host=self._endpoint or "cloudkms.googleapis.com",
                credentials=credentials,
                ssl_channel_credentials=grpc.ssl_channel_credentials(
                    root_certificates=root_certificates
                ),
            )
            return kms_v1.KeyManagementServiceAsyncClient(
                transport=transport, client_options=options
            )
        return kms_v1.KeyManagementServiceAsyncClient(
            credentials=credentials, client_options=options
        )

    def _load(self) -> tuple[auth_credentials.Credentials, bytes | None]:
        """Credentials and the CA bundle, read from disk or the environment (blocking)."""
        root_certificates = None
        if self._ca_file is not None:
            try:
                root_certificates = self._ca_file.read_bytes()
            except OSError as exc:
                raise SecretError(
                    f"gcp_kms {self._key_name}: cannot read ca_file {self._ca_file} "
                    f"({exc.strerror})"
                ) from None
        if self._anonymous:
            anonymous = auth_credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
            return anonymous, root_certificates
        if self._service_account_json is not None:
            return self._service_account(), root_certificates
        try:
            credentials, _project = google.auth.default(scopes=_SCOPES)
        except DefaultCredentialsError:
            raise SecretError(
                f"gcp_kms {self._key_name}: no credentials: give service_account_json, "
                "or set GOOGLE_APPLICATION_CREDENTIALS or another Application Default "
                "Credentials source on the delegate"
            ) from None
        return credentials, root_certificates

    def _service_account(self) -> auth_credentials.Credentials:
        assert self._service_account_json is not None
        invalid = SecretError(
            f"gcp_kms {self._key_name}: service_account_json is not a valid service account key"
        )
        # No detail from the parser: its messages can quote the key file.
        try:
            info = json.loads(self._service_account_json)
        except ValueError:
            raise invalid from None
        if not isinstance(info, dict):
            raise invalid
        try:
            credentials: auth_credentials.Credentials = (
                service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]  # untyped in google-auth
                    info, scopes=_SCOPES
                )
            )
        except (ValueError, TypeError, KeyError, GoogleAuthError):
            raise invalid from None
        return credentials


def _is_key_name(name: str) -> bool:
    return _KEY_NAME.fullmatch(name) is not None


def _is_loopback(endpoint: str) -> bool:
    try:
        host = urllib.parse.urlsplit("//" + endpoint).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(settings: Mapping[str, str], name: str, key_name: str) -> bool:
    value = settings.get(name, "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise SecretError(f"gcp_kms {key_name}: {name} must be true or false")


def _checksum(value: object) -> int | None:
    # proto-plus gives an Int64Value wrapper field as a plain int, or None when unset; the
    # SDK's annotations still say Int64Value.
    if isinstance(value, int):
        return value
    inner = getattr(value, "value", None)
    return inner if isinstance(inner, int) else None


def _status_name(exc: api_exceptions.GoogleAPICallError) -> str:
    code = exc.grpc_status_code
    name = getattr(code, "name", None)
    return str(name) if name else type(exc).__name__
