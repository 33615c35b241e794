"""Making a SQLite manager's audit trail unwritable, for the tests that a change whose event
cannot be written is not made either."""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["make_trail_unwritable"]


def make_trail_unwritable(db: Path) -> None:
    """Every append to the audit trail of the SQLite file ``db`` fails from here on, as a
    store's failure would."""
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TRIGGER unwritable BEFORE INSERT ON audit_events"
        " BEGIN SELECT RAISE(ABORT, 'the trail is unwritable'); END"
    )
    conn.commit()
    conn.close()
