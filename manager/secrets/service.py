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
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog
from pydantic import TypeAdapter, ValidationError

from manager.errors import Broken, Conflicting, Invalid, NotFound, TooLarge, Unavailable
from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.records import (
    BUILTIN_MANAGER_ID,
    SecretManagerRecord,
    SecretRecord,
    SecretVersionRecord,
    TaskRecord,
)
from manager.schemas.secrets import (
    SecretCreate,
    SecretManagerCreate,
    SecretManagerUpdate,
    SecretUpdate,
    SecretValue,
)
from manager.secrets.kinds import check_settings
from manager.secrets.ops import OpResult, SecretOps, manager_spec
from manager.secrets.scope import Scopes
from manager.store.base import Conflict, Store
from manager.tasks.profiles import PROFILE_ACTOR
from shared.account import DEFAULT_ACCOUNT
from shared.envelope import (
    Envelope,
    EnvelopeContext,
    EnvelopeError,
    decrypt_value,
    encrypt_value,
    new_data_key,
)
from shared.ids import new_id
from shared.masking import Masker
from shared.protocol import TaskPayload
from shared.sealing import SealError, seal
from shared.secretspec import (
    ENVELOPE_KINDS,
    MAX_FILE_SECRET_BYTES,
    REFERENCE_KINDS,
    RefSpec,
    SecretDelivery,
    SecretOpPayload,
    credential_values,
    credentials_context,
    delivery_context,
)
from shared.task_secrets import referenced_secrets

__all__ = ["MAX_TEXT_SECRET_BYTES", "SecretService"]

log = structlog.get_logger("tether.secrets")

MAX_TEXT_SECRET_BYTES = 64 * 1024
_PAYLOAD: TypeAdapter[object] = TypeAdapter(TaskPayload)
# The fields of the structured types; the first of each is required.
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ssh_key": (("key",), ("passphrase", "user")),
    "winrm": (("user", "password"), ("domain",)),
}


def _ctx(secret_id: str, version: int) -> EnvelopeContext:
    return EnvelopeContext(account=DEFAULT_ACCOUNT, secret_id=secret_id, version=version)


class SecretService:
    def __init__(
        self,
        *,
        store: Store,
        master_key: MasterKey,
        ops: SecretOps,
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
        self.scopes = Scopes(store)

    # -- secret managers ------------------------------------------------------------------

    async def manager(self, name: str) -> SecretManagerRecord:
        found = await self._store.secret_manager_by_name(name)
        if found is None:
            raise NotFound("not_found", f"no secret manager {name!r}")
        return found

    async def create_manager(self, body: SecretManagerCreate) -> SecretManagerRecord:
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
        try:
            await self._store.create_secret_manager(record)
        except Conflict:
            raise Conflicting("conflict", f"a secret manager named {body.name!r} exists") from None
        log.info("secret manager created", name=record.name, kind=record.kind)
        return record

    async def update_manager(self, name: str, body: SecretManagerUpdate) -> SecretManagerRecord:
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
            found = await self._store.update_secret_manager(updated)
        except Conflict:
            raise Conflicting(
                "conflict", f"a secret manager named {updated.name!r} exists"
            ) from None
        if not found:
            raise NotFound("not_found", f"no secret manager {name!r}")
        log.info("secret manager updated", name=updated.name)
        return updated

    async def delete_manager(self, name: str) -> None:
        record = await self.manager(name)
        if record.id == BUILTIN_MANAGER_ID:
            raise Conflicting("conflict", "the builtin secret manager cannot be deleted")
        try:
            deleted = await self._store.delete_secret_manager(record.id)
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

    # -- secrets --------------------------------------------------------------------------

    async def secret(self, name: str) -> SecretRecord:
        found = await self._store.secret_by_name(name)
        if found is None:
            raise NotFound("not_found", f"no secret {name!r}")
        return found

    async def create_secret(self, body: SecretCreate, actor: str | None = None) -> SecretRecord:
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
        try:
            await self._store.create_secret(record, version)
        except Conflict:
            raise Conflicting("conflict", f"a secret named {body.name!r} exists") from None
        log.info("secret created", name=record.name, manager=manager.name, mode=mode)
        return record

    async def update_secret(
        self, name: str, body: SecretUpdate, actor: str | None = None
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
            replace(base, updated_at=self._clock()), version
        )
        if updated is None:
            raise Conflicting("conflict", f"{name!r} changed meanwhile; send the update again")
        log.info("secret updated", name=name, version=updated.current_version)
        return updated

    async def delete_secret(self, name: str) -> None:
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
        if not await self._store.delete_secret(secret.id):
            raise NotFound("not_found", f"no secret {name!r}")
        # A reference's value stays where it is: nothing was created there, nothing goes.
        log.info("secret deleted", name=name)

    async def versions(self, name: str) -> tuple[SecretRecord, list[SecretVersionRecord]]:
        secret = await self.secret(name)
        return secret, await self._store.secret_versions(secret.id)

    async def migrate(self, name: str, to: str) -> SecretRecord:
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
            raise Invalid("invalid", f"no secret manager {to!r}", field="to")
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
        moved = await self._store.move_secret(secret, target.id, envelopes, self._clock())
        if moved is None:
            raise Conflicting("conflict", f"{name!r} changed meanwhile; migrate it again")
        log.info("secret migrated", name=name, source=source.name, target=target.name)
        return moved

    async def _rewrap(
        self, source: SecretManagerRecord, target: SecretManagerRecord, v: SecretVersionRecord
    ) -> str:
        assert v.envelope is not None
        envelope = _envelope(v.envelope)
        context = _ctx(v.secret_id, v.version).canonical()
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
        ctx = _ctx(secret.id, number)
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

    # -- delivery -------------------------------------------------------------------------

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
                envelope.wrapped_key, _ctx(secret_id, version).canonical()
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
            plain = decrypt_value(data_key, envelope.blob, _ctx(secret.id, version.version))
        except EnvelopeError as exc:
            raise _Unavailable(f"{name!r} does not open: {exc}") from None
        if self._masker is not None:
            self._masker.add(plain)
        return plain


class _Unavailable(Exception):
    """Why a secret cannot be delivered; safe to show (never a value)."""


def _envelope(text: str) -> Envelope:
    try:
        return Envelope.from_json(text)
    except EnvelopeError as exc:
        raise Broken("corrupt", f"a stored envelope is unreadable: {exc}") from None


def _stored_envelope(text: str) -> Envelope:
    try:
        return Envelope.from_json(text)
    except EnvelopeError as exc:
        raise _Unavailable(f"its stored envelope is unreadable: {exc}") from None


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
