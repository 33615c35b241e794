"""The secret managers one task talks to: their credentials, and one provider each.

A secret manager whose credentials are kept in the builtin manager has them sealed to this
delegate in the acquire answer (``AcquireResponse.credentials``, by manager id); one without
uses the delegate's own environment (an instance role, a Vault token file). Each task makes
its own providers and closes them when it is done, so no credential outlives the task that
was given it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import structlog

from delegate.secrets.base import EnvelopeProvider, ProviderConfig, ReferenceProvider, SecretError
from delegate.secrets.registry import make_provider
from shared.sealing import SealError, open_sealed
from shared.secretspec import ManagerSpec, credential_values, credentials_context

__all__ = ["ManagerCredentials", "Provider", "ProviderFactory", "Providers"]

log = structlog.get_logger("tether.secrets")

Provider = EnvelopeProvider | ReferenceProvider
ProviderFactory = Callable[[ProviderConfig], Provider]


class ManagerCredentials:
    """The sealed credentials of one task attempt, opened on first use."""

    def __init__(
        self, private_key: bytes, *, task_id: str, attempt: int, sealed: Mapping[str, str]
    ) -> None:
        self._private_key = private_key
        self._task_id = task_id
        self._attempt = attempt
        self._sealed = dict(sealed)

    @classmethod
    def none(cls) -> ManagerCredentials:
        """No sealed credentials: every manager uses the delegate's environment."""
        return cls(b"", task_id="", attempt=0, sealed={})

    def __repr__(self) -> str:
        return f"ManagerCredentials(managers={sorted(self._sealed)})"

    def values(self) -> list[str]:
        """Every credential value this attempt carries, for the maskers: registered before
        anything runs that could print one (a task, a secret operation, an error). Those
        that do not open are left out; using them fails with its own, value-free, error."""
        found: list[str] = []
        for manager_id, sealed in self._sealed.items():
            try:
                plain = open_sealed(
                    self._private_key,
                    sealed,
                    context=credentials_context(self._task_id, self._attempt, manager_id),
                )
            except SealError:
                continue
            found += credential_values(plain)
        return found

    def for_manager(self, manager: ManagerSpec) -> dict[str, str]:
        """The manager's credentials; empty when it has none (use the environment)."""
        sealed = self._sealed.get(manager.id)
        if sealed is None:
            return {}
        where = f"secret manager {manager.name!r}"
        try:
            plain = open_sealed(
                self._private_key,
                sealed,
                context=credentials_context(self._task_id, self._attempt, manager.id),
            )
        except SealError as exc:
            raise SecretError(f"{where}: its credentials cannot be opened: {exc}") from None
        try:
            values = json.loads(plain)
        except ValueError:
            # The decode error quotes the document, and the document is the credentials.
            values = None
        if not isinstance(values, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in values.items()
        ):
            raise SecretError(f"{where}: its credentials are not a JSON object of strings")
        return values


class Providers:
    """One provider per secret manager for one task, made on first use, closed together."""

    def __init__(
        self, credentials: ManagerCredentials, *, make: ProviderFactory = make_provider
    ) -> None:
        self._credentials = credentials
        self._make = make
        self._made: dict[str, Provider | SecretError] = {}

    def get(self, manager: ManagerSpec) -> Provider:
        """The provider of ``manager``; SecretError (the same one each time) if none can be
        made, so every secret of a broken manager reports the same reason."""
        found = self._made.get(manager.id)
        if found is None:
            try:
                found = self._make(
                    ProviderConfig(
                        kind=manager.kind,
                        settings=dict(manager.settings),
                        credentials=self._credentials.for_manager(manager),
                    )
                )
            except SecretError as exc:
                found = exc
            self._made[manager.id] = found
        if isinstance(found, SecretError):
            raise found
        return found

    def envelope(self, manager: ManagerSpec) -> EnvelopeProvider:
        provider = self.get(manager)
        if not isinstance(provider, EnvelopeProvider):
            raise SecretError(f"{manager.kind}: a reference store; it does not wrap keys")
        return provider

    def reference(self, manager: ManagerSpec) -> ReferenceProvider:
        provider = self.get(manager)
        if not isinstance(provider, ReferenceProvider):
            raise SecretError(f"{manager.kind}: a key service; it holds no referenced values")
        return provider

    async def aclose(self) -> None:
        made, self._made = self._made, {}
        for provider in made.values():
            if isinstance(provider, SecretError):
                continue
            try:
                await provider.aclose()
            except Exception as exc:
                # The task's outcome does not depend on it; the next providers are new ones.
                log.warning("closing a secret provider failed", error=type(exc).__name__)
