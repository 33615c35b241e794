"""The signing keys kept in the store, sealed with the master key.

Every replica must sign and check with the same keys, so they live in the store's
``settings``, not in a file. The delegate-session key is the whole proof of a delegate
session (a credential is checked by its signature alone, with no store read): kept in clear
there, anyone who could read the database (a backup, a replica's credentials) could forge
one. Sealed, the database alone is not enough: the master key, on the manager host, is
needed too. (The user-session key is not in this list: a user session token is accepted
only when its hash is found in the store, so that key filters guesses and proves nothing.)

A stored value is ``sealed:`` + ``MasterKey.encrypt`` of the raw key, the setting's name
in the associated data (a sealed value moved to another setting does not open). A value
written before sealing existed (64 hex digits) is read once and sealed in its place at start.
``tether-manager keys rotate`` re-seals them under the new current key.
"""

from __future__ import annotations

import secrets

from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.store.base import Store

__all__ = ["DELEGATE_SESSION_KEY", "ID_TOKEN_REQUEST_KEY", "SIGNING_KEYS", "reseal", "signing_key"]

DELEGATE_SESSION_KEY = "session_key"
# The MAC key of a task's id-token request credential (manager.core.workload_identity).
ID_TOKEN_REQUEST_KEY = "id_token_request_key"  # noqa: S105 - a setting's name
SIGNING_KEYS = (DELEGATE_SESSION_KEY, ID_TOKEN_REQUEST_KEY)

_SEALED = "sealed:"
_KEY_LEN = 32


def _context(name: str) -> bytes:
    return b"tether-signing-key-v1\x00" + name.encode()


def _seal(key: MasterKey, name: str, raw: bytes) -> str:
    return _SEALED + key.encrypt(raw, context=_context(name))


def _open(key: MasterKey, name: str, stored: str) -> bytes:
    """The raw key of a stored value, sealed or (from before sealing) clear."""
    if stored.startswith(_SEALED):
        try:
            raw = key.decrypt(stored.removeprefix(_SEALED), context=_context(name))
        except MasterKeyError as exc:
            raise MasterKeyError(
                f"signing key {name} in the store does not open with this data dir's master"
                f" key ({exc}): is master.key the one this database was used with?"
            ) from None
    else:
        try:
            raw = bytes.fromhex(stored)
        except ValueError:
            raw = b""
    if len(raw) != _KEY_LEN:
        raise MasterKeyError(f"signing key {name} in the store is not a {_KEY_LEN}-byte key")
    return raw


async def signing_key(store: Store, key: MasterKey, name: str) -> bytes:
    """The signing key ``name``: made (sealed) when missing, sealed now when found clear."""
    stored = await store.put_setting_if_absent(name, _seal(key, name, secrets.token_bytes(32)))
    raw = _open(key, name, stored)
    if not stored.startswith(_SEALED):
        # Lost to another replica sealing it meanwhile: the same key, sealed; nothing to do.
        await store.replace_setting(name, stored, _seal(key, name, raw))
    return raw


async def reseal(store: Store, key: MasterKey) -> list[str]:
    """Seal every stored signing key under ``key``'s current key; the names re-sealed."""
    done = []
    for name in SIGNING_KEYS:
        stored = await store.get_setting(name)
        if stored is None:
            continue
        # A compare-and-set: a concurrent start that sealed it first leaves the same key.
        if await store.replace_setting(name, stored, _seal(key, name, _open(key, name, stored))):
            done.append(name)
    return done
