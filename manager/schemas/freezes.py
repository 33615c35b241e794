"""Freeze windows on the wire (manager.governance.freeze)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from manager.schemas.grants import EnvType

__all__ = ["FreezeCreate", "FreezeList", "FreezeView"]

FreezeName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
_Names = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class FreezeCreate(_Model):
    """One-off: ``start`` and ``end`` (epoch seconds). Recurring: ``cron`` or ``rrule`` with
    ``timezone`` (IANA) and ``duration_s``; an RRULE's first occurrence is ``dtstart``
    (local time, ISO 8601). Scope: application and environment names or ids, environment
    types; all empty freezes every place."""

    name: FreezeName
    description: str = Field(default="", max_length=1024)
    start: float | None = Field(default=None, ge=0, le=1e11)
    end: float | None = Field(default=None, ge=0, le=1e11)
    cron: str | None = Field(default=None, min_length=1, max_length=200)
    rrule: str | None = Field(default=None, min_length=1, max_length=500)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    duration_s: float = Field(default=0.0, ge=0, le=366 * 86400)
    dtstart: str | None = Field(default=None, max_length=64)
    not_before: float | None = Field(default=None, ge=0, le=1e11)
    until: float | None = Field(default=None, ge=0, le=1e11)
    apps: _Names = Field(default_factory=list)
    envs: _Names = Field(default_factory=list)
    env_types: list[EnvType] = Field(default_factory=list, max_length=2)


class FreezeView(_Model):
    id: str
    name: str
    description: str
    start: float | None = None
    end: float | None = None
    cron: str | None = None
    rrule: str | None = None
    timezone: str
    duration_s: float
    dtstart: str | None = None
    not_before: float | None = None
    until: float | None = None
    # Ids, as the window was resolved when made.
    apps: list[str]
    envs: list[str]
    env_types: list[EnvType]
    created_by: str | None = None
    created_at: float
    # When the window is active now: when it ends.
    active_until: float | None = None


class FreezeList(_Model):
    freezes: list[FreezeView]
