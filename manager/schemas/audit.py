"""Bodies and answers of the audit API (/api/v1/audit)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditBroken",
    "AuditEventView",
    "AuditFilterCreate",
    "AuditFilterList",
    "AuditFilterView",
    "AuditList",
    "AuditQueryModel",
    "AuditVerifyReport",
]

# No NUL: PostgreSQL text cannot hold it, and no query needs it.
_Text = Annotated[str, Field(max_length=256, pattern=r"^[^\x00]*$")]
_Time = Annotated[float, Field(allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class AuditEventView(_Model):
    seq: int
    id: str
    ts: float
    actor_kind: str
    actor_id: str
    actor_name: str
    method: str
    path: str
    client_ip: str
    resource_type: str
    resource_id: str
    resource_name: str
    app: str | None
    action: str
    summary: str
    # YAML of {before, after}; secrets redacted.
    diff: str
    # The chain key of the hash (HMAC-SHA256); None for events written before keying.
    key_id: str | None = None
    prev_hash: str
    hash: str


class AuditList(_Model):
    events: list[AuditEventView]
    # Pass as ``before`` for the next (older) page; None when this page is the last.
    next: str | None = None


class AuditQueryModel(_Model):
    """The filters of ``GET /api/v1/audit``, as a saved filter keeps them."""

    since: _Time | None = None
    until: _Time | None = None
    actor: _Text | None = None
    type: _Text | None = None
    app: _Text | None = None
    action: _Text | None = None
    text: _Text | None = None
    limit: int | None = Field(default=None, ge=1, le=1000)


class AuditFilterCreate(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    query: AuditQueryModel


class AuditFilterView(_Model):
    id: str
    name: str
    query: AuditQueryModel
    created_at: float


class AuditFilterList(_Model):
    filters: list[AuditFilterView]


class AuditBroken(_Model):
    seq: int
    reason: str


class AuditVerifyReport(_Model):
    ok: bool
    # Events checked and found linked, from seq 1.
    checked: int
    # The newest event's seq when the check began (later events are not judged).
    head_seq: int
    broken: AuditBroken | None = None
