"""The provider interfaces and the one error type they raise.

Providers wrap their vendor's client; a synchronous client (hvac, boto3) runs in a worker
thread so the delegate's event loop never blocks. Every error names the secret manager and
the reference, never a value or a credential.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["EnvelopeProvider", "ProviderConfig", "ReferenceProvider", "SecretError", "SecretRef"]


class SecretError(Exception):
    """A secret could not be fetched, wrapped or unwrapped. The message is safe to show."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a referenced secret lives: a path, an optional key inside it, a version."""

    path: str
    key: str | None = None
    # None: the current version. Pinned versions are served as given.
    version: str | None = None


@dataclass(frozen=True)
class ProviderConfig:
    """How to reach one secret manager, and with which credentials.

    ``credentials`` empty means: use the delegate's own environment (the AWS default chain,
    VAULT_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, ...). Otherwise it holds values taken from
    the builtin secret manager (e.g. {"token": ...} or {"role_id": ..., "secret_id": ...}).
    """

    kind: str
    settings: Mapping[str, str] = field(default_factory=dict)
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)


class EnvelopeProvider(abc.ABC):
    """Wraps data keys with a key-encryption key the customer holds."""

    @abc.abstractmethod
    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        """Encrypt ``data_key``, binding ``context`` (the envelope's canonical context)."""

    @abc.abstractmethod
    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        """Decrypt a wrapped key; fails unless ``context`` is the one it was wrapped with."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Connection test: raise SecretError saying what is wrong, else return."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release channels, sessions and credentials the provider holds."""


class ReferenceProvider(abc.ABC):
    """Fetches a value that stays in the customer's own store."""

    @abc.abstractmethod
    async def fetch(self, ref: SecretRef) -> bytes: ...

    @abc.abstractmethod
    async def check(self) -> None:
        """Connection test: raise SecretError saying what is wrong, else return."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release channels, sessions and credentials the provider holds."""
