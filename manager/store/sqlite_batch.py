"""Group commit, SQLite's side: one batch of calls in one transaction, on the store's thread.

Each call is a plain function over the connection and runs in a SAVEPOINT of its own, so its
error (a unique violation, refused data, an audit callback that raised) undoes only its own
statements and goes to its own caller, while the others' writes stay. Then ONE commit, so
one WAL append and one fsync for the whole batch; with ``synchronous=FULL`` a call's caller
is answered only after that commit returned, so what is acknowledged survives ``kill -9``.

The transaction begins IMMEDIATE: the write lock is taken before any call reads, so an audit
append reads the chain head under the lock (another process on this file, a host-side
command, waits instead of chaining on the same head), and calls in one batch chain in their
order, each seeing the head the one before it wrote. A batch of nothing but plain SELECTs
(:class:`Read`) needs no transaction and takes no lock: each runs in autocommit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from manager.store.base import BadData, Conflict, DiskFull, StoreError
from manager.store.group_commit import Failed, Outcome
from manager.store.health import WriteHealth

__all__ = ["BatchRunner", "Call", "Read", "mapped"]

Call = Callable[[sqlite3.Connection], Any]


@dataclass(frozen=True, slots=True)
class Read:
    """A call that is one SELECT. A batch of nothing else runs each in autocommit, as reads
    ran before batching: no transaction to begin and commit, no write lock taken."""

    fn: Call

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.fn(conn)


# SQLite's result code for a full disk (or a database at its max_page_count); the
# extended codes keep it in their low byte.
_SQLITE_FULL = 13


class BatchRunner:
    """Runs batches on one connection (only ever from the store's one thread)."""

    def __init__(self, conn: sqlite3.Connection, health: WriteHealth) -> None:
        self._conn = conn
        self._health = health
        self.commits = 0  # transactions committed: fewer than calls when batches form

    def __call__(self, calls: Sequence[Call]) -> list[Outcome]:
        """The outcome of each call run, in order; fewer than ``calls`` when the transaction
        was lost under a call: the calls after it did not run (the caller sends them again)."""
        conn = self._conn
        if all(isinstance(call, Read) for call in calls):
            return [self._alone(call) for call in calls]
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # the lock not had in busy_timeout, the file unreadable
            return [Failed(self._mapped(exc))] * len(calls)
        try:
            return self._batch(calls)
        except sqlite3.Error as exc:  # a savepoint of ours failed (an I/O error): all undone
            self._end()
            return [Failed(self._mapped(exc))] * len(calls)
        except BaseException:  # not a call's error (those are outcomes): leave no transaction
            self._end()
            raise

    def _end(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _batch(self, calls: Sequence[Call]) -> list[Outcome]:
        conn = self._conn
        before = conn.total_changes
        if len(calls) == 1:
            # Alone in its transaction: no savepoint needed, its error undoes all of it.
            outcomes = [self._alone(calls[0])]
            if isinstance(outcomes[0], Failed):  # rolled back already
                return outcomes
        else:
            outcomes = []
            for call in calls:
                outcome, lost = self._one(call)
                if lost:
                    # SQLite rolled the whole transaction back (it may on SQLITE_FULL or an
                    # I/O error): the calls before this one were undone too, none is
                    # acknowledged; the ones after it did not run (they are sent again).
                    error = outcome.error if isinstance(outcome, Failed) else StoreError("lost")
                    return [Failed(error)] * (len(outcomes) + 1)
                outcomes.append(outcome)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            error = self._mapped(exc)
            if isinstance(error, Conflict | BadData):
                # Not one caller's own fault (a deferred constraint): the store failed them.
                error = StoreError(f"sqlite: commit failed: {exc}")
            self._end()  # a deferred constraint keeps the transaction open
            return [Failed(error)] * len(outcomes)
        self.commits += 1
        if conn.total_changes != before:  # committed a write: there was room for it
            self._health.wrote()
        return outcomes

    def _alone(self, call: Call) -> Outcome:
        """``call`` in the transaction (or autocommit) it has to itself; its error ends it."""
        try:
            return call(self._conn)
        except Exception as exc:
            self._end()
            return Failed(self._mapped(exc))

    def _one(self, call: Call) -> tuple[Outcome, bool]:
        """``call``'s outcome, and whether the transaction was lost under it."""
        conn = self._conn
        conn.execute("SAVEPOINT call")
        try:
            value = call(conn)
        except Exception as exc:
            error = self._mapped(exc)
            if not conn.in_transaction:
                return Failed(error), True
            try:
                conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                return Failed(error), True
            return Failed(error), False
        conn.execute("RELEASE call")
        return value, False

    def _mapped(self, exc: Exception) -> Exception:
        error = mapped(exc)
        if isinstance(error, DiskFull):
            self._health.full(str(exc))
        return error


def mapped(exc: Exception) -> Exception:
    """What a call's caller gets for ``exc``: the store's own errors for the database's."""
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(str(exc))
    # A value SQLite refuses ("string or blob too big") or Python cannot hand it (a lone
    # surrogate in text, an integer over 64 bits): bad data, not an outage.
    if isinstance(exc, sqlite3.DataError):
        return BadData("a value too large for the database")
    if isinstance(exc, UnicodeEncodeError):
        return BadData("text that is not Unicode (a lone surrogate)")
    if isinstance(exc, OverflowError):
        return BadData("a number too large for the database")
    if isinstance(exc, sqlite3.Error):
        if _is_full(exc):
            return DiskFull(f"sqlite: {exc}")
        return StoreError(f"sqlite: {exc}")
    return exc  # the call's own (a Conflict it raised, an audit callback's error)


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF == _SQLITE_FULL
    return "database or disk is full" in str(exc)
