"""Envelope encryption: each secret version under its own data key, wrapped by a KEK.

A secret version is encrypted with a fresh random AES-256-GCM *data key*; the data key is
wrapped by a key-encryption key (KEK) that the manager or the customer holds (the builtin
key, AWS KMS, Vault Transit, Google Cloud KMS). Rotating the KEK re-wraps data keys only.

Both the value and the wrapping are bound to an :class:`EnvelopeContext` (account, secret
id, version, purpose): the value through GCM associated data, the wrapping through the
KEK's own mechanism (KMS encryption context, Transit associated data, GCP additional
authenticated data). A ciphertext copied to another secret, version or account fails to
open.

Formats::

    context   = format (1 byte, = 1) || for account, secret_id, version, purpose in order:
                length (4 bytes, big-endian) || UTF-8 bytes   (version as decimal digits)
    value     = format (1 byte, = 1) || nonce (12) || AES-256-GCM ciphertext and tag (16)
    envelope  = JSON {"format": 1, "kek_kind", "kek_id", "wrapped_key", "blob"}
                (the two byte fields in standard base64)

The data key is an ordinary ``bytes`` object: Python gives no way to wipe it, so this
module does not pretend to. It lives as long as the garbage collector lets it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DATA_KEY_LEN",
    "FORMAT_VERSION",
    "MAX_ENVELOPE_CHARS",
    "Envelope",
    "EnvelopeContext",
    "EnvelopeError",
    "KeyWrapper",
    "decrypt_value",
    "encrypt_value",
    "new_data_key",
    "open_with",
    "seal_with",
]

FORMAT_VERSION = 1
DATA_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_LEN = struct.Struct(">I")
# A stored envelope is read back from our own store; anything this large is not ours.
MAX_ENVELOPE_CHARS = 64 * 1024 * 1024
_ENVELOPE_FIELDS = frozenset({"format", "kek_kind", "kek_id", "wrapped_key", "blob"})


class EnvelopeError(Exception):
    """A value or an envelope could not be made or opened.

    Messages name the problem, never key material or plaintext.
    """


class KeyWrapper(Protocol):
    """What wraps data keys: ``delegate.secrets.base.EnvelopeProvider`` or the builtin KEK.

    A protocol rather than the provider base class because ``shared`` imports neither the
    manager nor the delegate.
    """

    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes: ...

    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class EnvelopeContext:
    """Where a ciphertext belongs. Bound to the value and to the wrapping of its data key."""

    account: str
    secret_id: str
    version: int
    purpose: str = "secret-value"

    def __post_init__(self) -> None:
        for name in ("account", "secret_id", "purpose"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise EnvelopeError(f"envelope context {name} must be a non-empty string")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise EnvelopeError(f"envelope context {name} is not valid text") from None
        # bool is an int; a version of True is a bug somewhere else.
        if type(self.version) is not int or self.version < 0:
            raise EnvelopeError("envelope context version must be a non-negative integer")

    def _fields(self) -> tuple[str, str, str, str]:
        return (self.account, self.secret_id, str(self.version), self.purpose)

    def canonical(self) -> bytes:
        """The associated data: unambiguous, because every field carries its length."""
        parts = [bytes([FORMAT_VERSION])]
        for field_value in self._fields():
            raw = field_value.encode("utf-8")
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)

    @classmethod
    def from_canonical(cls, data: bytes) -> EnvelopeContext:
        """Parse :meth:`canonical` output; anything else is refused.

        Providers that take a string map rather than bytes (AWS KMS) rebuild the context
        from the canonical bytes they are handed.
        """
        if not data or data[0] != FORMAT_VERSION:
            raise EnvelopeError("envelope context has an unknown format")
        fields: list[str] = []
        pos = 1
        for _ in range(4):
            if len(data) - pos < _LEN.size:
                raise EnvelopeError("envelope context is truncated")
            (length,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if len(data) - pos < length:
                raise EnvelopeError("envelope context is truncated")
            try:
                fields.append(data[pos : pos + length].decode("utf-8"))
            except UnicodeDecodeError:
                raise EnvelopeError("envelope context is not valid UTF-8") from None
            pos += length
        if pos != len(data):
            raise EnvelopeError("envelope context has trailing bytes")
        account, secret_id, version, purpose = fields
        # Only the form canonical() writes: digits, no sign, no leading zero.
        if not version.isascii() or not version.isdigit() or str(int(version)) != version:
            raise EnvelopeError("envelope context version is not a canonical integer")
        return cls(account=account, secret_id=secret_id, version=int(version), purpose=purpose)

    def as_kms_context(self) -> dict[str, str]:
        """The context as a string map (AWS EncryptionContext); readable in CloudTrail."""
        return {
            "tether:format": str(FORMAT_VERSION),
            "tether:account": self.account,
            "tether:secret_id": self.secret_id,
            "tether:version": str(self.version),
            "tether:purpose": self.purpose,
        }


def new_data_key() -> bytes:
    """A fresh random 256-bit data key. One per secret version, never reused."""
    return AESGCM.generate_key(bit_length=DATA_KEY_LEN * 8)


def encrypt_value(data_key: bytes, plaintext: bytes, ctx: EnvelopeContext) -> bytes:
    _check_data_key(data_key)
    nonce = os.urandom(_NONCE_LEN)
    return (
        bytes([FORMAT_VERSION])
        + nonce
        + AESGCM(data_key).encrypt(nonce, plaintext, ctx.canonical())
    )


def decrypt_value(data_key: bytes, blob: bytes, ctx: EnvelopeContext) -> bytes:
    _check_data_key(data_key)
    if len(blob) < 1 + _NONCE_LEN + _TAG_LEN:
        raise EnvelopeError("encrypted value is too short")
    if blob[0] != FORMAT_VERSION:
        raise EnvelopeError(f"encrypted value has unknown format {blob[0]}")
    nonce = blob[1 : 1 + _NONCE_LEN]
    try:
        return AESGCM(data_key).decrypt(nonce, blob[1 + _NONCE_LEN :], ctx.canonical())
    except InvalidTag:
        # One message for every cause: which of key, context or bytes was wrong is
        # nothing an attacker should learn.
        raise EnvelopeError(
            "encrypted value is corrupt, or the data key or context is wrong"
        ) from None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One sealed secret version as the store keeps it."""

    kek_kind: str
    kek_id: str
    wrapped_key: bytes
    blob: bytes

    def __post_init__(self) -> None:
        for name in ("kek_kind", "kek_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise EnvelopeError(f"envelope {name} must be a non-empty string")
        if not isinstance(self.wrapped_key, bytes) or not self.wrapped_key:
            raise EnvelopeError("envelope wrapped_key must be non-empty bytes")
        if not isinstance(self.blob, bytes) or len(self.blob) < 1 + _NONCE_LEN + _TAG_LEN:
            raise EnvelopeError("envelope blob is missing or too short")

    def __repr__(self) -> str:
        # Ciphertext only, but there is no reason to print kilobytes of it in a log.
        return (
            f"Envelope(kek_kind={self.kek_kind!r}, kek_id={self.kek_id!r}, "
            f"wrapped_key=<{len(self.wrapped_key)} bytes>, blob=<{len(self.blob)} bytes>)"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "kek_kind": self.kek_kind,
                "kek_id": self.kek_id,
                "wrapped_key": base64.b64encode(self.wrapped_key).decode("ascii"),
                "blob": base64.b64encode(self.blob).decode("ascii"),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Envelope:
        if not isinstance(text, str):
            raise EnvelopeError("envelope must be JSON text")
        if len(text) > MAX_ENVELOPE_CHARS:
            raise EnvelopeError("envelope is too large")
        try:
            raw = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except ValueError:
            # JSONDecodeError keeps the whole document on the exception: do not chain it.
            raise EnvelopeError("envelope is not valid JSON") from None
        if not isinstance(raw, dict):
            raise EnvelopeError("envelope must be a JSON object")
        if set(raw) != _ENVELOPE_FIELDS:
            missing = sorted(_ENVELOPE_FIELDS - set(raw))
            extra = sorted(set(raw) - _ENVELOPE_FIELDS)
            raise EnvelopeError(f"envelope fields are wrong (missing {missing}, unknown {extra})")
        if type(raw["format"]) is not int or raw["format"] != FORMAT_VERSION:
            raise EnvelopeError("envelope has an unknown format version")
        for name in ("kek_kind", "kek_id", "wrapped_key", "blob"):
            if not isinstance(raw[name], str):
                raise EnvelopeError(f"envelope {name} must be a string")
        return cls(
            kek_kind=raw["kek_kind"],
            kek_id=raw["kek_id"],
            wrapped_key=_b64decode(raw["wrapped_key"], "wrapped_key"),
            blob=_b64decode(raw["blob"], "blob"),
        )


async def seal_with(
    provider: KeyWrapper, kek_kind: str, kek_id: str, plaintext: bytes, ctx: EnvelopeContext
) -> Envelope:
    """Encrypt ``plaintext`` under a new data key and wrap that key with ``provider``.

    ``kek_kind`` and ``kek_id`` are recorded, not checked: they say which provider the
    envelope needs when it is opened.
    """
    data_key = new_data_key()
    blob = encrypt_value(data_key, plaintext, ctx)
    wrapped = await provider.wrap_key(data_key, ctx.canonical())
    return Envelope(kek_kind=kek_kind, kek_id=kek_id, wrapped_key=wrapped, blob=blob)


async def open_with(provider: KeyWrapper, envelope: Envelope, ctx: EnvelopeContext) -> bytes:
    """Unwrap the data key with ``provider`` (which must match ``envelope.kek_kind`` and
    ``kek_id``; the caller picks it) and decrypt the value.
    """
    data_key = await provider.unwrap_key(envelope.wrapped_key, ctx.canonical())
    if len(data_key) != DATA_KEY_LEN:
        raise EnvelopeError("unwrapped data key has the wrong length")
    return decrypt_value(data_key, envelope.blob, ctx)


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_LEN:
        raise EnvelopeError(f"a data key is {DATA_KEY_LEN} bytes")


def _b64decode(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"envelope {name} is not valid base64") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise EnvelopeError(f"envelope has a duplicate field {key!r}")
        result[key] = value
    return result
