"""The spool's records sealed with a key of the delegate's own (AES-256-GCM).

The key is ``<data_dir>/spool.key``: 32 random bytes, 0600, beside the delegate's X25519
key and made and checked the same way (:func:`shared.sealing.load_or_create_private_key`).
It never leaves the host, so a spool copied to another host (another key) does not open
there: its directories are reported unreadable and left as they are.

A sealed record payload (inside the usual ``length | CRC`` frame, the CRC over these
bytes)::

    0x01 || nonce (12, random) || ciphertext+tag

with associated data ``tether-spool-v1 \\0 <directory name> \\0 <segment number>``: a record
moved to another task attempt's directory or another segment does not open. A plaintext
record (a spool written before sealing existed, or by a spool without a key) starts with
``{`` and reads as it always did.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SPOOL_KEY_FILE", "SpoolKey", "SpoolKeyMismatch", "is_sealed_record"]

SPOOL_KEY_FILE = "spool.key"
_SEALED = 0x01
_NONCE = 12
_AD = b"tether-spool-v1\x00"


class SpoolKeyMismatch(Exception):
    """A sealed record did not open with this delegate's key (another host's, or tampered)."""


def is_sealed_record(payload: bytes) -> bool:
    return payload[:1] == bytes([_SEALED])


class SpoolKey:
    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, payload: bytes, directory: str, segment: int) -> bytes:
        nonce = os.urandom(_NONCE)
        body = self._aead.encrypt(nonce, payload, _ad(directory, segment))
        return bytes([_SEALED]) + nonce + body

    def open(self, sealed: bytes, directory: str, segment: int) -> bytes:
        try:
            return self._aead.decrypt(
                sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], _ad(directory, segment)
            )
        except (InvalidTag, ValueError):
            raise SpoolKeyMismatch(
                "the record does not open with this delegate's spool key"
            ) from None


def _ad(directory: str, segment: int) -> bytes:
    return _AD + directory.encode() + b"\x00" + str(segment).encode()
