"""Acquire answers with secret deliveries, made the way the manager makes them."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.envelope import (
    EnvelopeContext,
    KeyWrapper,
    encrypt_value,
    new_data_key,
    seal_with,
)
from shared.protocol import AcquireResponse, TaskPayload, TaskSpec
from shared.sealing import generate_keypair, public_key_b64, seal
from shared.secretspec import (
    ManagerSpec,
    RefSpec,
    SecretDelivery,
    SecretType,
    credentials_context,
    delivery_context,
)

TASK_ID = "task_secrets_1"
ATTEMPT = 2
ACCOUNT = "acct_test"
BUILTIN = ManagerSpec(id="sm_builtin", name="builtin", kind="builtin")


@dataclass(frozen=True)
class DelegateKey:
    private: bytes
    public: str


def delegate_key() -> DelegateKey:
    private, public = generate_keypair()
    return DelegateKey(private, public_key_b64(public))


def context(secret_id: str, version: int) -> EnvelopeContext:
    return EnvelopeContext(account=ACCOUNT, secret_id=secret_id, version=version)


def builtin(
    key: DelegateKey,
    name: str,
    value: bytes,
    *,
    type_: SecretType = "text",
    version: int = 1,
    task_id: str = TASK_ID,
    attempt: int = ATTEMPT,
) -> SecretDelivery:
    """A builtin secret: its ciphertext, and its data key sealed to ``key`` for the task."""
    secret_id = f"sec_{name}"
    data_key = new_data_key()
    blob = encrypt_value(data_key, value, context(secret_id, version))
    sealed = seal(
        key.public, data_key, context=delivery_context(task_id, attempt, secret_id, version)
    )
    return SecretDelivery(
        name=name,
        secret_id=secret_id,
        version=version,
        type=type_,
        account=ACCOUNT,
        manager=BUILTIN,
        blob=base64.b64encode(blob).decode(),
        sealed_key=sealed,
    )


async def enveloped(
    wrapper: KeyWrapper,
    manager: ManagerSpec,
    name: str,
    value: bytes,
    *,
    type_: SecretType = "text",
    secret_id: str | None = None,
    version: int = 1,
) -> SecretDelivery:
    """A secret sealed under a customer's key, as the manager stores and sends it."""
    secret_id = secret_id or f"sec_{name}"
    envelope = await seal_with(wrapper, manager.kind, "kek-1", value, context(secret_id, version))
    return SecretDelivery(
        name=name,
        secret_id=secret_id,
        version=version,
        type=type_,
        account=ACCOUNT,
        manager=manager,
        envelope=envelope.to_json(),
    )


def referenced(
    manager: ManagerSpec,
    name: str,
    path: str,
    *,
    key: str | None = None,
    pinned: str | None = None,
    type_: SecretType = "text",
    secret_id: str | None = None,
    version: int = 1,
) -> SecretDelivery:
    return SecretDelivery(
        name=name,
        secret_id=secret_id or f"sec_{name}",
        version=version,
        type=type_,
        account=ACCOUNT,
        manager=manager,
        ref=RefSpec(path=path, key=key, version=pinned),
    )


def sealed_credentials(
    key: DelegateKey,
    manager: ManagerSpec,
    values: Mapping[str, str],
    *,
    task_id: str = TASK_ID,
    attempt: int = ATTEMPT,
) -> dict[str, str]:
    plain = json.dumps(dict(values)).encode()
    return {
        manager.id: seal(
            key.public, plain, context=credentials_context(task_id, attempt, manager.id)
        )
    }


def acquire(
    payload: TaskPayload,
    secrets: Sequence[SecretDelivery] = (),
    *,
    credentials: Mapping[str, str] | None = None,
    unavailable: Mapping[str, str] | None = None,
    task_id: str = TASK_ID,
    attempt: int = ATTEMPT,
    timeout_s: float = 10.0,
) -> AcquireResponse:
    return AcquireResponse(
        task=TaskSpec(id=task_id, payload=payload, timeout_s=timeout_s),
        attempt=attempt,
        secrets=list(secrets),
        credentials=dict(credentials or {}),
        unavailable=dict(unavailable or {}),
    )
