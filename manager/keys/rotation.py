"""Re-wrap the builtin secret manager's data keys with the current master key.

After ``MasterKey.rotate`` every new envelope is wrapped with the new key, and the old ones
still open (the old keys stay in the ring). Re-wrapping moves the old ones over too, so the
new key alone opens every stored secret. Only the wrapped data key changes: the encrypted
value (``blob``) is copied as it is, so no plaintext secret value is ever made here.

Each envelope is swapped compare-and-set on its old text: a version that changed meanwhile
(another rotation, or the secrets service re-sealing it) is read afresh and tried once more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from manager.keys.masterkey import MasterKey, MasterKeyError
from manager.records import BUILTIN_MANAGER_ID, SecretVersionRecord
from manager.store.base import Store
from shared.account import DEFAULT_ACCOUNT
from shared.envelope import Envelope, EnvelopeContext, EnvelopeError

__all__ = ["RewrapFailure", "RewrapReport", "rewrap_builtin"]


@dataclass(frozen=True, slots=True)
class RewrapFailure:
    secret_id: str
    version: int
    # What went wrong, never a value or key material.
    reason: str


@dataclass(slots=True)
class RewrapReport:
    rewrapped: int = 0
    already_current: int = 0
    # Lost a compare-and-set to another writer (each retried once from a fresh read).
    changed_meanwhile: int = 0
    # Deleted between the listing and the write: nothing left to re-wrap.
    gone: int = 0
    failed: list[RewrapFailure] = field(default_factory=list)


class _Outcome(Enum):
    REWRAPPED = "rewrapped"
    CURRENT = "current"
    LOST = "lost"
    GONE = "gone"


class _Failed(Exception):
    pass


async def rewrap_builtin(store: Store, key: MasterKey) -> RewrapReport:
    """Re-wrap every builtin envelope not yet under ``key``'s current key.

    Store errors propagate (the rest would fail the same way); a version that cannot be
    re-wrapped is reported and the others carry on.
    """
    report = RewrapReport()
    for version in await store.envelopes_of_manager(BUILTIN_MANAGER_ID):
        await _settle(store, key, version, report)
    return report


async def _settle(
    store: Store, key: MasterKey, listed: SecretVersionRecord, report: RewrapReport
) -> None:
    """Re-wrap one version, once more from a fresh read if it changed meanwhile."""
    try:
        outcome = await _rewrap_one(store, key, listed)
        if outcome is _Outcome.LOST:
            report.changed_meanwhile += 1
            fresh = await store.get_secret_version(listed.secret_id, listed.version)
            outcome = _Outcome.GONE if fresh is None else await _rewrap_one(store, key, fresh)
    except _Failed as exc:
        report.failed.append(RewrapFailure(listed.secret_id, listed.version, str(exc)))
        return
    if outcome is _Outcome.REWRAPPED:
        report.rewrapped += 1
    elif outcome is _Outcome.CURRENT:
        report.already_current += 1
    elif outcome is _Outcome.GONE:
        report.gone += 1
    else:
        reason = "changed meanwhile twice; run the re-wrap again"
        report.failed.append(RewrapFailure(listed.secret_id, listed.version, reason))


async def _rewrap_one(store: Store, key: MasterKey, version: SecretVersionRecord) -> _Outcome:
    if version.envelope is None:
        raise _Failed("the version has no envelope")
    try:
        old = Envelope.from_json(version.envelope)
        # Read per envelope: a rotation while this runs makes later ones go to the newer key.
        current = key.current_id
        # The key id in the wrapped bytes is what actually opens it; kek_id is the label
        # the secrets service wrote. Both must name the current key to skip.
        if old.kek_id == current and MasterKey.wrapped_key_id(old.wrapped_key) == current:
            return _Outcome.CURRENT
        context = EnvelopeContext(
            account=DEFAULT_ACCOUNT, secret_id=version.secret_id, version=version.version
        ).canonical()
        wrapped = await key.wrap_key(await key.unwrap_key(old.wrapped_key, context), context)
        new = Envelope(
            kek_kind=old.kek_kind,
            # From the new wrapping itself, so the label is right even if a rotation
            # happened between reading current_id and wrapping.
            kek_id=MasterKey.wrapped_key_id(wrapped),
            wrapped_key=wrapped,
            blob=old.blob,
        )
    except (EnvelopeError, MasterKeyError) as exc:
        raise _Failed(str(exc)) from None
    swapped = await store.replace_envelope(
        version.secret_id, version.version, version.envelope, new.to_json()
    )
    return _Outcome.REWRAPPED if swapped else _Outcome.LOST
