"""The delegate tokens behind live sessions: their scope, and whether they were revoked.

A session credential is checked against its token on every request. The first check in a
process always reads the store, so a restart (or a new replica) never trusts what an older
process knew: there is no window after a restart in which a revoked token's credentials
work. Later checks use what was read; a revocation reaches this process at once when it is
made here, through the replica events when made on another replica (or by
``tether-manager token revoke`` on PostgreSQL), and through the periodic check
(``Timings.revocation_check``) should an event be lost or, on SQLite, when it was made on the
host. Reading the store on every acquire instead was measured: the extra read per acquire
slowed acquires enough under load for hints to expire and widen to every delegate.
"""

from __future__ import annotations

from dataclasses import dataclass

from manager.core.eligibility import DelegateScope
from manager.records import TokenRecord
from manager.store.base import Store

__all__ = ["DelegateTokens", "TokenState"]


@dataclass(frozen=True, slots=True)
class TokenState:
    record: TokenRecord
    scope: DelegateScope

    @property
    def revoked(self) -> bool:
        return self.record.revoked_at is not None


class DelegateTokens:
    def __init__(self, store: Store, revoked: set[str]) -> None:
        self._store = store
        # Shared with the hub (manager.tasks.hub.Hub.revoked_tokens): ids known revoked.
        self._revoked = revoked
        self._known: dict[str, TokenState] = {}

    async def get(self, token_id: str) -> TokenState | None:
        """The token's state; None when the store has no such token."""
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
