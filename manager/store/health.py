"""Whether the store can write: a full volume, told once when it starts and once when it ends.

A full disk fails every write, and every request and sweep pass that writes would otherwise
log it again (the issue counted 188 tracebacks in 50 s). The backend reports each failure
here and each write that went through; this keeps the state ``/readyz`` answers from and logs
only the two changes. The state is the last write's outcome: there is no timer, so a manager
whose volume was freed is ready again at its next successful write (``/readyz`` makes one,
a probe, while the volume is reported full).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

__all__ = ["DISK_FULL", "WriteHealth"]

log = structlog.get_logger("tether.store")

# What a refused write and /readyz say: the cause, and that it passes by itself.
DISK_FULL = "the database's volume is full: writes fail until space is freed"


class WriteHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # SQLite reports from its own thread, PostgreSQL from the loop.
        self._lock = threading.Lock()
        self._since: float | None = None
        self._refused = 0

    @property
    def problem(self) -> str | None:
        """Why writes fail now, None while they succeed."""
        return None if self._since is None else DISK_FULL

    def full(self, detail: str) -> None:
        """A write failed for want of space (``detail``: the database's own words)."""
        with self._lock:
            self._refused += 1
            if self._since is not None:
                return
            self._since = self._clock()
        log.error("data volume full: writes are refused until space is freed", detail=detail)

    def wrote(self) -> None:
        """A write went through: the volume has room again."""
        if self._since is None:  # the usual case: no lock, nothing to say
            return
        with self._lock:
            if self._since is None:
                return
            lasted, refused = self._clock() - self._since, self._refused
            self._since, self._refused = None, 0
        log.warning(
            "data volume has room again: writes succeed",
            lasted_s=round(lasted, 1),
            writes_refused=refused,
        )
