"""Sealed boxes: values only one delegate can open.

The manager seals each sensitive value to the X25519 public key of the delegate that
acquired the task. A TLS-inspecting proxy between them sees only ciphertext, and so does a
log line or a stored frame that should not have held the value in the first place.

Format (then standard base64)::

    version (1 byte, = 1) || ephemeral public key (32) || nonce (12) || AES-256-GCM ciphertext

The AES key comes from HKDF-SHA256 over the X25519 shared secret, salted with both public
keys so a box is bound to the key pair it was made for. ``context`` is GCM associated data:
the caller binds a box to where it belongs (a task id, a field name) so it cannot be moved.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_LEN",
    "VERSION",
    "SealError",
    "generate_keypair",
    "load_or_create_private_key",
    "open_sealed",
    "public_from_private",
    "public_key_b64",
    "seal",
]

VERSION = 1
KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_INFO = b"tether-seal-v1"
_HEADER_LEN = 1 + KEY_LEN + _NONCE_LEN


class SealError(Exception):
    """A box could not be made or opened, or a key file is unfit.

    Messages name the problem, never key material or plaintext.
    """


def generate_keypair() -> tuple[bytes, bytes]:
    """A new X25519 key pair as raw bytes: (private 32, public 32)."""
    private = X25519PrivateKey.generate()
    return _private_raw(private), _public_raw(private.public_key())


def public_from_private(raw: bytes) -> bytes:
    return _public_raw(_load_private(raw).public_key())


def public_key_b64(public: bytes) -> str:
    if len(public) != KEY_LEN:
        raise SealError(f"a public key is {KEY_LEN} bytes, got {len(public)}")
    return base64.b64encode(public).decode("ascii")


def seal(recipient_public_b64: str, plaintext: bytes, *, context: bytes = b"") -> str:
    recipient_raw = _decode_b64(recipient_public_b64, "recipient public key")
    if len(recipient_raw) != KEY_LEN:
        raise SealError(f"recipient public key is {len(recipient_raw)} bytes, not {KEY_LEN}")
    recipient = X25519PublicKey.from_public_bytes(recipient_raw)
    ephemeral = X25519PrivateKey.generate()
    eph_pub = _public_raw(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        # A low-order point yields an all-zero secret; cryptography refuses it.
        raise SealError("recipient public key is not usable") from None
    key = _derive(shared, eph_pub, recipient_raw)
    nonce = os.urandom(_NONCE_LEN)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, context)
    box = bytes([VERSION]) + eph_pub + nonce + ciphertext
    return base64.b64encode(box).decode("ascii")


def open_sealed(private_raw: bytes, sealed_b64: str, *, context: bytes = b"") -> bytes:
    private = _load_private(private_raw)
    box = _decode_b64(sealed_b64, "sealed value")
    if len(box) < _HEADER_LEN + _TAG_LEN:
        raise SealError("sealed value is too short")
    if box[0] != VERSION:
        raise SealError(f"sealed value has unknown version {box[0]}")
    eph_pub = box[1 : 1 + KEY_LEN]
    nonce = box[1 + KEY_LEN : _HEADER_LEN]
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(eph_pub))
    except ValueError:
        raise SealError("sealed value is corrupt or not for this key") from None
    key = _derive(shared, eph_pub, _public_raw(private.public_key()))
    try:
        return AESGCM(key).decrypt(nonce, box[_HEADER_LEN:], context)
    except InvalidTag:
        # One message for every cause: which of key, context or bytes was wrong is
        # nothing an attacker should learn.
        raise SealError(
            "sealed value is corrupt, not for this key, or for another context"
        ) from None


def load_or_create_private_key(path: Path) -> bytes:
    """The private key kept at ``path``, made (mode 0600) on first use.

    An existing file that group or others can read is refused rather than fixed: the key
    may already have leaked, and the operator should know.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_private_key(path)
    private, _ = generate_keypair()
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(private)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return private


def _read_private_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise SealError(f"private key {path} is not a regular file")
    if mode & 0o077:
        raise SealError(
            f"private key {path} is readable by group or others (mode {stat.S_IMODE(mode):04o});"
            " make it 0600 or remove it"
        )
    raw = path.read_bytes()
    if len(raw) != KEY_LEN:
        raise SealError(f"private key {path} holds {len(raw)} bytes, not {KEY_LEN}")
    return raw


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub, info=_INFO)
    return hkdf.derive(shared)


def _load_private(raw: bytes) -> X25519PrivateKey:
    if len(raw) != KEY_LEN:
        raise SealError(f"a private key is {KEY_LEN} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def _private_raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


def _public_raw(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _decode_b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SealError(f"{what} is not valid base64") from None
