"""The keys the manager signs workload identity tokens with (ES256), kept sealed in the store.

Every replica must sign with a key every other one publishes, so the key set lives in the
store's ``settings`` (like the delegate-session key, manager.keys.signing), sealed with the
master key: someone who can read the database alone cannot sign a token.

Rotation adds a new key and makes it the one that signs; the old one stays in the JWKS
(``retired_at`` set) for :data:`RETIRED_KEPT_S`, longer than any token lives
(manager.core.workload_identity.MAX_LIFETIME_S), so a token signed just before a rotation
verifies until it expires. Keys retired longer ago are dropped at the next rotation.

Replicas re-read the setting on each use (one primary-key read; the parsed set is kept while
the stored text is the same), so a rotation made on the host or by another replica is
published and used everywhere at once.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from manager.core.workload_identity import MAX_LIFETIME_S
from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.store.base import Store

__all__ = ["OIDC_KEYS", "RETIRED_KEPT_S", "OidcKeys", "Rotated"]

OIDC_KEYS = "oidc_signing_keys"
ALGORITHM = "ES256"
# A retired key is published this long: well past the longest token (10 minutes), and past
# what a relying party caches a JWKS for.
RETIRED_KEPT_S = max(3600, 6 * MAX_LIFETIME_S)
_CONTEXT = b"tether-oidc-keys-v1"
_SEALED = "sealed:"
# Compare-and-set tries when two rotations race.
_TRIES = 10


@dataclass(frozen=True)
class _Entry:
    key: ECKey
    created_at: float
    retired_at: float | None


@dataclass(frozen=True)
class Rotated:
    current: str
    published: list[str]
    dropped: list[str]


def _new_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(8), "use": "sig"})


class OidcKeys:
    def __init__(
        self, store: Store, master_key: MasterKey, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._master = master_key
        self._clock = clock
        self._seen: tuple[str, list[_Entry]] | None = None

    # -- stored form -----------------------------------------------------------------------

    def _seal(self, entries: list[_Entry]) -> str:
        doc = {
            "keys": [
                {
                    "jwk": e.key.as_dict(private=True),
                    "created_at": e.created_at,
                    "retired_at": e.retired_at,
                }
                for e in entries
            ]
        }
        return _SEALED + self._master.encrypt(json.dumps(doc).encode(), context=_CONTEXT)

    def _open(self, stored: str) -> list[_Entry]:
        if self._seen is not None and self._seen[0] == stored:
            return self._seen[1]
        if not stored.startswith(_SEALED):
            raise MasterKeyError("the OIDC signing keys in the store are not sealed")
        try:
            raw = self._master.decrypt(stored.removeprefix(_SEALED), context=_CONTEXT)
        except MasterKeyError as exc:
            raise MasterKeyError(
                f"the OIDC signing keys in the store do not open with this data dir's master"
                f" key ({exc})"
            ) from None
        entries = [
            _Entry(ECKey.import_key(k["jwk"]), float(k["created_at"]), k["retired_at"])
            for k in json.loads(raw)["keys"]
        ]
        self._seen = (stored, entries)
        return entries

    async def _stored(self) -> str:
        stored = await self._store.get_setting(OIDC_KEYS)
        if stored is not None:
            return stored
        first = self._seal([_Entry(_new_key(), self._clock(), None)])
        return await self._store.put_setting_if_absent(OIDC_KEYS, first)

    async def _entries(self) -> list[_Entry]:
        return self._open(await self._stored())

    # -- use ---------------------------------------------------------------------------------

    async def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as a JWT signed with the current key."""
        current = next(e for e in await self._entries() if e.retired_at is None)
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": current.key.kid}
        return jwt.encode(header, claims, current.key, algorithms=[ALGORITHM])

    async def jwks(self) -> dict[str, Any]:
        """The public keys: the current one and those retired less than RETIRED_KEPT_S ago."""
        now = self._clock()
        keys = KeySet(
            [
                e.key
                for e in await self._entries()
                if e.retired_at is None or now - e.retired_at < RETIRED_KEPT_S
            ]
        )
        return {"keys": [{**k, "alg": ALGORITHM} for k in keys.as_dict(private=False)["keys"]]}

    async def rotate(self) -> Rotated:
        """A new current key; the old one retired (published on for RETIRED_KEPT_S)."""
        for _ in range(_TRIES):
            stored = await self._stored()
            now = self._clock()
            kept: list[_Entry] = []
            dropped: list[str] = []
            for e in self._open(stored):
                retired = e.retired_at if e.retired_at is not None else now
                if now - retired >= RETIRED_KEPT_S:
                    dropped.append(str(e.key.kid))
                else:
                    kept.append(_Entry(e.key, e.created_at, retired))
            new = _Entry(_new_key(), now, None)
            entries = [*kept, new]
            if await self._store.replace_setting(OIDC_KEYS, stored, self._seal(entries)):
                return Rotated(str(new.key.kid), [str(e.key.kid) for e in entries], dropped)
        raise MasterKeyError("the OIDC keys kept changing under this rotation; try again")

    async def reseal(self) -> bool:
        """Seal the stored set under the master key's current key (``keys rotate``)."""
        stored = await self._store.get_setting(OIDC_KEYS)
        if stored is None:
            return False
        return await self._store.replace_setting(OIDC_KEYS, stored, self._seal(self._open(stored)))
