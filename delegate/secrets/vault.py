"""HashiCorp Vault and OpenBao: KV v2 references (``vault_kv``) and Transit envelopes
(``vault_transit``), through hvac in a worker thread.

Authentication, in this order:

1. ``credentials`` from the builtin manager: ``{"token"}``, or ``{"role_id", "secret_id"}``
   for an AppRole login at the mount named by setting ``approle_mount`` (``approle``).
2. The delegate's environment: the file named by setting ``token_file`` (re-read when Vault
   refuses the token, so an agent that rotates it is followed), the AppRole file named by
   setting ``approle_file`` (JSON ``{"role_id", "secret_id"}``), then ``VAULT_TOKEN``.
   Explicit settings win over the ambient variable.

An AppRole token is renewed when two thirds of its TTL have passed, and replaced by a new
login when renewal fails. A 403 is answered once by getting a token afresh: the token file
is read again; an AppRole login is made again unless the old token still looks itself up
(then the policy refused, and a login would not change that). When that yields nothing
new, or the retry is refused too, the caller gets "permission denied".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests.exceptions

from delegate.secrets.base import (
    EnvelopeProvider,
    ProviderConfig,
    ReferenceProvider,
    SecretError,
    SecretRef,
)

__all__ = ["VaultKv", "VaultTransit"]

T = TypeVar("T")

_DETAIL_MAX = 200
# The fraction of a renewable token's TTL after which it is renewed.
_RENEW_AFTER = 2 / 3


class _VaultSession:
    """One hvac client, the token it carries, and how to get a new one."""

    def __init__(
        self, config: ProviderConfig, *, timeout: float, clock: Callable[[], float]
    ) -> None:
        settings = config.settings
        self.kind = config.kind
        url = settings.get("url") or os.environ.get("VAULT_ADDR")
        if not url:
            raise SecretError(f"{self.kind}: setting 'url' is required")
        self.url = url
        self._clock = clock
        self._lock = threading.Lock()
        self._renew_at: float | None = None
        self._renewable = False
        self._has_token = False
        self._approle_mount = settings.get("approle_mount") or "approle"
        self._static_token: str | None = None
        self._token_file: Path | None = None
        self._approle: tuple[str, str] | None = None
        self._approle_file: Path | None = None
        creds = config.credentials
        if creds:
            if set(creds) == {"token"}:
                self._static_token = creds["token"]
            elif set(creds) == {"role_id", "secret_id"}:
                self._approle = (creds["role_id"], creds["secret_id"])
            else:
                raise SecretError(
                    f"{self.kind}: credentials must hold 'token', or 'role_id' and 'secret_id'"
                )
        elif settings.get("token_file"):
            self._token_file = Path(settings["token_file"])
        elif settings.get("approle_file"):
            self._approle_file = Path(settings["approle_file"])
        elif os.environ.get("VAULT_TOKEN"):
            self._static_token = os.environ["VAULT_TOKEN"]
        else:
            raise SecretError(
                f"{self.kind}: no Vault credentials: give a token or AppRole credentials,"
                " set 'token_file' or 'approle_file', or VAULT_TOKEN"
            )
        verify: bool | str = settings.get("ca_file") or os.environ.get("VAULT_CACERT") or True
        self.client = hvac.Client(
            url=url, verify=verify, timeout=timeout, namespace=settings.get("namespace") or None
        )
        # hvac picked up VAULT_TOKEN or ~/.vault-token on its own; send nothing until we log in.
        self.client.token = None

    def call(self, op: Callable[[Any], T]) -> T:
        """Run ``op(client)`` with a valid token, getting a new one once on a 403."""
        used = self._ensure_token()
        try:
            return op(self.client)
        except hvac.exceptions.Forbidden:
            if not self._refresh(used):
                raise
        return op(self.client)

    def _ensure_token(self) -> str:
        with self._lock:
            if not self._has_token:
                self._login()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                self._renew_or_login()
            return str(self.client.token)

    def _refresh(self, used: str) -> bool:
        """A new token after a 403; False when the source can only give the same one."""
        with self._lock:
            if self.client.token != used:
                return True  # another thread already replaced it
            if self._static_token is not None:
                return False
            if self._token_file is None and self._token_is_valid():
                # The policy said no, not the token: a new login would only spend the
                # secret_id's uses (and make a token) to hear the same answer.
                return False
            self._login()
            return str(self.client.token) != used

    def _token_is_valid(self) -> bool:
        try:
            self.client.auth.token.lookup_self()
        except (hvac.exceptions.VaultError, OSError):
            return False
        return True

    def _renew_or_login(self) -> None:
        if self._renewable:
            try:
                answer = self.client.auth.token.renew_self()
            except (hvac.exceptions.VaultError, OSError):
                pass  # a new login below, and its errors are the ones worth reporting
            else:
                self._note_lease(answer.get("auth") or {})
                return
        self._login()

    def _login(self) -> None:
        if self._static_token is not None:
            self.client.token = self._static_token
        elif self._token_file is not None:
            self.client.token = self._read_token_file(self._token_file)
        else:
            role_id, secret_id = self._approle or self._read_approle_file()
            try:
                answer = self.client.auth.approle.login(
                    role_id=role_id, secret_id=secret_id, mount_point=self._approle_mount
                )
            except (hvac.exceptions.VaultError, OSError) as exc:
                raise vault_error(
                    exc, self.kind, f"AppRole login at mount '{self._approle_mount}'", self.url
                ) from exc
            self._note_lease(answer.get("auth") or {})
        self._has_token = True

    def _note_lease(self, auth: dict[str, Any]) -> None:
        ttl = auth.get("lease_duration") or 0
        self._renewable = bool(auth.get("renewable"))
        self._renew_at = self._clock() + ttl * _RENEW_AFTER if ttl > 0 else None

    def _read_token_file(self, path: Path) -> str:
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(
                f"{self.kind}: cannot read token file {path}: {exc.strerror}"
            ) from None
        if not token:
            raise SecretError(f"{self.kind}: token file {path} is empty")
        return token

    def _read_approle_file(self) -> tuple[str, str]:
        path = self._approle_file
        assert path is not None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SecretError(
                f"{self.kind}: cannot read AppRole file {path}: {exc.strerror}"
            ) from None
        except ValueError:
            raise SecretError(f"{self.kind}: AppRole file {path} is not valid JSON") from None
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("role_id"), str)
            or not isinstance(raw.get("secret_id"), str)
        ):
            raise SecretError(f"{self.kind}: AppRole file {path} must hold role_id and secret_id")
        return raw["role_id"], raw["secret_id"]

    async def check_token(self) -> None:
        try:
            await asyncio.to_thread(self.call, lambda c: c.auth.token.lookup_self())
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise vault_error(exc, self.kind, "token lookup", self.url) from exc


def vault_error(exc: Exception, kind: str, what: str, url: str) -> SecretError:
    """Translate an hvac or transport error; Vault's own error text never holds a value."""
    if isinstance(exc, requests.exceptions.SSLError):
        return SecretError(f"{kind}: TLS with Vault at {url} failed (is 'ca_file' right?) ({what})")
    if isinstance(exc, OSError):  # requests' ConnectionError and Timeout are OSErrors
        return SecretError(f"{kind}: cannot reach Vault at {url} ({what})")
    if isinstance(exc, hvac.exceptions.Forbidden):
        return SecretError(f"{kind}: permission denied: {what}")
    if isinstance(exc, hvac.exceptions.InvalidPath):
        return SecretError(f"{kind}: not found: {what}")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return SecretError(f"{kind}: Vault at {url} is sealed or unavailable ({what})")
    if isinstance(exc, hvac.exceptions.RateLimitExceeded):
        return SecretError(f"{kind}: rate limited by Vault: {what}")
    detail = _detail(exc)
    if isinstance(exc, hvac.exceptions.InvalidRequest):
        return SecretError(f"{kind}: refused: {what}: {detail}")
    return SecretError(f"{kind}: {what} failed: {type(exc).__name__}: {detail}")


def _detail(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if isinstance(errors, list) else ""
    text = text or "no detail"
    return text if len(text) <= _DETAIL_MAX else text[:_DETAIL_MAX] + "..."


class VaultKv(ReferenceProvider):
    """A value kept in a KV v2 engine. Settings: url, mount (``secret``), namespace, ca_file.

    ``ref.key`` names the field to return; without it the secret must have exactly one.
    ``ref.version`` pins a version; without it the current one is read. A string field is
    returned as UTF-8; any other JSON value as its compact JSON text.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = _VaultSession(config, timeout=timeout, clock=clock)
        self.kind = config.kind
        self._mount = config.settings.get("mount") or "secret"

    async def fetch(self, ref: SecretRef) -> bytes:
        where = f"secret '{ref.path}' in mount '{self._mount}'"
        if ref.version is not None:
            where += f" version {ref.version}"
        if not ref.path.strip("/"):
            raise SecretError(f"{self.kind}: the reference has no path")
        version: int | None = None
        if ref.version is not None:
            if not ref.version.isascii() or not ref.version.isdigit() or int(ref.version) < 1:
                raise SecretError(f"{self.kind}: {where}: a KV version is a positive integer")
            version = int(ref.version)

        def read(client: Any) -> Any:
            return client.secrets.kv.v2.read_secret_version(
                path=ref.path,
                version=version,
                mount_point=self._mount,
                raise_on_deleted_version=False,
            )

        try:
            answer = await asyncio.to_thread(self._session.call, read)
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise vault_error(exc, self.kind, where, self._session.url) from exc
        data = (answer.get("data") or {}).get("data")
        if data is None:
            raise SecretError(f"{self.kind}: {where} is deleted or destroyed")
        if not isinstance(data, dict):
            raise SecretError(f"{self.kind}: {where} is not a KV v2 secret")
        if ref.key is None:
            if len(data) != 1:
                raise SecretError(
                    f"{self.kind}: {where} has {len(data)} keys; the reference must name one"
                )
            (value,) = data.values()
        elif ref.key in data:
            value = data[ref.key]
        else:
            raise SecretError(f"{self.kind}: {where} has no key '{ref.key}'")
        if isinstance(value, str):
            return value.encode("utf-8")
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    async def check(self) -> None:
        await self._session.check_token()


class VaultTransit(EnvelopeProvider):
    """Data keys wrapped by a Transit key. Settings: url, mount (``transit``), key_name.

    The context is bound with ``associated_data`` (AEAD additional data), which OpenBao
    2.x and Vault 1.14+ accept for the AEAD key types (aes128-gcm96, aes256-gcm96,
    chacha20-poly1305) and refuse for the others. We prefer it to a ``derived`` key with a
    ``context``: it works on the keys operators already have (derivation is fixed when the
    key is made), and binding is what AEAD data is for, while derivation exists to give
    each context its own key. The context is sent as ``context`` too: Transit ignores it on
    a plain key and needs it on a derived one, so both kinds of key work and stay bound.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = _VaultSession(config, timeout=timeout, clock=clock)
        self.kind = config.kind
        self._mount = config.settings.get("mount") or "transit"
        key_name = config.settings.get("key_name")
        if not key_name:
            raise SecretError(f"{self.kind}: setting 'key_name' is required")
        self._key = key_name
        self._what = f"transit key '{key_name}' in mount '{self._mount}'"

    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        ctx = base64.b64encode(context).decode("ascii")

        def encrypt(client: Any) -> Any:
            return client.secrets.transit.encrypt_data(
                name=self._key,
                plaintext=base64.b64encode(data_key).decode("ascii"),
                associated_data=ctx,
                context=ctx,
                mount_point=self._mount,
            )

        answer = await self._run(encrypt, "wrap with")
        ciphertext = (answer.get("data") or {}).get("ciphertext")
        if not isinstance(ciphertext, str):
            raise SecretError(f"{self.kind}: no ciphertext in the answer for {self._what}")
        return ciphertext.encode("ascii")

    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            ciphertext = wrapped.decode("ascii")
        except UnicodeDecodeError:
            raise SecretError(f"{self.kind}: wrapped key is not a Transit ciphertext") from None
        ctx = base64.b64encode(context).decode("ascii")

        def decrypt(client: Any) -> Any:
            return client.secrets.transit.decrypt_data(
                name=self._key,
                ciphertext=ciphertext,
                associated_data=ctx,
                context=ctx,
                mount_point=self._mount,
            )

        answer = await self._run(decrypt, "unwrap with")
        plaintext = (answer.get("data") or {}).get("plaintext")
        try:
            return base64.b64decode(plaintext or "", validate=True)
        except (binascii.Error, ValueError):
            raise SecretError(
                f"{self.kind}: bad plaintext in the answer for {self._what}"
            ) from None

    async def check(self) -> None:
        """Wrap and unwrap a random key: proves the key, both permissions and AEAD support."""
        probe = secrets.token_bytes(32)
        context = b"tether-connection-check"
        if await self.unwrap_key(await self.wrap_key(probe, context), context) != probe:
            raise SecretError(f"{self.kind}: {self._what} did not round-trip a test key")

    async def _run(self, op: Callable[[Any], Any], verb: str) -> Any:
        what = f"{verb} {self._what}"
        try:
            return await asyncio.to_thread(self._session.call, op)
        except hvac.exceptions.InvalidRequest as exc:
            detail = _detail(exc)
            if "message authentication failed" in detail:
                raise SecretError(
                    f"{self.kind}: cannot {what}: the wrapped key is corrupt,"
                    " or was wrapped for another context or key"
                ) from None
            if "non-AEAD" in detail:
                raise SecretError(
                    f"{self.kind}: {self._what} cannot bind a context: its type is not"
                    " aes256-gcm96, aes128-gcm96 or chacha20-poly1305"
                ) from exc
            raise vault_error(exc, self.kind, what, self._session.url) from exc
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise vault_error(exc, self.kind, what, self._session.url) from exc
