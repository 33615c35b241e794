"""The manager's own key-encryption key, a local 256-bit key made at first start.

Sensitive task values are kept encrypted with it (AES-256-GCM, the task id as associated
data, so a ciphertext cannot be moved to another task's row). Plaintext exists on the
manager only for the moment it is re-sealed to the acquiring delegate's key.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["MasterKey", "MasterKeyError"]

_VERSION = b"\x01"


class MasterKeyError(Exception):
    pass


class MasterKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise MasterKeyError("the master key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                raise MasterKeyError(
                    f"{path} is readable by group or others; run chmod 600 on it"
                ) from None
            return cls(path.read_bytes())
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        return cls(path.read_bytes())

    def encrypt(self, plaintext: bytes, *, context: bytes) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(
            _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)
        ).decode()

    def decrypt(self, sealed: str, *, context: bytes) -> bytes:
        try:
            raw = base64.b64decode(sealed, validate=True)
        except ValueError:
            raise MasterKeyError("ciphertext is not base64") from None
        if len(raw) < 29 or raw[:1] != _VERSION:
            raise MasterKeyError("unknown ciphertext format")
        try:
            return self._aead.decrypt(raw[1:13], raw[13:], context)
        except InvalidTag:
            raise MasterKeyError("ciphertext does not open with this key and context") from None
