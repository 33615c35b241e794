"""Secret managers and secrets: their rules, their encryption, and their delivery.

Plaintext exists on the manager only in the request that creates or updates an inline
secret (it is encrypted at once under a fresh data key) and, for a secret manager's
credentials kept as a builtin secret, for the moment they are re-sealed to the acquiring
delegate. The store holds ciphertext and references only; no answer carries a value.

Inline values are encrypted here with AES-256-GCM under a data key per version
(:mod:`shared.envelope`); the data key is wrapped by the manager's own key (``builtin``) or
by a delegate with the customer's key (``aws_kms``, ``gcp_kms``, ``vault_transit``), which
the manager never holds.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import structlog

from manager.core.audit_chain import AuditOf
from manager.errors import Broken, Conflicting, Invalid, NotFound, TooLarge, Unavailable
from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.records import (
    BUILTIN_MANAGER_ID,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
)
from manager.schemas.secrets import (
    SecretCreate,
    SecretManagerCreate,
    SecretManagerUpdate,
    SecretUpdate,
    SecretValue,
)
from manager.secrets.delivery import SecretDeliveries, version_context
from manager.secrets.kinds import check_settings
from manager.secrets.ops import OpResult, SecretOps
from manager.secrets.scope import UsageScope
from manager.store.base import Conflict, Store
from shared.envelope import (
    Envelope,
    EnvelopeError,
    encrypt_value,
    new_data_key,
)
from shared.ids import new_id
from shared.masking import Masker
from shared.secretspec import (
    ENVELOPE_KINDS,
    MAX_FILE_SECRET_BYTES,
    REFERENCE_KINDS,
)

__all__ = ["MAX_TEXT_SECRET_BYTES", "SecretService"]

log = structlog.get_logger("tether.secrets")

MAX_TEXT_SECRET_BYTES = 64 * 1024
# The fields of the structured types; the first of each is required.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ssh_key": (("key",), ("passphrase", "user")),
    "winrm": (("user", "password"), ("domain",)),
}


class SecretService:
    def __init__(
        self,
        *,
        store: Store,
        master_key: MasterKey,
        ops: SecretOps,
        deliveries: SecretDeliveries,
        masker: Masker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._key = master_key
        self._ops = ops
        # The manager's own log output passes through this; plaintext that crosses this
        # process joins it, so even a stray log line cannot show it.
        self._masker = masker
        self._clock = clock
        self.deliveries = deliveries
        self.scopes = deliveries.scopes
        # The delivery half's answers, under the names the routes and the tests know.
        self.check_payload = deliveries.check_payload
        self.deliver = deliveries.deliver
        self.builtin_value = deliveries.builtin_value
        self.task_refusal = deliveries.task_refusal

    # -- secret managers ------------------------------------------------------------------

    async def manager(self, name: str) -> SecretManagerRecord:
        found = await self._store.secret_manager_by_name(name)
        if found is None:
            raise NotFound("not_found", f"no secret manager {name!r}")
        return found

    async def manager_named(self, name: str) -> SecretManagerRecord | None:
        return await self._store.secret_manager_by_name(name)

    async def manager_by_id(self, manager_id: str) -> SecretManagerRecord | None:
        return await self._store.get_secret_manager(manager_id)

    async def managers(self) -> list[SecretManagerRecord]:
        return await self._store.list_secret_managers()

    async def create_manager(
        self,
        body: SecretManagerCreate,
        *,
        scope: UsageScope | None = None,
        audit: AuditOf[SecretManagerRecord] | None = None,
    ) -> SecretManagerRecord:
        """The manager, with its usage ``scope``, in one transaction with ``audit``'s event.
        (So does every write here that takes ``audit``: its event, of the row written.)"""
        if body.kind == "builtin":
            raise Invalid(
                "invalid", "there is one builtin secret manager, and it exists", field="kind"
            )
        check_settings(body.kind, body.settings)
        now = self._clock()
        record = SecretManagerRecord(
            id=new_id("sm"),
            name=body.name,
            kind=body.kind,
            settings=dict(body.settings),
            credentials_secret=body.credentials_secret,
            selectors=tuple(body.selectors),
            description=body.description,
            created_at=now,
            updated_at=now,
        )
        await self._check_credentials(record)
        scoped = self.scopes.made_for_manager(record.id, scope)
        try:
            await self._store.create_secret_manager(record, entities=scoped, audit=audit)
        except Conflict:
            raise Conflicting("conflict", f"a secret manager named {body.name!r} exists") from None
        log.info("secret manager created", name=record.name, kind=record.kind)
        return record

    async def update_manager(
        self,
        name: str,
        body: SecretManagerUpdate,
        *,
        audit: AuditOf[SecretManagerRecord] | None = None,
    ) -> SecretManagerRecord:
        current = await self.manager(name)
        given = body.model_fields_set
        if current.id == BUILTIN_MANAGER_ID and given - {"description"}:
            raise Invalid("invalid", "the builtin secret manager takes no settings")
        updated = replace(
            current,
            name=body.name if body.name is not None else current.name,
            settings=dict(body.settings) if body.settings is not None else current.settings,
            credentials_secret=(
                body.credentials_secret
                if "credentials_secret" in given
                else current.credentials_secret
            ),
            selectors=tuple(body.selectors) if body.selectors is not None else current.selectors,
            description=body.description if body.description is not None else current.description,
            updated_at=self._clock(),
        )
        check_settings(updated.kind, updated.settings)
        await self._check_credentials(updated)
        try:
            found = await self._store.update_secret_manager(updated, audit=audit)
        except Conflict:
            raise Conflicting(
                "conflict", f"a secret manager named {updated.name!r} exists"
            ) from None
        if not found:
            raise NotFound("not_found", f"no secret manager {name!r}")
        log.info("secret manager updated", name=updated.name)
        return updated

    async def delete_manager(
        self, name: str, *, audit: AuditOf[SecretManagerRecord] | None = None
    ) -> None:
        """The manager and its usage scope."""
        record = await self.manager(name)
        if record.id == BUILTIN_MANAGER_ID:
            raise Conflicting("conflict", "the builtin secret manager cannot be deleted")
        scoped = await self.scopes.gone_with_manager(record.id)
        try:
            deleted = await self._store.delete_secret_manager(
                record.id, entities=scoped, audit=audit
            )
        except Conflict as exc:
            raise Conflicting(
                "conflict", f"secret manager {name!r} still keeps secrets: {exc}"
            ) from None
        if not deleted:
            raise NotFound("not_found", f"no secret manager {name!r}")
        log.info("secret manager deleted", name=name)

    async def test_manager(self, name: str) -> OpResult | None:
        """The connection test, run on a delegate; None for the builtin manager, whose key
        is on this host and is tested here (it must open what it wraps)."""
        record = await self.manager(name)
        if record.kind != "builtin":
            return await self._ops.check(record)
        probe = new_data_key()
        wrapped = await self._key.wrap_key(probe, b"tether-probe")
        if await self._key.unwrap_key(wrapped, b"tether-probe") != probe:
            raise Broken("key_error", "the builtin key does not open what it wraps")
        return None

    async def _check_credentials(self, record: SecretManagerRecord) -> None:
        """A manager's credentials come from the delegate or from a builtin secret: one that
        lives in another external manager would need credentials of its own (a cycle)."""
        name = record.credentials_secret
        if name is None:
            return
        if record.kind == "builtin":
            raise Invalid("invalid", "the builtin secret manager takes no credentials")
        secret = await self._store.secret_by_name(name)
        if secret is None:
            raise Invalid(
                "invalid",
                f"no secret {name!r} to take credentials from",
                field="credentials_secret",
            )
        if secret.manager_id != BUILTIN_MANAGER_ID:
            holder = await self._store.get_secret_manager(secret.manager_id)
            holder_name = holder.name if holder else secret.manager_id
            if secret.manager_id == record.id:
                chain = f"{record.name} -> {name} -> {record.name}"
            else:
                chain = f"{record.name} -> {name} -> {holder_name} -> ..."
            raise Invalid(
                "invalid",
                f"credentials secret {name!r} is kept in secret manager {holder_name!r}, not "
                f"the builtin one: that would be a cycle ({chain}); keep it in builtin, or "
                "leave credentials to the delegate's environment",
                field="credentials_secret",
            )

    # -- secrets --------------------------------------------------------------------------

    async def secret(self, name: str) -> SecretRecord:
        found = await self._store.secret_by_name(name)
        if found is None:
            raise NotFound("not_found", f"no secret {name!r}")
        return found

    async def secrets(self, manager_id: str | None = None) -> list[SecretRecord]:
        """Every secret, or those kept in one manager."""
        return await self._store.list_secrets(manager_id=manager_id)

    async def secrets_named(self, names: Iterable[str]) -> dict[str, SecretRecord]:
        """The secrets among ``names`` that exist, by name, in one query."""
        return await self._store.secrets_by_name(names)

    async def create_secret(
        self,
        body: SecretCreate,
        actor: str | None = None,
        *,
        scope: UsageScope | None = None,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord:
        """The secret and its first version, with its usage ``scope``."""
        manager = await self._store.secret_manager_by_name(body.manager)
        if manager is None:
            raise Invalid("invalid", f"no secret manager {body.manager!r}", field="manager")
        mode = "reference" if body.ref is not None else "inline"
        self._check_mode(manager, mode)
        now = self._clock()
        record = SecretRecord(
            id=new_id("sec"),
            name=body.name,
            manager_id=manager.id,
            type=body.type,
            mode=mode,
            current_version=1,
            description=body.description,
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        if await self._store.secret_by_name(body.name) is not None:
            raise Conflicting("conflict", f"a secret named {body.name!r} exists")
        version = await self._version(manager, record, 1, body, actor)
        scoped = self.scopes.made_for_secret(record.id, scope)
        try:
            await self._store.create_secret(record, version, entities=scoped, audit=audit)
        except Conflict:
            raise Conflicting("conflict", f"a secret named {body.name!r} exists") from None
        log.info("secret created", name=record.name, manager=manager.name, mode=mode)
        return record

    async def update_secret(
        self,
        name: str,
        body: SecretUpdate,
        actor: str | None = None,
        *,
        audit: AuditOf[SecretRecord] | None = None,
    ) -> SecretRecord:
        """Every change of value is a new version; a description alone changes none."""
        secret = await self.secret(name)
        manager = await self._manager_of(secret)
        mode = "reference" if body.ref is not None else "inline"
        if mode != secret.mode:
            raise Invalid(
                "invalid",
                f"{name!r} is a{'n inline secret' if secret.mode == 'inline' else ' reference'}: "
                f"update it with {'a value' if secret.mode == 'inline' else 'ref'}",
            )
        number = secret.current_version + 1
        version = await self._version(manager, secret, number, body, actor)
        base = secret
        if body.description is not None:
            base = replace(secret, description=body.description)
        updated = await self._store.add_secret_version(
            replace(base, updated_at=self._clock()), version, audit=audit
        )
        if updated is None:
            raise Conflicting("conflict", f"{name!r} changed meanwhile; send the update again")
        log.info("secret updated", name=name, version=updated.current_version)
        return updated

    async def delete_secret(self, name: str, *, audit: AuditOf[SecretRecord] | None = None) -> None:
        """The secret, its versions and its usage scope."""
        secret = await self.secret(name)
        users = [
            m.name for m in await self._store.list_secret_managers() if m.credentials_secret == name
        ]
        if users:
            raise Conflicting(
                "conflict",
                f"{name!r} holds the credentials of secret manager(s) {', '.join(users)}; "
                "change them first",
            )
        scoped = await self.scopes.gone_with_secret(secret.id)
        if not await self._store.delete_secret(secret.id, entities=scoped, audit=audit):
            raise NotFound("not_found", f"no secret {name!r}")
        # A reference's value stays where it is: nothing was created there, nothing goes.
        log.info("secret deleted", name=name)

    async def versions(self, name: str) -> tuple[SecretRecord, list[SecretVersionRecord]]:
        secret = await self.secret(name)
        return secret, await self._store.secret_versions(secret.id)

    async def migrate(
        self, name: str, to: str, *, audit: AuditOf[SecretRecord] | None = None
    ) -> SecretRecord:
        """Re-wrap every version's data key for ``to``; the values' ciphertext stays as it
        is, and the plaintext is never on the manager (only a data key, for a moment, when
        one side is the builtin key)."""
        secret = await self.secret(name)
        source = await self._manager_of(secret)
        if secret.mode == "reference":
            raise Invalid(
                "invalid",
                f"{name!r} is a reference into {source.name} ({source.kind}): a reference cannot "
                "be migrated; create a secret in the other manager with the value instead",
            )
        target = await self._store.secret_manager_by_name(to)
        if target is None:
            kinds = ", ".join(sorted(ENVELOPE_KINDS))
            raise Invalid(
                "invalid",
                f"no secret manager {to!r}: `to` is the name of a secret manager (one of kind "
                f"{kinds}) created beforehand, not a kind",
                field="to",
            )
        if target.kind not in ENVELOPE_KINDS:
            raise Invalid(
                "invalid",
                f"{to} ({target.kind}) keeps values in the customer's store; Tether creates "
                "nothing there, so a secret cannot be migrated into it",
                field="to",
            )
        if target.id == source.id:
            raise Invalid("invalid", f"{name!r} is already kept in {to}", field="to")
        if target.id != BUILTIN_MANAGER_ID:
            users = [
                m.name
                for m in await self._store.list_secret_managers()
                if m.credentials_secret == name
            ]
            if users:
                raise Invalid(
                    "invalid",
                    f"{name!r} holds credentials of {', '.join(users)}: it must stay builtin "
                    f"({users[0]} -> {name} -> {to} would be a cycle)",
                )
        envelopes: dict[int, str] = {}
        for version in await self._store.secret_versions(secret.id):
            if version.envelope is None:
                continue
            envelopes[version.version] = await self._rewrap(source, target, version)
        moved = await self._store.move_secret(
            secret, target.id, envelopes, self._clock(), audit=audit
        )
        if moved is None:
            raise Conflicting("conflict", f"{name!r} changed meanwhile; migrate it again")
        log.info("secret migrated", name=name, source=source.name, target=target.name)
        return moved

    async def _rewrap(
        self, source: SecretManagerRecord, target: SecretManagerRecord, v: SecretVersionRecord
    ) -> str:
        assert v.envelope is not None
        envelope = _envelope(v.envelope)
        context = version_context(v.secret_id, v.version).canonical()
        if source.id == BUILTIN_MANAGER_ID:
            data_key = await self._unwrap_builtin(envelope.wrapped_key, context)
            wrapped = await self._ops.wrap(target, data_key, context)
        elif target.id == BUILTIN_MANAGER_ID:
            data_key = await self._ops.unwrap(source, envelope.wrapped_key, context)
            wrapped = await self._wrap_builtin(data_key, context)
        else:
            wrapped = await self._ops.rewrap(source, target, envelope.wrapped_key, context)
        return Envelope(
            kek_kind=target.kind,
            kek_id=(
                MasterKey.wrapped_key_id(wrapped) if target.id == BUILTIN_MANAGER_ID else target.id
            ),
            wrapped_key=wrapped,
            blob=envelope.blob,
        ).to_json()

    async def _manager_of(self, secret: SecretRecord) -> SecretManagerRecord:
        manager = await self._store.get_secret_manager(secret.manager_id)
        if manager is None:
            raise Unavailable("unavailable", "the secret's manager vanished; try again")
        return manager

    @staticmethod
    def _check_mode(manager: SecretManagerRecord, mode: str) -> None:
        if mode == "reference" and manager.kind not in REFERENCE_KINDS:
            raise Invalid(
                "invalid",
                f"{manager.name} ({manager.kind}) encrypts values it is given; a reference "
                "needs vault_kv, aws_secrets_manager, azure_key_vault or custom",
                field="ref",
            )
        if mode == "inline" and manager.kind not in ENVELOPE_KINDS:
            raise Invalid(
                "invalid",
                f"{manager.name} ({manager.kind}) keeps values in the customer's store: create "
                "the secret by reference (ref) instead",
                field="value",
            )

    async def _version(
        self,
        manager: SecretManagerRecord,
        secret: SecretRecord,
        number: int,
        body: SecretValue,
        actor: str | None,
    ) -> SecretVersionRecord:
        now = self._clock()
        if body.ref is not None:
            return SecretVersionRecord(
                secret_id=secret.id,
                version=number,
                created_at=now,
                ref=body.ref.model_dump(),
                created_by=actor,
            )
        plaintext = _plaintext(secret.type, body)
        if self._masker is not None:
            self._masker.add(plaintext)
        ctx = version_context(secret.id, number)
        data_key = new_data_key()
        blob = encrypt_value(data_key, plaintext, ctx)
        if manager.id == BUILTIN_MANAGER_ID:
            wrapped = await self._wrap_builtin(data_key, ctx.canonical())
            # The key that did wrap it, read from the wrapping: a rotation may land between.
            kek_id = MasterKey.wrapped_key_id(wrapped)
        else:
            kek_id = manager.id
            wrapped = await self._ops.wrap(manager, data_key, ctx.canonical())
        envelope = Envelope(kek_kind=manager.kind, kek_id=kek_id, wrapped_key=wrapped, blob=blob)
        return SecretVersionRecord(
            secret_id=secret.id,
            version=number,
            created_at=now,
            envelope=envelope.to_json(),
            size=len(plaintext),
            created_by=actor,
        )

    async def _wrap_builtin(self, data_key: bytes, context: bytes) -> bytes:
        try:
            return await self._key.wrap_key(data_key, context)
        except MasterKeyError as exc:
            raise Broken("key_error", f"the builtin key cannot wrap: {exc}") from None

    async def _unwrap_builtin(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return await self._key.unwrap_key(wrapped, context)
        except MasterKeyError as exc:
            raise Broken("key_error", f"the builtin key cannot open this secret: {exc}") from None


def _envelope(text: str) -> Envelope:
    try:
        return Envelope.from_json(text)
    except EnvelopeError as exc:
        raise Broken("corrupt", f"a stored envelope is unreadable: {exc}") from None


def _plaintext(stype: str, body: SecretValue) -> bytes:
    """The bytes to encrypt for ``stype``, or a 400 that never echoes the value."""
    if stype in _FIELDS:
        required, optional = _FIELDS[stype]
        fields = dict(body.fields or {})
        if body.fields is None:
            if stype != "ssh_key" or body.value is None:
                raise Invalid(
                    "invalid",
                    f"a {stype} secret takes fields: {', '.join(required + optional)}",
                    field="fields",
                )
            fields = {"key": body.value}
        unknown = sorted(set(fields) - set(required) - set(optional))
        if unknown:
            raise Invalid("invalid", f"{stype} has no field {unknown[0]!r}", field="fields")
        for name in required:
            if not fields.get(name):
                raise Invalid("invalid", f"a {stype} secret needs {name!r}", field=f"fields.{name}")
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    if body.fields is not None:
        raise Invalid("invalid", f"a {stype} secret takes value, not fields", field="fields")
    if body.value_base64 is not None:
        try:
            raw = base64.b64decode(body.value_base64, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(
                "invalid", "value_base64 is not valid base64", field="value_base64"
            ) from None
    else:
        raw = (body.value or "").encode()
    limit = MAX_FILE_SECRET_BYTES if stype == "file" else MAX_TEXT_SECRET_BYTES
    if not raw:
        raise Invalid("invalid", "the value is empty", field="value")
    if len(raw) > limit:
        raise TooLarge("too_large", f"a {stype} secret holds at most {limit} bytes", field="value")
    return raw
