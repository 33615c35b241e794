"""The delegate tokens behind live sessions: their scope, and whether they were revoked.

A session credential is checked against its token on every request. The first check in a
process always reads the store, so a restart (or a new replica) never trusts what an older
process knew: there is no window after a restart in which a revoked token's credentials
work. Later checks use what was read; a revocation reaches this process at once when it is
made here, through the replica events when made on another replica (or by
``tether-manager token revoke`` on PostgreSQL), and through the periodic check
(``Timings.revocation_check``) should an event be lost. On SQLite, ``tether-manager token
revoke`` on the host touches the data dir's revocation stamp after its commit (see
:func:`stamp_revocation`); every check compares the stamp's mtime (one stat, no store
read) and, when it moved, forgets what it knew, so the next check reads the store: the
revocation holds from the next request on, with no window. Reading the store on every
acquire instead was measured: the extra read per acquire slowed acquires enough under load
for hints to expire and widen to every delegate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from manager.core.eligibility import DelegateScope
from manager.records import TokenRecord
from manager.store.base import Store

__all__ = ["REVOCATION_STAMP", "DelegateTokens", "TokenState", "stamp_revocation"]

# In the data dir: touched by a host-side revocation, watched by the running manager.
REVOCATION_STAMP = "revocations.stamp"


@dataclass(frozen=True, slots=True)
class TokenState:
    record: TokenRecord
    scope: DelegateScope

    @property
    def revoked(self) -> bool:
        return self.record.revoked_at is not None


def stamp_revocation(data_dir: Path) -> None:
    """Tell a manager running on this data dir that a token was revoked (after the commit)."""
    path = data_dir / REVOCATION_STAMP
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def _mtime(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


class DelegateTokens:
    def __init__(self, store: Store, revoked: set[str], *, stamp: Path | None = None) -> None:
        self._store = store
        # Shared with the hub (manager.tasks.hub.Hub.revoked_tokens): ids known revoked.
        self._revoked = revoked
        self._known: dict[str, TokenState] = {}
        self._stamp = stamp
        self._stamp_seen = _mtime(stamp)

    async def get(self, token_id: str) -> TokenState | None:
        """The token's state; None when the store has no such token."""
        seen = _mtime(self._stamp)
        if seen != self._stamp_seen:
            # A revocation made on the host since the last check: read the store again.
            self._stamp_seen = seen
            self._known.clear()
        known = self._known.get(token_id)
        if known is not None:
            return known
        record = await self._store.token_by_id(token_id)
        if record is None:
            self._known.pop(token_id, None)
            return None
        state = self.remember(record)
        if state.revoked:
            self._revoked.add(token_id)
        return state

    def remember(self, record: TokenRecord) -> TokenState:
        state = TokenState(record, DelegateScope.load(record.scope))
        self._known[record.id] = state
        return state

    def forget(self, token_id: str) -> None:
        """Revoked elsewhere: the next check reads the store."""
        self._known.pop(token_id, None)
