"""Retention: which rule keeps a task's logs and the task itself, and for how long. Pure.

Rules are per application (by name, or ``*`` for every one, tasks outside any application
included) and environment type (``production``, ``non_production``, or ``*``). The most
specific rule that matches a task wins: application and type, then application, then type,
then ``*``/``*``. A rule may keep logs for less time than the task (the task's record stays,
its lines go); a ``None`` keeps forever. No rule at all: nothing is ever deleted.

Only finished tasks are purged (succeeded, failed, cancelled, timed out, expired), by when
they finished: a task still queued or running is never touched, however old.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ANY", "DAY_S", "DataRule", "cutoff", "rule_for"]

ANY = "*"
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class DataRule:
    app: str
    env_type: str
    logs_days: float | None = None
    tasks_days: float | None = None


def _rank(rule: DataRule) -> int:
    return (2 if rule.app != ANY else 0) + (1 if rule.env_type != ANY else 0)


def rule_for(rules: Sequence[DataRule], app: str | None, env_type: str | None) -> DataRule | None:
    """The rule for a task of ``app`` (name; None outside any application) in an environment
    of ``env_type`` (None outside any), or None: keep."""
    matching = [
        r
        for r in rules
        if (r.app == ANY or r.app == app) and (r.env_type == ANY or r.env_type == env_type)
    ]
    return max(matching, key=_rank, default=None)


def cutoff(now: float, days: float | None) -> float | None:
    """What finished before this time goes; None when ``days`` keeps forever."""
    return None if days is None else now - days * DAY_S
