"""Session liveness and task leases, kept in memory by the process holding the connection.

Heartbeats touch only these maps, never the database: a lost delegate is found by
:meth:`Liveness.lost` and a lost lease by :meth:`Leases.expired`, both pure functions of
what was seen and the time passed in.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Leases", "Liveness"]


class Liveness:
    def __init__(self, *, lost_after: float) -> None:
        self._lost_after = lost_after
        self._last_seen: dict[str, float] = {}

    def seen(self, delegate_id: str, now: float) -> None:
        self._last_seen[delegate_id] = now

    def forget(self, delegate_id: str) -> None:
        self._last_seen.pop(delegate_id, None)

    def last_seen(self, delegate_id: str) -> float | None:
        return self._last_seen.get(delegate_id)

    def lost(self, now: float) -> list[str]:
        """Delegates silent for longer than ``lost_after``; the caller drops their sessions."""
        return [d for d, t in self._last_seen.items() if now - t > self._lost_after]


class Leases:
    """Which delegate holds which running task, and until when."""

    def __init__(self, *, duration: float) -> None:
        self._duration = duration
        self._holder: dict[str, str] = {}
        self._expires: dict[str, float] = {}
        self._by_delegate: dict[str, set[str]] = {}

    def grant(self, task_id: str, delegate_id: str, now: float) -> None:
        self.release(task_id)
        self._holder[task_id] = delegate_id
        self._expires[task_id] = now + self._duration
        self._by_delegate.setdefault(delegate_id, set()).add(task_id)

    def release(self, task_id: str) -> None:
        delegate_id = self._holder.pop(task_id, None)
        self._expires.pop(task_id, None)
        if delegate_id is not None:
            held = self._by_delegate.get(delegate_id)
            if held is not None:
                held.discard(task_id)
                if not held:
                    del self._by_delegate[delegate_id]

    def holder(self, task_id: str) -> str | None:
        return self._holder.get(task_id)

    def held_by(self, delegate_id: str) -> set[str]:
        return set(self._by_delegate.get(delegate_id, ()))

    def count(self, delegate_id: str) -> int:
        return len(self._by_delegate.get(delegate_id, ()))

    def renew(self, delegate_id: str, running: Iterable[str], now: float) -> list[str]:
        """Renew the leases a heartbeat lists; return listed tasks this delegate does not hold.

        Those are tasks the delegate should stop: cancelled, finished, or handed to another
        delegate after its lease ran out.
        """
        strangers = []
        for task_id in running:
            if self._holder.get(task_id) == delegate_id:
                self._expires[task_id] = now + self._duration
            else:
                strangers.append(task_id)
        return strangers

    def expired(self, now: float) -> list[tuple[str, str]]:
        return [(t, self._holder[t]) for t, exp in self._expires.items() if now > exp]
