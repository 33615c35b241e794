"""Signed checkpoints of the audit chain: what lets the oldest events be deleted while the
rest stays verifiable. Pure.

Before the purge deletes the events up to ``seq``, it records that event's hash in a
checkpoint signed (HMAC-SHA256) with the chain's current key, which lives outside the
database (manager.keys.audit_key). Verification starts from the newest checkpoint: the first
event after it must chain onto the checkpoint's hash. Someone who can write the database but
has not the key can neither forge a checkpoint (its signature fails) nor delete events past
the newest one (the gap shows), nor delete a checkpoint to hide a cut (an older checkpoint,
or none, no longer covers the first event left).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from manager.core.audit_chain import ChainKey, KeyLookup

__all__ = ["AuditCheckpoint", "checkpoint", "checkpoint_problem"]

_PURPOSE = b"tether audit checkpoint v1\x00"


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    # The newest event the checkpoint covers, and its hash.
    seq: int
    hash: str
    key_id: str
    created_at: float
    signature: str


def _mac(key: bytes, seq: int, event_hash: str, created_at: float) -> str:
    text = f"{seq}\x00{event_hash}\x00{round(created_at * 1_000_000)}".encode()
    return hmac.new(key, _PURPOSE + text, hashlib.sha256).hexdigest()


def checkpoint(key: ChainKey, seq: int, event_hash: str, created_at: float) -> AuditCheckpoint:
    return AuditCheckpoint(
        seq, event_hash, key.id, created_at, _mac(key.secret, seq, event_hash, created_at)
    )


def checkpoint_problem(cp: AuditCheckpoint, keys: KeyLookup) -> str | None:
    """Why ``cp`` cannot be trusted, or None."""
    key = keys(cp.key_id)
    if key is None:
        return f"checkpoint at {cp.seq}: key {cp.key_id!r} is not in the manager's key ring"
    if not hmac.compare_digest(cp.signature, _mac(key, cp.seq, cp.hash, cp.created_at)):
        return f"checkpoint at {cp.seq}: bad signature (it was written without the key)"
    return None
