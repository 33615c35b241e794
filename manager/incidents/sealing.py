"""How an incident's data is encrypted at rest: one small function each way.

Sealed under the incident's own data key (:mod:`manager.keys.data_keys`, owner
``incident:<id>``, AES-256-GCM, the associated data binding the record to the incident and
to the field ``incident``): a sealed body copied onto another incident's row does not open,
and the purge of an incident deletes its key with it (crypto-shredding).

Bodies written before data keys (sealed directly with the master key, bound to the
incident's id) still open: they are base64, which never holds the ``dk1:`` prefix of the
current format, and are re-sealed under the data key at the incident's next change.
"""

from __future__ import annotations

import json
from typing import Any

from manager.keys.data_keys import DataKey
from manager.keys.masterkey import MasterKey
from manager.keys.sealed_text import is_sealed_text, open_text, seal_text

__all__ = ["FIELD", "owner", "seal", "seal_legacy", "unseal"]

FIELD = "incident"


def owner(incident_id: str) -> str:
    return f"incident:{incident_id}"


def _context(incident_id: str) -> bytes:
    return b"tether-incident:" + incident_id.encode()


def seal(key: DataKey, data: dict[str, Any]) -> str:
    plain = json.dumps(data, separators=(",", ":")).encode()
    return seal_text(key, FIELD, plain)


def unseal(key: DataKey | None, master: MasterKey, incident_id: str, sealed: str) -> dict[str, Any]:
    """``key``: the incident's data key, None when it has none (a body sealed before data
    keys needs none; one sealed after does, and fails to open without it)."""
    if is_sealed_text(sealed):
        plain = open_text(key, owner(incident_id), FIELD, sealed)
    else:
        plain = master.decrypt(sealed, context=_context(incident_id))
    data = json.loads(plain)
    if not isinstance(data, dict):
        raise TypeError("a sealed incident holds an object")
    return data


def seal_legacy(master: MasterKey, incident_id: str, data: dict[str, Any]) -> str:
    """The format before data keys, kept only so tests can write a body the old way."""
    return master.encrypt(
        json.dumps(data, separators=(",", ":")).encode(), context=_context(incident_id)
    )
