"""How an incident's data is encrypted at rest: one small function each way, so per-record
data keys can replace the manager master key here alone.

Sealed with the manager's master key (AES-256-GCM), bound to the incident's id: a sealed
body copied onto another incident's row does not open.
"""

from __future__ import annotations

import json
from typing import Any

from manager.keys.masterkey import MasterKey

__all__ = ["seal", "unseal"]


def _context(incident_id: str) -> bytes:
    return b"tether-incident:" + incident_id.encode()


def seal(key: MasterKey, incident_id: str, data: dict[str, Any]) -> str:
    return key.encrypt(
        json.dumps(data, separators=(",", ":")).encode(), context=_context(incident_id)
    )


def unseal(key: MasterKey, incident_id: str, sealed: str) -> dict[str, Any]:
    data = json.loads(key.decrypt(sealed, context=_context(incident_id)))
    if not isinstance(data, dict):
        raise TypeError("a sealed incident holds an object")
    return data
