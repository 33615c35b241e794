"""The manager's own key-encryption keys: a ring of local 256-bit keys, one of them current.

Two uses, both AES-256-GCM:

- sensitive task values (``encrypt``/``decrypt``, the task id in the associated data, so a
  ciphertext cannot be moved to another task's row); plaintext exists on the manager only
  for the moment it is re-sealed to the acquiring delegate's key;
- the builtin secret manager's KEK (``wrap_key``/``unwrap_key``, the
  :class:`shared.envelope.KeyWrapper` protocol): it wraps the data key of each secret
  version, bound to the version's envelope context.

On disk, in the data dir::

    master.key        key "k1", made at first start (0600)
    keys/             rotated keys (0700), only once ``rotate`` has run
      k2.key, k3.key  one raw 32-byte key each (0600)
      current         the id of the key new ciphertexts use ("k1" when the file is absent)

Keys are never deleted: every ciphertext names its key, so old task rows, wrapped data keys
and backups keep opening after a rotation. Key files readable by group or others are
refused.

Formats (``||`` is concatenation; header = the bytes before the nonce)::

    value, legacy   1 || nonce (12) || ciphertext+tag         key k1, associated data = context
    value           2 || n (1) || key id (n ASCII bytes) || nonce (12) || ciphertext+tag
    wrapped key     3 || n (1) || key id (n ASCII bytes) || nonce (12) || ciphertext+tag

Values are base64 text (a store column), wrapped keys raw bytes (the envelope base64s them).
Formats 2 and 3 take header || context as associated data: the header is authenticated, and
the distinct first byte keeps a wrapped data key from being passed off as a task value (or
the reverse) even though both use the same key.

One ring is shared by the server and by ``tether-manager keys rotate`` run on the host while
the server runs. The server notices: ``encrypt``/``wrap_key``/``current_id`` stat the
``current`` file and re-read the ring when it changed, and a key id it does not know makes
it re-read the ring once before giving up.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["FIRST_KEY_ID", "KeyInfo", "MasterKey", "MasterKeyError"]

FIRST_KEY_ID = "k1"
KEYS_DIR = "keys"
CURRENT_FILE = "current"

_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_VALUE_LEGACY = 1
_VALUE = 2
_WRAPPED = 3
# Ids come back to us inside ciphertexts read from the store, and name files: only this
# shape is accepted, so no stored byte can ever point a path outside keys/.
_ID = re.compile(r"k[1-9][0-9]{0,8}")
_KEY_FILE = re.compile(r"(k[1-9][0-9]{0,8})\.key")
# (device, inode, mtime) of the current file, or None when there is none. A rotation
# renames a new file over it, so the inode alone changes; mtime covers an edit in place.
_Stamp = tuple[int, int, int] | None


class MasterKeyError(Exception):
    """A key or a ciphertext could not be used. Messages never hold key material."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    current: bool
    # The key file's mtime: when it was made, as nothing rewrites a key file.
    created_at: float
    path: Path


class MasterKey:
    """The key ring. ``MasterKey(key)`` is a ring of that one key ("k1"), in memory only;
    :meth:`load_or_create` is the ring of a data dir, which can rotate.
    """

    def __init__(self, key: bytes) -> None:
        self._keys: dict[str, AESGCM] = {FIRST_KEY_ID: _aead(key, FIRST_KEY_ID)}
        self._raw: dict[str, bytes] = {FIRST_KEY_ID: key}
        self._paths: dict[str, Path] = {}
        self._current = FIRST_KEY_ID
        self._stamp: _Stamp = None
        self._master: Path | None = None
        # The ring's ``current`` file, as the string os.stat takes: looked at before every
        # seal and wrap (several a task), where building the path cost four times the stat.
        self._current_file = ""

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        """The ring whose first key is ``path`` (DATA_DIR/master.key), made when missing."""
        if not path.exists():
            if (path.parent / KEYS_DIR / CURRENT_FILE).exists():
                # A fresh k1 would not open anything k1 sealed; the operator must restore it.
                raise MasterKeyError(
                    f"{path} is missing but {path.parent / KEYS_DIR} holds rotated keys;"
                    " restore master.key from a backup"
                )
            # FileExistsError: another process (a replica on the same volume) made it first.
            with contextlib.suppress(FileExistsError):
                _publish_key(path, path.parent)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """The ring of an existing data dir; never makes a key (host-side commands)."""
        ring = cls(_read_key(path))
        ring._master = path
        ring._current_file = os.fspath(path.parent / KEYS_DIR / CURRENT_FILE)
        ring._reload()
        return ring

    # -- the ring ---------------------------------------------------------------------

    @property
    def current_id(self) -> str:
        self._follow_current()
        return self._current

    def list_keys(self) -> list[KeyInfo]:
        """Every key of the ring on disk, oldest first, re-read now."""
        if self._master is None:
            raise MasterKeyError("this key ring is in memory only")
        self._reload()
        infos = []
        for key_id in sorted(self._paths, key=_id_number):
            path = self._paths[key_id]
            try:
                created = path.stat().st_mtime
            except OSError as exc:
                raise MasterKeyError(f"cannot read {path}: {exc.strerror}") from None
            infos.append(KeyInfo(key_id, key_id == self._current, created, path))
        return infos

    def rotate(self) -> str:
        """Make a new key, make it current, return its id. Old keys stay."""
        if self._master is None:
            raise MasterKeyError("an in-memory key ring cannot rotate")
        self._reload()
        keys_dir = self._master.parent / KEYS_DIR
        try:
            keys_dir.mkdir(mode=0o700, exist_ok=True)
            dir_fd = os.open(keys_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _own_like(self._master.parent, dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise MasterKeyError(f"cannot make {keys_dir}: {exc.strerror}") from None
        number = max(_id_number(k) for k in self._keys) + 1
        while True:
            key_id = f"k{number}"
            try:
                # The key file is complete on disk before ``current`` names it, so a reader
                # that sees the new ``current`` always finds the key.
                _publish_key(keys_dir / f"{key_id}.key", self._master.parent)
                break
            except FileExistsError:
                number += 1  # a concurrent rotation took this id
        _write_current(keys_dir, key_id, self._master.parent)
        self._reload()
        return key_id

    def _reload(self) -> None:
        """Re-read the ring from disk; the in-memory ring keeps its key."""
        if self._master is None:
            return
        keys_dir = self._master.parent / KEYS_DIR
        # ``current`` before the listing: a rotation writes the key file before ``current``,
        # so whatever id this read finds is already in the listing that follows.
        current, stamp = _read_current(keys_dir / CURRENT_FILE)
        raw = {FIRST_KEY_ID: _read_key(self._master)}
        paths = {FIRST_KEY_ID: self._master}
        try:
            entries = sorted(os.listdir(keys_dir)) if keys_dir.is_dir() else []
        except OSError as exc:
            raise MasterKeyError(f"cannot list {keys_dir}: {exc.strerror}") from None
        for name in entries:
            match = _KEY_FILE.fullmatch(name)
            if match is None or match.group(1) == FIRST_KEY_ID:
                continue  # k1 is master.key; other names are not keys
            key_id = match.group(1)
            raw[key_id] = _read_key(keys_dir / name)
            paths[key_id] = keys_dir / name
        keys = {key_id: _aead(key, key_id) for key_id, key in raw.items()}
        if current not in keys:
            raise MasterKeyError(f"{keys_dir / CURRENT_FILE} names key {current}, which is missing")
        self._keys, self._raw, self._paths = keys, raw, paths
        self._current, self._stamp = current, stamp

    def _follow_current(self) -> None:
        """Re-read the ring when ``current`` changed since the last read (one stat)."""
        if self._master is None:
            return
        if _stamp_of(self._current_file) != self._stamp:
            self._reload()

    def _key(self, key_id: str) -> AESGCM:
        aead = self._keys.get(key_id)
        if aead is None:
            # Made by a rotation on the host after this process read the ring.
            self._reload()
            aead = self._keys.get(key_id)
        if aead is None:
            raise MasterKeyError(f"key {key_id} is not in the key ring")
        return aead

    # -- keys for other purposes ------------------------------------------------------

    def derive(self, key_id: str, purpose: bytes) -> bytes:
        """A 32-byte key for ``purpose`` (HKDF-SHA256 of key ``key_id``): another use gets
        another key, so an HMAC key never doubles as an AES key. MasterKeyError when the
        ring has no such key."""
        self._key(key_id)  # re-reads the ring for a key rotated in on the host meanwhile
        return HKDF(algorithm=SHA256(), length=_KEY_LEN, salt=None, info=purpose).derive(
            self._raw[key_id]
        )

    # -- task values ------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, *, context: bytes) -> str:
        self._follow_current()
        return base64.b64encode(self._seal(_VALUE, self._current, plaintext, context)).decode()

    def decrypt(self, sealed: str, *, context: bytes) -> bytes:
        try:
            raw = base64.b64decode(sealed, validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError("ciphertext is not base64") from None
        if raw[:1] == bytes([_VALUE_LEGACY]):
            # Written before key rotation existed: always k1, the context alone as AD.
            if len(raw) < 1 + _NONCE_LEN + _TAG_LEN:
                raise MasterKeyError("ciphertext is too short")
            return _open(self._key(FIRST_KEY_ID), raw[1:], context, "ciphertext")
        if raw[:1] != bytes([_VALUE]):
            raise MasterKeyError("unknown ciphertext format")
        key_id, header, body = _split(raw, "ciphertext")
        return _open(self._key(key_id), body, header + context, "ciphertext")

    # -- the builtin KEK (shared.envelope.KeyWrapper) ---------------------------------

    async def wrap_key(self, data_key: bytes, context: bytes) -> bytes:
        if not isinstance(data_key, bytes) or len(data_key) != _KEY_LEN:
            raise MasterKeyError(f"a data key is {_KEY_LEN} bytes")
        self._follow_current()
        return self._seal(_WRAPPED, self._current, data_key, context)

    async def unwrap_key(self, wrapped: bytes, context: bytes) -> bytes:
        if wrapped[:1] != bytes([_WRAPPED]):
            raise MasterKeyError("wrapped key has an unknown format")
        key_id, header, body = _split(wrapped, "wrapped key")
        data_key = _open(self._key(key_id), body, header + context, "wrapped key")
        if len(data_key) != _KEY_LEN:
            raise MasterKeyError("wrapped key does not hold a data key")
        return data_key

    @staticmethod
    def wrapped_key_id(wrapped: bytes) -> str:
        """The id of the key that wrapped ``wrapped`` (read from its header, not checked)."""
        if wrapped[:1] != bytes([_WRAPPED]):
            raise MasterKeyError("wrapped key has an unknown format")
        return _split(wrapped, "wrapped key")[0]

    def _seal(self, fmt: int, key_id: str, plaintext: bytes, context: bytes) -> bytes:
        raw_id = key_id.encode("ascii")
        header = bytes([fmt, len(raw_id)]) + raw_id
        nonce = secrets.token_bytes(_NONCE_LEN)
        return header + nonce + self._key(key_id).encrypt(nonce, plaintext, header + context)


def _split(raw: bytes, what: str) -> tuple[str, bytes, bytes]:
    """(key id, header, nonce || ciphertext) of a format 2 or 3 blob."""
    if len(raw) < 2:
        raise MasterKeyError(f"{what} is too short")
    end = 2 + raw[1]
    try:
        key_id = raw[2:end].decode("ascii")
    except UnicodeDecodeError:
        key_id = ""
    if len(raw) < end or not _ID.fullmatch(key_id):
        raise MasterKeyError(f"{what} does not name a valid key id")
    if len(raw) - end < _NONCE_LEN + _TAG_LEN:
        raise MasterKeyError(f"{what} is too short")
    return key_id, raw[:end], raw[end:]


def _open(aead: AESGCM, body: bytes, associated: bytes, what: str) -> bytes:
    try:
        return aead.decrypt(body[:_NONCE_LEN], body[_NONCE_LEN:], associated)
    except InvalidTag:
        raise MasterKeyError(f"{what} does not open with its key and this context") from None


def _aead(key: bytes, key_id: str) -> AESGCM:
    if len(key) != _KEY_LEN:
        raise MasterKeyError(f"key {key_id} must be {_KEY_LEN} bytes")
    return AESGCM(key)


def _id_number(key_id: str) -> int:
    return int(key_id[1:])


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise MasterKeyError(f"no key at {path}") from None
    except OSError as exc:
        raise MasterKeyError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        # fstat of the opened file: the mode checked is the mode of the bytes read.
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise MasterKeyError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise MasterKeyError(
                f"{path} is mode {stat.S_IMODE(st.st_mode):04o}, readable by group or others:"
                f" rotate it, or run `chmod 600 {path}` once you know it did not leak"
            )
        key = f.read(_KEY_LEN + 1)
    if len(key) != _KEY_LEN:
        raise MasterKeyError(f"{path} does not hold a {_KEY_LEN}-byte key")
    return key


def _stamp_of(path: Path | str) -> _Stamp:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MasterKeyError(f"cannot read {path}: {exc.strerror}") from None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _read_current(path: Path) -> tuple[str, _Stamp]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return FIRST_KEY_ID, None
    except OSError as exc:
        raise MasterKeyError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        text = f.read(64).decode("ascii", errors="replace").strip()
    if not _ID.fullmatch(text):
        raise MasterKeyError(f"{path} does not hold a key id")
    return text, (st.st_dev, st.st_ino, st.st_mtime_ns)


def _temp(directory: Path) -> tuple[Path, int]:
    """A new 0600 file in ``directory``: on the same filesystem as the data dir, so it can
    be linked or renamed into place atomically, and outside keys/ so that no half-written
    file ever shows there (a backup copies keys/ as it finds it)."""
    path = directory / f".tether-key-{secrets.token_hex(8)}.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _own_like(directory, fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return path, fd


def _own_like(directory: Path, fd: int) -> None:
    """Give what root makes in the data dir (``sudo tether-manager keys rotate``) to the
    data dir's owner: the running server (a systemd dynamic user) must read the new key
    now, not after its next start, when systemd fixes ownership."""
    if os.geteuid() != 0:
        return
    st = os.stat(directory)
    if st.st_uid != 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def _write_synced(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_key(target: Path, scratch: Path) -> None:
    """Write a new random key to ``target``, complete or not at all.

    Raises FileExistsError when ``target`` exists: a hard link, unlike a rename, never
    replaces a file, so two processes can race for one id and exactly one gets it.
    """
    try:
        tmp, fd = _temp(scratch)
    except OSError as exc:
        raise MasterKeyError(f"cannot write in {scratch}: {exc.strerror}") from None
    try:
        _write_synced(fd, secrets.token_bytes(_KEY_LEN))
        os.link(tmp, target)
        _fsync_dir(target.parent)
    except FileExistsError:
        raise
    except OSError as exc:
        raise MasterKeyError(f"cannot write {target}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_current(keys_dir: Path, key_id: str, scratch: Path) -> None:
    """Replace ``current`` atomically: a reader sees the old id or the new one."""
    target = keys_dir / CURRENT_FILE
    try:
        tmp, fd = _temp(scratch)
        try:
            _write_synced(fd, f"{key_id}\n".encode("ascii"))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(keys_dir)
    except OSError as exc:
        raise MasterKeyError(f"cannot write {target}: {exc.strerror}") from None
