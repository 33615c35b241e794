"""What the manager tells a delegate about secrets: the wire models of secret delivery.

The manager never sends a plaintext value. For each secret a task references, the acquire
answer carries one :class:`SecretDelivery` holding exactly one of:

- ``builtin``: the value's ciphertext (``blob``) and its data key *sealed to the acquiring
  delegate's X25519 key* (``sealed_key``); the manager unwrapped the data key with its own
  key-encryption key and re-sealed it, so a TLS-inspecting proxy sees ciphertext only;
- ``envelope``: the stored envelope as it is (the data key wrapped by the customer's KMS,
  Transit key or Cloud KMS key), for the delegate to unwrap with its own credentials;
- ``ref``: where the value lives in the customer's store (Vault KV, AWS Secrets Manager,
  Azure Key Vault, a custom script).

A secret manager whose credentials are kept as a builtin secret has them sealed to the
delegate too (``AcquireResponse.credentials``, keyed by manager id).

Every sealed box here is bound, through its associated data, to the task, the attempt and
the secret version (:func:`delivery_context`), so a box cannot be replayed into another task.

Internal *secret operations* (a secret manager's connection test, wrapping a data key with a
customer's key for an inline secret, re-wrapping one for a migration) travel as ordinary
tasks with a :class:`SecretOpPayload`: the manager itself never talks to a customer's secret
manager.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ENVELOPE_KINDS",
    "EXTERNAL_ENVELOPE_KINDS",
    "MANAGER_KINDS",
    "MAX_FILE_SECRET_BYTES",
    "REFERENCE_KINDS",
    "SECRET_TYPES",
    "ManagerSpec",
    "RefSpec",
    "SecretDelivery",
    "SecretKind",
    "SecretOpPayload",
    "SecretType",
    "credential_values",
    "credentials_context",
    "delivery_context",
    "op_key_context",
]

SecretKind = Literal[
    "builtin",
    "vault_kv",
    "vault_transit",
    "aws_kms",
    "aws_secrets_manager",
    "gcp_kms",
    "azure_key_vault",
    "custom",
]
SecretType = Literal["text", "file", "ssh_key", "winrm"]

MANAGER_KINDS: frozenset[str] = frozenset(
    {
        "builtin",
        "vault_kv",
        "vault_transit",
        "aws_kms",
        "aws_secrets_manager",
        "gcp_kms",
        "azure_key_vault",
        "custom",
    }
)
# Kinds whose ciphertext the manager keeps; the first is the manager's own key.
ENVELOPE_KINDS: frozenset[str] = frozenset({"builtin", "aws_kms", "gcp_kms", "vault_transit"})
EXTERNAL_ENVELOPE_KINDS: frozenset[str] = ENVELOPE_KINDS - {"builtin"}
# Kinds whose value stays in the customer's store; the manager keeps a path and a version.
REFERENCE_KINDS: frozenset[str] = frozenset(
    {"vault_kv", "aws_secrets_manager", "azure_key_vault", "custom"}
)
SECRET_TYPES: frozenset[str] = frozenset({"text", "file", "ssh_key", "winrm"})
MAX_FILE_SECRET_BYTES = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class ManagerSpec(_Strict):
    """How a delegate reaches one secret manager (its credentials travel separately)."""

    id: str
    name: str
    kind: SecretKind
    settings: dict[str, str] = Field(default_factory=dict)


class RefSpec(_Strict):
    """A value kept in the customer's store: a path, a key inside it, a pinned version."""

    path: str = Field(min_length=1, max_length=2048)
    key: str | None = Field(default=None, max_length=1024)
    # None: the current version, fetched afresh when the cache entry ages out.
    version: str | None = Field(default=None, max_length=256)


class SecretDelivery(_Strict):
    """One secret a task references, as the delegate needs it to obtain the value."""

    name: str
    secret_id: str
    version: int = Field(ge=1)
    type: SecretType
    account: str
    manager: ManagerSpec
    # builtin: base64 value ciphertext, and its data key sealed to this delegate.
    blob: str | None = None
    sealed_key: str | None = None
    # aws_kms, gcp_kms, vault_transit: shared.envelope.Envelope as JSON.
    envelope: str | None = None
    ref: RefSpec | None = None

    @model_validator(mode="after")
    def _one_form(self) -> SecretDelivery:
        forms = [
            self.blob is not None and self.sealed_key is not None,
            self.envelope is not None,
            self.ref is not None,
        ]
        if sum(forms) != 1:
            raise ValueError("a delivery carries exactly one of blob+sealed_key, envelope, ref")
        if (self.blob is None) != (self.sealed_key is None):
            raise ValueError("blob and sealed_key come together")
        return self


class SecretOpPayload(_Strict):
    """An internal task: something only a delegate may do with a customer's secret manager.

    - ``check``: the connection test of ``manager``; outputs nothing.
    - ``wrap``: wrap the data key the task's sealed env carries (``TETHER_DATA_KEY``, base64)
      with ``manager`` under ``context``; output ``wrapped_key`` (base64).
    - ``unwrap``: unwrap ``wrapped_key`` with ``manager`` under ``context``; output
      ``sealed_key``: the data key sealed to ``reply_key`` (an X25519 public key the manager
      made for this operation alone, so the stored output is useless afterwards).
    - ``rewrap``: unwrap with ``manager`` and wrap with ``target``; output ``wrapped_key``.
    """

    type: Literal["secret_op"] = "secret_op"
    op: Literal["check", "wrap", "unwrap", "rewrap"]
    manager: ManagerSpec
    target: ManagerSpec | None = None
    # shared.envelope.EnvelopeContext.canonical(), base64.
    context: str | None = None
    wrapped_key: str | None = None
    reply_key: str | None = None

    @model_validator(mode="after")
    def _fields_for_op(self) -> SecretOpPayload:
        need: dict[str, tuple[str, ...]] = {
            "check": (),
            "wrap": ("context",),
            "unwrap": ("context", "wrapped_key", "reply_key"),
            "rewrap": ("context", "wrapped_key", "target"),
        }
        missing = [name for name in need[self.op] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"secret_op {self.op} needs {', '.join(missing)}")
        return self


def delivery_context(task_id: str, attempt: int, secret_id: str, version: int) -> bytes:
    """Associated data of a data key sealed to a delegate for one task attempt."""
    return f"tether-secret-key-v1\x00{task_id}\x00{attempt}\x00{secret_id}\x00{version}".encode()


def credentials_context(task_id: str, attempt: int, manager_id: str) -> bytes:
    """Associated data of a secret manager's credentials sealed for one task attempt."""
    return f"tether-manager-creds-v1\x00{task_id}\x00{attempt}\x00{manager_id}".encode()


def credential_values(plain: bytes) -> list[str]:
    """What to mask of a secret manager's credentials: the whole document and each string
    in it (a Vault token is printed alone far more often than inside its JSON)."""
    text = plain.decode("utf-8", "surrogateescape")
    try:
        document = json.loads(text)
    except ValueError:
        return [text]
    values = [text]
    if isinstance(document, dict):
        values += [v for v in document.values() if isinstance(v, str) and v]
    return values


def op_key_context(task_id: str) -> bytes:
    """Associated data of the data key a ``unwrap`` operation seals back to the manager."""
    return f"tether-op-key-v1\x00{task_id}".encode()
