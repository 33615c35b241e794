"""Data keys: one AES-256-GCM key per owner of sealed records, wrapped by the master key.

An owner is whatever the records belong to and die with: ``task:<id>``, ``incident:<id>``,
``run:<id>``. Its key is made at its first seal, stored wrapped by the master key in the
``data_keys`` table (format 3 of :mod:`manager.keys.masterkey`, the owner in the associated
data, so a wrapped key cannot be moved to another owner), and kept unwrapped in memory in a
bounded LRU. A master-key rotation re-wraps these keys (:func:`rewrap_data_keys`); the
records themselves are never touched, since the data key does not change.

A sealed record (``||`` is concatenation)::

    1 (1) || nonce (12, random) || ciphertext+tag          29 bytes over the plaintext

with the associated data ``tether-record-v1 \\0 owner \\0 field \\0 seq (8, big-endian)``:
a record opens only as the field and position of the owner it was sealed for, so rows
swapped between tasks, between fields or between positions of one log fail to open.
Random 96-bit nonces: a key seals one owner's records, far below the 2^32 messages after
which random nonces under one key would need counting.

The API for other record kinds (incidents, runbook runs)::

    keys = DataKeys(store, master_key)
    blob = await keys.seal("run:run_123", "output", 0, b"...")      # makes the key if new
    text = await keys.open("run:run_123", "output", 0, blob)        # DataKeyError if not
    key = await keys.key("run:run_123")      # or a DataKey, to seal a batch synchronously
    blobs = key.seal_many([("log:1:stdout", seq, line) for seq, line in ...])
"""

from __future__ import annotations

import collections
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.store.base import DataKeyStore, NewDataKey

__all__ = [
    "SEAL_OVERHEAD",
    "DataKey",
    "DataKeyError",
    "DataKeys",
    "RewrapFailure",
    "RewrapReport",
    "is_sealed",
    "rewrap_data_keys",
]

_FORMAT = 1
_NONCE = 12
_TAG = 16
_KEY_LEN = 32
SEAL_OVERHEAD = 1 + _NONCE + _TAG
# Owners name a kind and an id; never a NUL (it separates the associated data's parts).
_OWNER = re.compile(r"[a-z][a-z_]*:[^\x00]{1,200}")
_AD = b"tether-record-v1\x00"
_WRAP_CONTEXT = b"tether-data-key-v1\x00"
_FIELDS_KEPT = 64
# Unwrapped keys kept: a key is 32 bytes and an AESGCM object, so this is well under 1 MiB;
# the hot owners (tasks whose logs stream in, logs being followed) are far fewer.
CACHE_SIZE = 4096
# Keys re-wrapped per page read during a rotation.
_REWRAP_PAGE = 500


class DataKeyError(Exception):
    """A record or a key could not be opened. Messages never hold key material or data."""


def is_sealed(blob: bytes) -> bool:
    """Whether ``blob`` has the shape of a sealed record (the format byte and the length)."""
    return len(blob) >= SEAL_OVERHEAD and blob[0] == _FORMAT


class DataKey:
    """One owner's unwrapped key. Sealing is synchronous: a batch of records takes one
    AESGCM object and one call for all its nonces."""

    __slots__ = ("_aead", "_fields", "_prefix", "owner")

    def __init__(self, owner: str, key: bytes) -> None:
        self.owner = owner
        self._aead = AESGCM(key)
        self._prefix = _AD + owner.encode() + b"\x00"
        # The associated data's head per field: an owner has a handful of fields (a task:
        # payload, outputs, deployment, a log field per attempt and stream), each built once.
        self._fields: dict[str, bytes] = {}

    def _ad(self, field: str, seq: int) -> bytes:
        head = self._fields.get(field)
        if head is None:
            if len(self._fields) >= _FIELDS_KEPT:
                self._fields.clear()
            head = self._fields[field] = self._prefix + field.encode() + b"\x00"
        return head + seq.to_bytes(8, "big", signed=True)

    def seal(self, field: str, seq: int, plaintext: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return bytes([_FORMAT]) + nonce + self._aead.encrypt(nonce, plaintext, self._ad(field, seq))

    def seal_many(self, records: Sequence[tuple[str, int, bytes]]) -> list[bytes]:
        """Each (field, seq, plaintext) sealed, in order."""
        nonces = os.urandom(_NONCE * len(records))
        out = []
        encrypt, head = self._aead.encrypt, bytes([_FORMAT])
        for i, (fld, seq, plaintext) in enumerate(records):
            nonce = nonces[i * _NONCE : (i + 1) * _NONCE]
            out.append(head + nonce + encrypt(nonce, plaintext, self._ad(fld, seq)))
        return out

    def open(self, field: str, seq: int, sealed: bytes) -> bytes:
        if not is_sealed(sealed):
            raise DataKeyError(f"{self.owner} {field}: not a sealed record")
        try:
            return self._aead.decrypt(
                sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], self._ad(field, seq)
            )
        except InvalidTag:
            raise DataKeyError(
                f"{self.owner} {field} {seq}: the record does not open as this owner's"
                " (tampered, or moved from another owner or position)"
            ) from None


class DataKeys:
    """Get-or-create each owner's data key; unwrapped keys are cached (bounded LRU)."""

    def __init__(
        self,
        store: DataKeyStore,
        master: MasterKey,
        *,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._master = master
        self._cache: collections.OrderedDict[str, DataKey] = collections.OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def cached(self, owner: str) -> DataKey | None:
        key = self._cache.get(owner)
        if key is not None:
            self._cache.move_to_end(owner)
        return key

    async def key(self, owner: str, *, new: bool = False) -> DataKey:
        """``owner``'s key, made and stored when it has none. ``new``: the owner was just
        made (a fresh id), so the store is not asked first: one round trip, not two."""
        key = self.cached(owner)
        if key is not None:
            return key
        if not new:
            found = await self.existing([owner])
            if owner in found:
                return found[owner]
        raw = os.urandom(_KEY_LEN)
        wrapped = await self._master.wrap_key(raw, _context(owner))
        stored = await self._store.add_data_key(owner, wrapped, self._clock())
        # Another writer (a replica) may have made it first: its key is the one.
        return self._keep(owner, raw if stored == wrapped else await self._unwrap(owner, stored))

    async def made(self, owner: str) -> tuple[DataKey, NewDataKey]:
        """A key for ``owner``, just made (a fresh id: it has none), kept here, and its
        wrapped form for the caller to store with the owner's first record, in that
        record's transaction (``TaskStore.insert_task``'s ``data_key``)."""
        raw = os.urandom(_KEY_LEN)
        wrapped = await self._master.wrap_key(raw, _context(owner))
        return self._keep(owner, raw), NewDataKey(owner, wrapped, self._clock())

    async def existing(self, owners: Sequence[str]) -> dict[str, DataKey]:
        """The keys of those of ``owners`` that have one (one store read for the misses)."""
        out: dict[str, DataKey] = {}
        missing = []
        for owner in dict.fromkeys(owners):
            key = self.cached(owner)
            if key is None:
                missing.append(owner)
            else:
                out[owner] = key
        if missing:
            for owner, wrapped in (await self._store.data_keys_of(missing)).items():
                out[owner] = self._keep(owner, await self._unwrap(owner, wrapped))
        return out

    async def seal(self, owner: str, field: str, seq: int, plaintext: bytes) -> bytes:
        return (await self.key(owner)).seal(field, seq, plaintext)

    async def open(self, owner: str, field: str, seq: int, sealed: bytes) -> bytes:
        key = (await self.existing([owner])).get(owner)
        if key is None:
            raise DataKeyError(f"{owner} has no data key")
        return key.open(field, seq, sealed)

    async def forget(self, owner: str) -> None:
        """Delete ``owner``'s key, here and in the store: its sealed records no longer open
        (a purge crypto-shreds with it; a write that was not made drops the key it made)."""
        self._cache.pop(owner, None)
        await self._store.delete_data_key(owner)

    def drop_cached(self, owner: str) -> None:
        """Forget ``owner``'s key here only: the store deleted it (a purge)."""
        self._cache.pop(owner, None)

    async def _unwrap(self, owner: str, wrapped: bytes) -> bytes:
        try:
            return await self._master.unwrap_key(wrapped, _context(owner))
        except MasterKeyError as exc:
            raise DataKeyError(f"the data key of {owner} does not open: {exc}") from None

    def _keep(self, owner: str, raw: bytes) -> DataKey:
        key = DataKey(owner, raw)
        self._cache[owner] = key
        self._cache.move_to_end(owner)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key


def _context(owner: str) -> bytes:
    if not _OWNER.fullmatch(owner):
        raise DataKeyError("an owner is kind:id")
    return _WRAP_CONTEXT + owner.encode()


# -- master-key rotation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RewrapFailure:
    owner: str
    # What went wrong, never key material.
    reason: str


@dataclass(slots=True)
class RewrapReport:
    rewrapped: int = 0
    already_current: int = 0
    # Lost a compare-and-set (another rotation running at once): that one re-wraps it.
    changed_meanwhile: int = 0
    failed: list[RewrapFailure] = field(default_factory=list)


async def rewrap_data_keys(store: DataKeyStore, master: MasterKey) -> RewrapReport:
    """Re-wrap every data key not yet under the master key's current key. The records
    sealed with them are not read or written: the data keys themselves stay the same."""
    report = RewrapReport()
    after = ""
    while True:
        page = await store.data_keys_after(after, _REWRAP_PAGE)
        for owner, wrapped in page:
            try:
                if MasterKey.wrapped_key_id(wrapped) == master.current_id:
                    report.already_current += 1
                    continue
                context = _context(owner)
                new = await master.wrap_key(await master.unwrap_key(wrapped, context), context)
            except (MasterKeyError, DataKeyError) as exc:
                report.failed.append(RewrapFailure(owner, str(exc)))
                continue
            if await store.replace_data_key(owner, wrapped, new):
                report.rewrapped += 1
            else:
                report.changed_meanwhile += 1
        if len(page) < _REWRAP_PAGE:
            return report
        after = page[-1][0]
