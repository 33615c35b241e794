"""Incoming webhooks and incidents on the wire (manager.incidents)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DeliveryAccepted",
    "IncidentList",
    "IncidentNote",
    "IncidentRetention",
    "IncidentStatus",
    "IncidentSummary",
    "IncidentView",
    "TimelineEntry",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookList",
    "WebhookView",
]

HookName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
InputName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
PayloadPath = Annotated[str, Field(min_length=1, max_length=256)]
IncidentStatus = Literal["open", "acknowledged", "resolved"]


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class WebhookCreate(_Model):
    """``auth``: ``hmac`` (timestamped X-Tether-Signature), ``github`` (X-Hub-Signature-256)
    or ``bearer`` (Authorization: Bearer, for senders that cannot sign). ``kind``:
    ``alertmanager`` deliveries open and update incidents by their groupKey. ``runbook``
    runs on each accepted delivery (an alert: when its incident opens), its inputs mapped
    from the payload by ``mapping`` (input -> JSON pointer or dotted path), acting with the
    permissions of ``groups`` (which the creator must hold)."""

    name: HookName
    description: str = Field(default="", max_length=1024)
    auth: Literal["hmac", "github", "bearer"] = "hmac"
    kind: Literal["generic", "alertmanager"] = "generic"
    runbook: str | None = Field(default=None, min_length=1, max_length=128)
    mapping: dict[InputName, PayloadPath] = Field(default_factory=dict, max_length=64)
    groups: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=16
    )


class WebhookView(_Model):
    id: str
    name: str
    description: str
    auth: Literal["hmac", "github", "bearer"]
    kind: Literal["generic", "alertmanager"]
    runbook: str | None = None
    mapping: dict[str, str]
    groups: list[str]
    # Where senders deliver: POST <manager URL><path>.
    path: str
    # The builtin secret holding its signing secret or bearer token.
    secret_name: str
    created_by: str | None = None
    created_at: float
    accepted: int = 0
    # Refused deliveries, counted by reason.
    rejected: dict[str, int] = Field(default_factory=dict)


class WebhookCreated(WebhookView):
    # Shown once, here: the signing secret (hmac, github) or the bearer token.
    secret: str


class WebhookList(_Model):
    webhooks: list[WebhookView]


class DeliveryAccepted(_Model):
    webhook: str
    delivery_id: str | None = None
    run_id: str | None = None
    incident_id: str | None = None


class TimelineEntry(_Model):
    at: float
    kind: Literal["delivery", "run", "note", "status"]
    text: str
    actor: str | None = None


class IncidentSummary(_Model):
    id: str
    title: str
    severity: str
    source: str
    status: IncidentStatus
    created_at: float
    updated_at: float


class IncidentView(IncidentSummary):
    timeline: list[TimelineEntry]


class IncidentList(_Model):
    incidents: list[IncidentSummary]


class IncidentNote(_Model):
    text: str = Field(min_length=1, max_length=4096)


class IncidentRetention(_Model):
    # Incidents not updated for this long are purged (with their timelines).
    days: int = Field(ge=1, le=3650)
