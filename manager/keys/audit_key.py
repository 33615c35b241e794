"""The audit chain's keys (manager.core.audit_chain), derived from the manager's key ring.

Each master key ``kN`` gives the chain key ``kN`` (HKDF-SHA256, its own label): the chain's
keys are kept where the master keys are (the data dir, 0600, never in the database), rotate
with ``tether-manager keys rotate``, and every old one stays to check the events it keyed.
"""

from __future__ import annotations

from manager.core.audit_chain import ChainKey
from manager.keys.masterkey import MasterKey, MasterKeyError

__all__ = ["AuditKeys"]

_PURPOSE = b"tether audit chain v1"


class AuditKeys:
    def __init__(self, ring: MasterKey) -> None:
        self._ring = ring
        # Derived keys never change for an id: derive each once.
        self._cache: dict[str, bytes] = {}

    def current(self) -> ChainKey:
        """The key new events are chained with: the ring's current key's."""
        key_id = self._ring.current_id
        key = self.lookup(key_id)
        if key is None:  # current_id was just read from the ring
            raise MasterKeyError(f"key {key_id} is not in the key ring")
        return ChainKey(key_id, key)

    def lookup(self, key_id: str) -> bytes | None:
        """The chain key ``key_id`` (as read from an event), None when the ring has none."""
        found = self._cache.get(key_id)
        if found is None:
            try:
                found = self._ring.derive(key_id, _PURPOSE)
            except MasterKeyError:
                return None
            self._cache[key_id] = found
        return found
