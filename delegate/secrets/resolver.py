"""From the deliveries of an acquire answer to secret values, before anything of the task runs.

Each :class:`~shared.secretspec.SecretDelivery` comes in one of three forms:

- builtin: the data key is sealed to this delegate for this task attempt and this secret
  version; opened with the delegate's private key, it decrypts the value's ciphertext;
- envelope (``aws_kms``, ``gcp_kms``, ``vault_transit``): the customer's key service
  unwraps the data key, with the credentials the task carries or the delegate's own;
- reference (``vault_kv``, ``aws_secrets_manager``, ``azure_key_vault``, ``custom``): the
  value is fetched from the customer's store.

Values from a customer's manager are cached by (secret id, version): the manager gives every
edit a new version, so a cached value is never stale for the version asked for. Builtin
values are not cached: opening them costs no round trip, and an uncached value is gone from
memory with the task.

All failures are gathered into one :class:`ResolveError` naming each secret with a reason
that is safe to show (the providers' and the envelope's messages hold no value).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Collection, Mapping

import structlog

from delegate.secrets.base import SecretError, SecretRef
from delegate.secrets.cache import SecretCache
from delegate.secrets.providers import (
    ManagerCredentials,
    ProviderFactory,
    Providers,
)
from delegate.secrets.registry import make_provider
from delegate.secrets.values import MalformedValue, ResolvedSecret, parse_value
from shared.envelope import Envelope, EnvelopeContext, EnvelopeError, decrypt_value, open_with
from shared.protocol import AcquireResponse
from shared.sealing import SealError, open_sealed
from shared.secretspec import SecretDelivery, delivery_context

__all__ = ["DEFAULT_CONCURRENCY", "ResolveError", "SecretResolver"]

log = structlog.get_logger("tether.secrets")

# Fetches in flight for one task: enough to hide round trips, few enough not to look like
# a flood to the customer's secret manager (Vault and KMS throttle per client).
DEFAULT_CONCURRENCY = 8


class ResolveError(Exception):
    """Secrets that could not be resolved: name -> a reason that holds no value."""

    def __init__(self, failures: Mapping[str, str]) -> None:
        self.failures = dict(sorted(failures.items()))
        super().__init__(
            "; ".join(f'secret "{name}": {reason}' for name, reason in self.failures.items())
        )


class SecretResolver:
    """Resolves the secrets of acquired tasks; one per delegate, holding the value cache.

    ``cache`` None turns caching off. ``make_provider`` builds a provider from a secret
    manager's kind, settings and credentials (tests point it at their own servers).
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        cache: SecretCache | None = None,
        make_provider: ProviderFactory = make_provider,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._private_key = private_key
        self._cache = cache
        self._make = make_provider
        self._concurrency = concurrency

    def credentials(self, acq: AcquireResponse) -> ManagerCredentials:
        """The task's sealed secret-manager credentials, for this delegate's key."""
        return ManagerCredentials(
            self._private_key, task_id=acq.task.id, attempt=acq.attempt, sealed=acq.credentials
        )

    def providers(self, acq: AcquireResponse) -> Providers:
        """A fresh set of providers for one task; the caller closes it."""
        return Providers(self.credentials(acq), make=self._make)

    async def resolve(
        self, acq: AcquireResponse, *, expected: Collection[str] = ()
    ) -> dict[str, ResolvedSecret]:
        """Every delivered secret by name; ResolveError if any cannot be had.

        ``expected`` names the secrets the task uses: one the manager neither delivered nor
        declared unavailable fails as well. When some are unavailable nothing is fetched, so
        no value reaches this host for a task that cannot run.
        """
        delivered = {d.name for d in acq.secrets}
        failures = dict(acq.unavailable)
        for name in expected:
            if name not in delivered and name not in failures:
                failures[name] = "not delivered by the manager"
        if failures:
            raise ResolveError(failures)
        providers = self.providers(acq)
        limit = asyncio.Semaphore(self._concurrency)
        try:
            outcomes = await asyncio.gather(
                *(self._one(acq, d, providers, limit) for d in acq.secrets)
            )
        finally:
            await providers.aclose()
        resolved: dict[str, ResolvedSecret] = {}
        for delivery, outcome in zip(acq.secrets, outcomes, strict=True):
            if isinstance(outcome, str):
                failures[delivery.name] = outcome
            else:
                resolved[delivery.name] = outcome
        if failures:
            raise ResolveError(failures)
        return resolved

    async def _one(
        self,
        acq: AcquireResponse,
        delivery: SecretDelivery,
        providers: Providers,
        limit: asyncio.Semaphore,
    ) -> ResolvedSecret | str:
        """The secret, or why not."""
        try:
            value = await self._value(acq, delivery, providers, limit)
            return parse_value(
                delivery.name, delivery.type, value, by_reference=delivery.ref is not None
            )
        except (SecretError, EnvelopeError, SealError, MalformedValue) as exc:
            return str(exc)
        except Exception as exc:
            # A vendor library's own exception may quote what it was handed: its type only.
            log.warning(
                "secret resolution failed unexpectedly",
                task_id=acq.task.id,
                secret=delivery.name,
                error=type(exc).__name__,
            )
            return f"{delivery.manager.kind}: failed ({type(exc).__name__})"

    async def _value(
        self,
        acq: AcquireResponse,
        d: SecretDelivery,
        providers: Providers,
        limit: asyncio.Semaphore,
    ) -> bytes:
        ctx = EnvelopeContext(account=d.account, secret_id=d.secret_id, version=d.version)
        if d.blob is not None and d.sealed_key is not None:
            if d.manager.kind != "builtin":
                raise SecretError(f"{d.manager.kind}: delivered as a builtin secret")
            context = delivery_context(acq.task.id, acq.attempt, d.secret_id, d.version)
            try:
                data_key = open_sealed(self._private_key, d.sealed_key, context=context)
            except SealError as exc:
                raise SecretError(f"builtin: its data key cannot be opened: {exc}") from None
            return decrypt_value(data_key, _b64decode(d.blob), ctx)
        if self._cache is not None:
            cached = self._cache.get(d.secret_id, d.version)
            if cached is not None:
                return cached
        async with limit:
            if d.envelope is not None:
                envelope = Envelope.from_json(d.envelope)
                if envelope.kek_kind != d.manager.kind:
                    raise SecretError(
                        f"{d.manager.kind}: the envelope was made by {envelope.kek_kind!r}"
                    )
                value = await open_with(providers.envelope(d.manager), envelope, ctx)
            else:
                assert d.ref is not None  # SecretDelivery holds exactly one form
                ref = SecretRef(path=d.ref.path, key=d.ref.key, version=d.ref.version)
                value = await providers.reference(d.manager).fetch(ref)
        if self._cache is not None:
            self._cache.put(d.secret_id, d.version, value)
        return value


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("builtin: the encrypted value is not valid base64") from None
