"""How a run's inputs and its steps' outputs are kept at rest.

Sealed under the run's own data key (:mod:`manager.keys.data_keys`, owner ``run:<id>``,
AES-256-GCM), the associated data binding the value to the run and to what it is
(``inputs``, ``outputs``): a value moved to another run or another field does not open.

Values written before data keys (sealed directly with the master key) still open: they are
base64, which never holds the ``dk1:`` prefix of the current format.
"""

from __future__ import annotations

import json
from typing import Any

from manager.keys.data_keys import DataKey
from manager.keys.masterkey import MasterKey
from manager.keys.sealed_text import is_sealed_text, open_text, seal_text

__all__ = ["owner", "seal_json", "seal_json_legacy", "unseal_json"]


def owner(run_id: str) -> str:
    return f"run:{run_id}"


def _context(run_id: str, purpose: str) -> bytes:
    return b"tether-runbook-run-v1\x00" + purpose.encode() + b"\x00" + run_id.encode()


def seal_json(key: DataKey, purpose: str, value: Any) -> str:
    plain = json.dumps(value, sort_keys=True).encode()
    return seal_text(key, purpose, plain)


def unseal_json(
    key: DataKey | None, master: MasterKey, run_id: str, purpose: str, sealed: str
) -> Any:
    """``key``: the run's data key, None when it has none (a value sealed before data keys
    needs none; one sealed after does, and fails to open without it)."""
    if is_sealed_text(sealed):
        return json.loads(open_text(key, owner(run_id), purpose, sealed))
    return json.loads(master.decrypt(sealed, context=_context(run_id, purpose)))


def seal_json_legacy(master: MasterKey, run_id: str, purpose: str, value: Any) -> str:
    """The format before data keys, kept only so tests can write a value the old way."""
    return master.encrypt(
        json.dumps(value, sort_keys=True).encode(), context=_context(run_id, purpose)
    )
