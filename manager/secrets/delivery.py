"""Delivery of secrets to the delegate that acquires a task, and the builtin secrets the
manager reads for itself.

Apart from :class:`manager.secrets.service.SecretService` because the task service needs
delivery at acquire while the secret service submits its operations through the task
service: this half needs no task service, so both are built once, in order, with nothing
wired afterwards.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

from pydantic import ConfigDict, TypeAdapter, ValidationError

from manager.errors import Invalid
from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.records import (
    BUILTIN_MANAGER_ID,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
    TaskRecord,
)
from manager.secrets.ops import manager_spec
from manager.secrets.scope import Scopes
from manager.store.base import Store
from manager.tasks.profiles import PROFILE_ACTOR
from shared.account import DEFAULT_ACCOUNT
from shared.envelope import Envelope, EnvelopeContext, EnvelopeError, decrypt_value
from shared.masking import Masker
from shared.protocol import TaskPayload
from shared.sealing import SealError, seal
from shared.secretspec import (
    RefSpec,
    SecretDelivery,
    SecretOpPayload,
    credential_values,
    credentials_context,
    delivery_context,
)
from shared.task_secrets import referenced_secrets

__all__ = ["SecretDeliveries", "version_context"]

_PAYLOAD: TypeAdapter[object] = TypeAdapter(TaskPayload, config=ConfigDict(defer_build=True))


def version_context(secret_id: str, version: int) -> EnvelopeContext:
    return EnvelopeContext(account=DEFAULT_ACCOUNT, secret_id=secret_id, version=version)


class SecretDeliveries:
    def __init__(
        self, *, store: Store, master_key: MasterKey, masker: Masker | None = None
    ) -> None:
        self._store = store
        self._key = master_key
        # The manager's own log output passes through this; plaintext that crosses this
        # process joins it, so even a stray log line cannot show it.
        self._masker = masker
        self.scopes = Scopes(store)

    async def credentials_holders(self, name: str) -> list[str]:
        """The secret managers whose credentials secret ``name`` holds."""
        managers = await self._store.list_secret_managers()
        return sorted(m.name for m in managers if m.credentials_secret == name)

    async def task_refusal(self, secret: SecretRecord) -> str | None:
        """Why no task may use ``secret``: it holds a secret manager's credentials, which only
        that manager's operations need, and it was not given a usage scope of its own (the
        explicit act that lets tasks use it too). None if tasks may."""
        holders = await self.credentials_holders(secret.name)
        if not holders or await self.scopes.of_secret(secret.id) is not None:
            return None
        return (
            f"it holds the credentials of secret manager {', '.join(holders)}: only secret-"
            "manager operations may use it (give it a usage scope of its own to allow tasks)"
        )

    def check_payload(self, payload: object) -> None:
        try:
            referenced_secrets(payload)
        except ValueError as exc:
            raise Invalid("invalid", f"payload.{exc}", field="payload") from None

    async def deliver(
        self, task: TaskRecord, attempt: int, public_key: str
    ) -> tuple[list[SecretDelivery], dict[str, str], dict[str, str]]:
        """What the acquiring delegate needs for the secrets ``task`` references, sealed to
        ``public_key`` for this attempt; names that cannot be delivered, with why."""
        try:
            payload = _PAYLOAD.validate_python(task.payload)
        except ValidationError:
            return [], {}, {}
        deliveries: list[SecretDelivery] = []
        credentials: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        managers: dict[str, SecretManagerRecord | None] = {}

        async def manager_for(manager_id: str) -> SecretManagerRecord | None:
            if manager_id not in managers:
                managers[manager_id] = await self._store.get_secret_manager(manager_id)
            return managers[manager_id]

        async def add_credentials(m: SecretManagerRecord) -> str | None:
            """Seal ``m``'s credentials unless done; why not, when they cannot be."""
            if m.credentials_secret is None or m.id in credentials:
                return None
            try:
                plain = await self._builtin_plaintext(m.credentials_secret)
            except _Unavailable as exc:
                return f"credentials of secret manager {m.name}: {exc}"
            if self._masker is not None:
                # Each value alone too: an error echoing a token shows it without its JSON.
                for value in credential_values(plain):
                    self._masker.add(value)
            credentials[m.id] = seal(
                public_key, plain, context=credentials_context(task.id, attempt, m.id)
            )
            return None

        if isinstance(payload, SecretOpPayload):
            for spec in (payload.manager, payload.target):
                if spec is None:
                    continue
                m = await manager_for(spec.id)
                if m is not None and (why := await add_credentials(m)):
                    unavailable[spec.name] = why
            return deliveries, credentials, unavailable

        names = sorted(referenced_secrets(payload))
        if not names:
            return deliveries, credentials, unavailable
        allowed = await self._scope_check(task)
        found = await self._store.secrets_by_name(names)
        current = await self._store.current_versions(s.id for s in found.values())
        for name in names:
            secret = found.get(name)
            version = current.get(secret.id) if secret is not None else None
            if secret is None or version is None:
                unavailable[name] = "no such secret"
                continue
            m = await manager_for(secret.manager_id)
            if m is None:
                unavailable[name] = "its secret manager is gone"
                continue
            if why := await allowed(secret):
                unavailable[name] = why
                continue
            try:
                deliveries.append(
                    await self._delivery(name, secret, version, m, task.id, attempt, public_key)
                )
            except _Unavailable as exc:
                unavailable[name] = str(exc)
                continue
            if why := await add_credentials(m):
                unavailable[name] = why
        return deliveries, credentials, unavailable

    async def _scope_check(
        self, task: TaskRecord
    ) -> Callable[[SecretRecord], Awaitable[str | None]]:
        """Why a secret may not serve ``task`` (its scope changed since the submit, or the
        task is a profile run and the secret is scoped to applications); None if it may."""
        where = await self.scopes.places()
        target = where.target(task)
        profile = (task.submitted_by or "").startswith(PROFILE_ACTOR)

        async def why(secret: SecretRecord) -> str | None:
            # Checked again here: a secret may have become a manager's credentials since.
            if refusal := await self.task_refusal(secret):
                return refusal
            scope = await self.scopes.effective(secret.id, secret.manager_id)
            if profile:
                return None if scope.serves_profiles else "it is not scoped to delegate profiles"
            return None if scope.covers(target) else "its usage scope does not cover this task"

        return why

    async def _delivery(
        self,
        name: str,
        secret: SecretRecord,
        version: SecretVersionRecord,
        m: SecretManagerRecord,
        task_id: str,
        attempt: int,
        public_key: str,
    ) -> SecretDelivery:
        common = {
            "name": name,
            "secret_id": secret.id,
            "version": version.version,
            "type": secret.type,
            "account": DEFAULT_ACCOUNT,
            "manager": manager_spec(m),
        }
        if version.ref is not None:
            return SecretDelivery.model_validate(
                {**common, "ref": RefSpec.model_validate(version.ref)}
            )
        if version.envelope is None:
            raise _Unavailable("the stored version holds neither a value nor a reference")
        if m.id != BUILTIN_MANAGER_ID:
            return SecretDelivery.model_validate({**common, "envelope": version.envelope})
        envelope = _stored_envelope(version.envelope)
        data_key = await self._open_key(envelope, secret.id, version.version)
        try:
            sealed = seal(
                public_key,
                data_key,
                context=delivery_context(task_id, attempt, secret.id, version.version),
            )
        except SealError as exc:
            raise _Unavailable(f"cannot seal it to this delegate: {exc}") from None
        return SecretDelivery.model_validate(
            {
                **common,
                "blob": base64.b64encode(envelope.blob).decode(),
                "sealed_key": sealed,
            }
        )

    async def _open_key(self, envelope: Envelope, secret_id: str, version: int) -> bytes:
        try:
            return await self._key.unwrap_key(
                envelope.wrapped_key, version_context(secret_id, version).canonical()
            )
        except MasterKeyError as exc:
            raise _Unavailable(f"the builtin key cannot open it: {exc}") from None

    async def builtin_value(self, name: str) -> bytes:
        """The value of builtin secret ``name`` for the manager's own use (the SSO client
        secret): joined to the masker, never stored or returned. ValueError naming the
        secret (never a value) when it cannot be read."""
        try:
            return await self._builtin_plaintext(name)
        except _Unavailable as exc:
            raise ValueError(str(exc)) from None

    async def _builtin_plaintext(self, name: str) -> bytes:
        secret = await self._store.secret_by_name(name)
        if secret is None or secret.manager_id != BUILTIN_MANAGER_ID:
            raise _Unavailable(f"no builtin secret {name!r}")
        version = (await self._store.current_versions([secret.id])).get(secret.id)
        if version is None or version.envelope is None:
            raise _Unavailable(f"no value for {name!r}")
        envelope = _stored_envelope(version.envelope)
        data_key = await self._open_key(envelope, secret.id, version.version)
        try:
            plain = decrypt_value(
                data_key, envelope.blob, version_context(secret.id, version.version)
            )
        except EnvelopeError as exc:
            raise _Unavailable(f"{name!r} does not open: {exc}") from None
        if self._masker is not None:
            self._masker.add(plain)
        return plain


class _Unavailable(Exception):
    """Why a secret cannot be delivered; safe to show (never a value)."""


def _stored_envelope(text: str) -> Envelope:
    try:
        return Envelope.from_json(text)
    except EnvelopeError as exc:
        raise _Unavailable(f"its stored envelope is unreadable: {exc}") from None
