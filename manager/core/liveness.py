"""Session liveness and task leases, kept in memory by the process holding the connection.

Heartbeats touch only these maps, never the database: a lost delegate is found by
:meth:`Liveness.lost`, a pure function of what was seen and the time passed in.
"""

from __future__ import annotations

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
    """Which delegate holds which running task, as far as this process granted them.

    A local index for counting load and routing cancels. The leases themselves (until when
    a holder may keep a task) live in the store, renewed in batches from heartbeats, so
    every replica judges them alike.
    """

    def __init__(self) -> None:
        self._holder: dict[str, str] = {}
        self._by_delegate: dict[str, set[str]] = {}

    def grant(self, task_id: str, delegate_id: str) -> None:
        self.release(task_id)
        self._holder[task_id] = delegate_id
        self._by_delegate.setdefault(delegate_id, set()).add(task_id)

    def release(self, task_id: str) -> None:
        delegate_id = self._holder.pop(task_id, None)
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
