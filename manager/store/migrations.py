"""What the migration runners of both stores agree on: which migrations are pending, and
refusing a database that a newer release has already migrated.

An older manager on a newer schema would write rows the newer code's invariants do not
expect (or miss columns it relies on), so it stops before its first write.
"""

from __future__ import annotations

from collections.abc import Sequence

from manager.store.base import StoreError

__all__ = ["MigrationFailed", "SchemaTooNew", "failed", "pending"]


class SchemaTooNew(StoreError):
    """The database was migrated by a newer release than this one: nothing was written."""


class MigrationFailed(StoreError):
    """A migration failed; its transaction was rolled back, earlier ones stay applied."""


def pending(current: int, migrations: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """The migrations above ``current``, in order; SchemaTooNew when ``current`` is above
    every migration this release knows."""
    known = max((v for v, _ in migrations), default=0)
    if current > known:
        raise SchemaTooNew(
            f"the database is at schema version {current}, newer than this tether-manager"
            f" knows (up to {known}): run the release that migrated it, or a later one;"
            " nothing was written"
        )
    return [(v, sql) for v, sql in migrations if v > current]


def failed(version: int, current: int, exc: BaseException) -> MigrationFailed:
    """The error for migration ``version`` failing over a database at ``current``."""
    # The driver's message names the statement's problem, never row data.
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MigrationFailed(
        f"migration {version} failed and was rolled back; the database stays at schema"
        f" version {current}: {reason}"
    )
