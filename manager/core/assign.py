"""Which connected delegates to tell about a task: a pure choice over a snapshot."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from manager.core.eligibility import (
    ACCOUNT_WIDE,
    DelegateScope,
    Place,
    refusal_of,
)

__all__ = ["Candidate", "choose", "eligible"]


@dataclass(frozen=True, slots=True)
class Candidate:
    delegate_id: str
    # Configured selectors plus the delegate's own name, so a task can pin one delegate.
    selectors: frozenset[str]
    task_types: frozenset[str]
    capacity: int
    running: int
    draining: bool = False
    name: str = ""
    # What its token allows (manager.core.eligibility).
    scope: DelegateScope = ACCOUNT_WIDE

    @property
    def id(self) -> str:
        return self.delegate_id

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.running)


def eligible(
    selectors: Sequence[str], task_type: str, candidate: Candidate, place: Place | None = None
) -> bool:
    if candidate.free_slots <= 0:
        return False
    return refusal_of(candidate, task_type, selectors, place) is None


def choose(
    selectors: Sequence[str],
    task_type: str,
    candidates: Iterable[Candidate],
    *,
    limit: int | None,
    place: Place | None = None,
) -> list[str]:
    """Eligible delegates, least loaded first; ``limit`` of them, or all when None.

    Notifying a few rather than all keeps a burst of tasks from waking every delegate for
    every task (a thundering herd of acquires that all but one lose).
    """
    ranked = sorted(
        (c for c in candidates if eligible(selectors, task_type, c, place)),
        key=lambda c: (c.running / c.capacity, -c.free_slots, c.delegate_id),
    )
    chosen = ranked if limit is None else ranked[:limit]
    return [c.delegate_id for c in chosen]
