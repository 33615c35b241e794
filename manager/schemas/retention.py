"""Retention settings on the wire (GET/PUT /api/v1/retention; manager.retention)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["PurgeCounts", "RetentionRule", "RetentionSettings"]

# A hundred years: more is a typo.
_MAX_DAYS = 36_500


class RetentionRule(BaseModel):
    """How long tasks (and, possibly shorter, their logs) are kept where the rule matches."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    # An application's name, or "*" for every one (tasks outside any application too).
    app: str = Field(default="*", max_length=128, pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9 ._-]*)$")
    env_type: Literal["production", "non_production", "*"] = "*"
    # Days after a task finished; None keeps forever.
    logs_days: float | None = Field(default=None, gt=0, le=_MAX_DAYS)
    tasks_days: float | None = Field(default=None, gt=0, le=_MAX_DAYS)

    @model_validator(mode="after")
    def _sensible(self) -> RetentionRule:
        if self.logs_days is None and self.tasks_days is None:
            raise ValueError("a rule sets logs_days, tasks_days or both")
        if (
            self.logs_days is not None
            and self.tasks_days is not None
            and self.logs_days > self.tasks_days
        ):
            raise ValueError("logs_days cannot exceed tasks_days: a task's logs go with it")
        return self


class RetentionSettings(BaseModel):
    """Everything is kept unless a rule or a days value says otherwise."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    rules: list[RetentionRule] = Field(default_factory=list, max_length=256)
    # Days an audit event is kept (the chain stays verifiable: a signed checkpoint at the cut).
    audit_days: float | None = Field(default=None, ge=1, le=_MAX_DAYS)
    # Days a closed incident is kept (incidents: a later change; nothing purges them yet).
    incidents_days: float | None = Field(default=None, gt=0, le=_MAX_DAYS)

    @model_validator(mode="after")
    def _one_rule_per_place(self) -> RetentionSettings:
        seen: set[tuple[str, str]] = set()
        for r in self.rules:
            if (r.app, r.env_type) in seen:
                raise ValueError(f"two rules for app {r.app!r} and env type {r.env_type!r}")
            seen.add((r.app, r.env_type))
        return self


class PurgeCounts(BaseModel):
    """What one purge deleted (or, dry, would delete), per kind."""

    model_config = ConfigDict(defer_build=True, extra="forbid")

    dry_run: bool
    counts: dict[str, int]
