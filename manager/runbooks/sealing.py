"""How a run's inputs and its steps' outputs are kept at rest: sealed with the manager's
master key (AES-256-GCM), bound to the run and to what the value is.

One pair of functions on purpose: per-task data keys (another change) replace these two
bodies and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from manager.keys.masterkey import MasterKey

__all__ = ["seal_json", "unseal_json"]


def _context(run_id: str, purpose: str) -> bytes:
    return b"tether-runbook-run-v1\x00" + purpose.encode() + b"\x00" + run_id.encode()


def seal_json(key: MasterKey, run_id: str, purpose: str, value: Any) -> str:
    return key.encrypt(
        json.dumps(value, sort_keys=True).encode(), context=_context(run_id, purpose)
    )


def unseal_json(key: MasterKey, run_id: str, purpose: str, sealed: str) -> Any:
    return json.loads(key.decrypt(sealed, context=_context(run_id, purpose)))
