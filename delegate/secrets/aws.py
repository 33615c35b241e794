"""AWS: KMS envelopes (``aws_kms``) and Secrets Manager references
(``aws_secrets_manager``), through boto3 in a worker thread.

Credentials: ``{"access_key_id", "secret_access_key"[, "session_token"]}`` from the builtin
manager, else boto3's default chain (environment, shared files, instance or task role).
Settings: ``region``, ``endpoint`` (a VPC endpoint, or a test server), and for KMS ``key_id``
(a key id, key ARN, alias name or alias ARN).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from delegate.secrets.base import (
    EnvelopeProvider,
    ProviderConfig,
    ReferenceProvider,
    SecretError,
    SecretRef,
)
from shared.envelope import EnvelopeContext, EnvelopeError

__all__ = ["AwsKms", "AwsSecretsManager"]

_CRED_KEYS = frozenset({"access_key_id", "secret_access_key", "session_token"})
_NOT_FOUND = frozenset({"NotFoundException", "ResourceNotFoundException"})
_DENIED = frozenset({"AccessDeniedException", "AccessDenied"})
_BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
    }
)
_WRONG_CIPHERTEXT = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
# Every failure to connect, TLS included, and a connection that broke or went quiet.
_UNREACHABLE = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)


class _AwsError(SecretError):
    """A SecretError that keeps the AWS error code, for the callers that branch on it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class _AwsClient:
    """A boto3 client made on first use, in the worker thread (making one is slow)."""

    def __init__(self, config: ProviderConfig, service: str, *, timeout: float) -> None:
        self.kind = config.kind
        self._service = service
        self._settings = config.settings
        creds = dict(config.credentials)
        if creds and (
            not set(creds) <= _CRED_KEYS or not {"access_key_id", "secret_access_key"} <= set(creds)
        ):
            raise SecretError(
                f"{self.kind}: credentials must hold access_key_id and secret_access_key"
                " (and optionally session_token)"
            )
        self._creds = creds
        self._timeout = timeout
        self._lock = threading.Lock()
        self._client: Any = None

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                session = boto3.session.Session(
                    aws_access_key_id=self._creds.get("access_key_id"),
                    aws_secret_access_key=self._creds.get("secret_access_key"),
                    aws_session_token=self._creds.get("session_token"),
                    region_name=self._settings.get("region") or None,
                )
                try:
                    self._client = session.client(
                        self._service,
                        endpoint_url=self._settings.get("endpoint") or None,
                        config=botocore.config.Config(
                            connect_timeout=self._timeout,
                            read_timeout=self._timeout,
                            retries={"max_attempts": 3, "mode": "standard"},
                        ),
                    )
                except ValueError as exc:  # "Invalid endpoint: ..."; settings, not secrets
                    raise SecretError(f"{self.kind}: unusable settings: {exc}") from None
            return self._client

    async def call(self, op: Callable[[Any], Any], what: str) -> Any:
        def run() -> Any:
            return op(self.get())

        try:
            return await asyncio.to_thread(run)
        except botocore.exceptions.ClientError as exc:
            raise _client_error(exc, self.kind, what) from exc
        except botocore.exceptions.ParamValidationError:
            # Its message may quote a parameter, and a parameter may be a key or a value.
            raise SecretError(f"{self.kind}: invalid request: {what}") from None
        except botocore.exceptions.NoRegionError:
            raise SecretError(f"{self.kind}: no AWS region: set 'region' ({what})") from None
        except (
            botocore.exceptions.NoCredentialsError,
            botocore.exceptions.PartialCredentialsError,
        ):
            raise SecretError(f"{self.kind}: no AWS credentials found ({what})") from None
        except botocore.exceptions.SSLError as exc:
            raise SecretError(f"{self.kind}: TLS with AWS failed ({what})") from exc
        except _UNREACHABLE as exc:
            raise SecretError(f"{self.kind}: cannot reach AWS ({what})") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise SecretError(f"{self.kind}: {what} failed: {type(exc).__name__}") from exc


def _client_error(exc: Any, kind: str, what: str) -> _AwsError:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return _AwsError(_client_message(code, exc, kind, what), code)


def _client_message(code: str, exc: Any, kind: str, what: str) -> str:
    if code in _NOT_FOUND:
        return f"{kind}: not found: {what}"
    if code in _DENIED:
        return f"{kind}: permission denied: {what}"
    if code in _BAD_CREDENTIALS:
        return f"{kind}: AWS refused the credentials ({code}): {what}"
    if code == "DisabledException":
        return f"{kind}: the key is disabled: {what}"
    if code == "KMSInvalidStateException":
        return f"{kind}: the key is not in a usable state: {what}"
    if code in _WRONG_CIPHERTEXT:
        return (
            f"{kind}: cannot {what}: the wrapped key is corrupt,"
            " or was wrapped for another context or key"
        )
    if code == "DecryptionFailure":
        return f"{kind}: Secrets Manager cannot decrypt it with its KMS key: {what}"
    if code in {"ThrottlingException", "Throttling", "LimitExceededException"}:
        return f"{kind}: throttled by AWS: {what}"
    return f"{kind}: {what} failed: {code or type(exc).__name__}"


class AwsKms(EnvelopeProvider):
    """Data keys wrapped by a symmetric KMS key, the context bound as EncryptionContext.

    KMS refuses a disabled key itself, but not every KMS-compatible service does (moto does
    not), so the key's state is checked here too and the answer kept for ``key_state_ttl``
    seconds. Only an enabled state is kept: a re-enabled key is usable on the next call.
    A principal allowed to Encrypt and Decrypt but not to DescribeKey is not locked out:
    the check is then left to KMS.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        timeout: float = 10.0,
        key_state_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = config.kind
        key_id = config.settings.get("key_id")
        if not key_id:
            raise SecretError(f"{self.kind}: setting 'key_id' is required")
        self._key_id = key_id
        self._aws = _AwsClient(config, "kms", timeout=timeout)
        self._ttl = key_state_ttl
        self._clock = clock
        self._usable_until = float("-inf")

    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        kms_context = self._kms_context(context)
        await self._ensure_enabled()
        answer = await self._aws.call(
            lambda c: c.encrypt(
                KeyId=self._key_id, Plaintext=data_key, EncryptionContext=kms_context
            ),
            f"wrap with key '{self._key_id}'",
        )
        return bytes(answer["CiphertextBlob"])

    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        kms_context = self._kms_context(context)
        await self._ensure_enabled()
        answer = await self._aws.call(
            lambda c: c.decrypt(
                KeyId=self._key_id, CiphertextBlob=wrapped, EncryptionContext=kms_context
            ),
            f"unwrap with key '{self._key_id}'",
        )
        return bytes(answer["Plaintext"])

    async def generate_data_key(self, context: bytes) -> tuple[bytes, bytes]:
        """A new 256-bit data key from KMS: (plaintext key, wrapped key).

        The wrapped key opens with :meth:`unwrap_key` and the same context.
        """
        kms_context = self._kms_context(context)
        await self._ensure_enabled()
        answer = await self._aws.call(
            lambda c: c.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=kms_context
            ),
            f"generate a data key with key '{self._key_id}'",
        )
        return bytes(answer["Plaintext"]), bytes(answer["CiphertextBlob"])

    async def check(self) -> None:
        """DescribeKey: the key exists, we may see it, it is enabled and symmetric."""
        self._usable_until = float("-inf")
        await self._describe(tolerate_denied=False)

    async def _ensure_enabled(self) -> None:
        if self._clock() < self._usable_until:
            return
        await self._describe(tolerate_denied=True)

    async def _describe(self, *, tolerate_denied: bool) -> None:
        what = f"describe key '{self._key_id}'"
        try:
            answer = await self._aws.call(lambda c: c.describe_key(KeyId=self._key_id), what)
        except _AwsError as exc:
            if tolerate_denied and exc.code in _DENIED:
                self._usable_until = self._clock() + self._ttl
                return
            raise
        meta = answer.get("KeyMetadata") or {}
        state = meta.get("KeyState")
        if state == "Disabled":
            raise SecretError(f"{self.kind}: key '{self._key_id}' is disabled")
        if state == "PendingDeletion":
            raise SecretError(f"{self.kind}: key '{self._key_id}' is pending deletion")
        if state != "Enabled":
            raise SecretError(f"{self.kind}: key '{self._key_id}' is not enabled (state {state})")
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec")
        usage = meta.get("KeyUsage")
        if (spec and spec != "SYMMETRIC_DEFAULT") or (usage and usage != "ENCRYPT_DECRYPT"):
            raise SecretError(
                f"{self.kind}: key '{self._key_id}' is not a symmetric encryption key"
            )
        self._usable_until = self._clock() + self._ttl

    def _kms_context(self, context: bytes) -> dict[str, str]:
        try:
            return EnvelopeContext.from_canonical(context).as_kms_context()
        except EnvelopeError:
            raise SecretError(
                f"{self.kind}: key '{self._key_id}': the context is not an envelope context"
            ) from None


class AwsSecretsManager(ReferenceProvider):
    """A value kept in Secrets Manager.

    ``ref.path`` is the secret's name or ARN. ``ref.version`` is a VersionId; without it
    the ``AWSCURRENT`` stage is asked for by name, never left to the service's default.
    ``ref.key`` picks a field of a JSON object in SecretString; a string field is returned
    as UTF-8, any other JSON value as its compact JSON text. SecretBinary is returned as is.
    """

    def __init__(self, config: ProviderConfig, *, timeout: float = 10.0) -> None:
        self.kind = config.kind
        self._aws = _AwsClient(config, "secretsmanager", timeout=timeout)

    async def fetch(self, ref: SecretRef) -> bytes:
        if not ref.path:
            raise SecretError(f"{self.kind}: the reference has no path")
        where = f"secret '{ref.path}'"
        params: dict[str, str] = {"SecretId": ref.path}
        if ref.version is None:
            params["VersionStage"] = "AWSCURRENT"
        else:
            params["VersionId"] = ref.version
            where += f" version '{ref.version}'"
        answer = await self._aws.call(lambda c: c.get_secret_value(**params), where)
        if "SecretString" in answer and answer["SecretString"] is not None:
            text: str = answer["SecretString"]
            if ref.key is None:
                return text.encode("utf-8")
            return self._pick(text, ref.key, where)
        if "SecretBinary" in answer and answer["SecretBinary"] is not None:
            if ref.key is not None:
                raise SecretError(f"{self.kind}: {where} is binary; it has no key '{ref.key}'")
            return bytes(answer["SecretBinary"])
        raise SecretError(f"{self.kind}: {where} has no value")

    def _pick(self, text: str, key: str, where: str) -> bytes:
        try:
            document = json.loads(text)
        except ValueError:
            # The decode error carries the document, which is the secret: do not chain it.
            document = None
        if not isinstance(document, dict):
            raise SecretError(f"{self.kind}: {where} is not a JSON object; key '{key}' is unusable")
        if key not in document:
            raise SecretError(f"{self.kind}: {where} has no key '{key}'")
        value = document[key]
        if isinstance(value, str):
            return value.encode("utf-8")
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    async def check(self) -> None:
        """ListSecrets with one result: the endpoint answers and accepts the credentials.

        A refusal to list still proves both (AWS authenticated us before it said no), and
        fetching needs no listing, so it passes; a reference is checked by fetching it.
        """
        try:
            await self._aws.call(lambda c: c.list_secrets(MaxResults=1), "list secrets")
        except _AwsError as exc:
            if exc.code not in _DENIED:
                raise
