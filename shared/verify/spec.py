"""A verification spec: which monitoring to ask, what to ask it, and how to judge the answer.

Read by the manager (a user's YAML, stored as a versioned verification, or sent with a run)
and by the delegate (inside the ``verify`` task's payload). Credentials are never values:
each is the name of a Tether secret, delivered and resolved on the delegate like any task's
secret and masked with them (shared.task_secrets).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.verify.stats import Direction, Threshold

__all__ = [
    "MAX_QUERIES",
    "ProviderAuth",
    "ProviderSpec",
    "QuerySpec",
    "ThresholdSpec",
    "VerifySpec",
    "Window",
    "parse_duration",
]

MAX_QUERIES = 20
# A secret's name, as shared.expressions accepts it.
SecretName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$",
    ),
]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float:
    """Seconds from a number or ``30s``, ``10m``, ``1h``, ``1d``; ValueError otherwise."""
    if isinstance(value, bool):
        # ValueError, not TypeError: pydantic reports only the former as the field's error.
        raise ValueError("a duration is a number of seconds or like 30s, 10m, 1h")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif (
        isinstance(value, str) and value[-1:] in _UNITS and value[:-1].replace(".", "", 1).isdigit()
    ):
        seconds = float(value[:-1]) * _UNITS[value[-1]]
    else:
        raise ValueError("a duration is a number of seconds or like 30s, 10m, 1h")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


class _Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)


class ProviderAuth(_Model):
    """At most one of a bearer token and basic auth; mTLS (cert and key together) with either."""

    bearer_token_secret: SecretName | None = None
    basic_username: str | None = Field(default=None, min_length=1, max_length=256)
    basic_password_secret: SecretName | None = None
    tls_cert_secret: SecretName | None = None
    tls_key_secret: SecretName | None = None
    # PEM of a private CA to trust instead of the system's (a secret: it need not be, but
    # a customer's internal CA is often kept with the rest).
    tls_ca_secret: SecretName | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProviderAuth:
        if (self.basic_username is None) != (self.basic_password_secret is None):
            raise ValueError("basic_username and basic_password_secret go together")
        if self.bearer_token_secret is not None and self.basic_username is not None:
            raise ValueError("give a bearer token or basic auth, not both")
        if (self.tls_cert_secret is None) != (self.tls_key_secret is None):
            raise ValueError("tls_cert_secret and tls_key_secret go together")
        return self

    def secrets(self) -> dict[str, str]:
        """Credential role -> secret name, for the roles given."""
        roles = {
            "bearer_token": self.bearer_token_secret,
            "basic_password": self.basic_password_secret,
            "tls_cert": self.tls_cert_secret,
            "tls_key": self.tls_key_secret,
            "tls_ca": self.tls_ca_secret,
        }
        return {role: name for role, name in roles.items() if name is not None}


class ProviderSpec(_Model):
    # Only Prometheus so far; Loki, Elasticsearch or Datadog add a kind and a provider on the
    # delegate (delegate.verify.provider.Provider), nothing else.
    kind: Literal["prometheus"] = "prometheus"
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://[^\s]+$")
    auth: ProviderAuth = Field(default_factory=ProviderAuth)
    # One query_range request, seconds.
    query_timeout_s: float = Field(default=10.0, gt=0, le=300)


class ThresholdSpec(_Model):
    absolute: float | None = None
    delta: float | None = None
    ratio: float | None = None

    @model_validator(mode="after")
    def _one(self) -> ThresholdSpec:
        self.threshold()  # the same rule, said once in shared.verify.stats
        return self

    def threshold(self) -> Threshold:
        return Threshold(absolute=self.absolute, delta=self.delta, ratio=self.ratio)


class QuerySpec(_Model):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    query: str = Field(min_length=1, max_length=8192)
    bad: Direction
    threshold: ThresholdSpec
    # The percentile summarising each window: 50 is the median.
    statistic: float = Field(default=50.0, ge=0, le=100)
    min_points: int = Field(default=3, ge=1, le=10_000)
    # A p-value: when given, the query fails only if Mann-Whitney U also finds it worse.
    significance: float | None = Field(default=None, gt=0, lt=1)
    unit: str = Field(default="", max_length=16)


Baseline = Literal["before", "day", "week"]


class Window(_Model):
    """Durations in seconds (or ``10m`` and the like in YAML)."""

    # The window judged, starting when the deployment ended.
    analysis: float = Field(gt=0, le=7 * 86400)
    # ``before``: the same length just before the deployment started; ``day``/``week``: the
    # same time of day a day or a week earlier (for metrics with a daily rhythm).
    baseline: Baseline = "before"
    # The query step; by default about 100 points per window. Never more than 1,000 points
    # are asked for (delegate.verify.provider.choose_step).
    step: float | None = Field(default=None, gt=0, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data: object) -> object:
        if isinstance(data, dict):
            data = {
                k: parse_duration(v) if k in ("analysis", "step") and v is not None else v
                for k, v in data.items()
            }
        return data


class VerifySpec(_Model):
    provider: ProviderSpec
    queries: list[QuerySpec] = Field(min_length=1, max_length=MAX_QUERIES)
    window: Window
    # Scales every query's limit: above 1 judges more strictly (a smaller allowance for
    # delta and ratio thresholds), below 1 more leniently. Absolute limits are left alone.
    sensitivity: float = Field(default=1.0, gt=0, le=10)
    on_inconclusive: Literal["fail", "pass_with_warning"] = "fail"

    @model_validator(mode="after")
    def _unique_names(self) -> VerifySpec:
        names = [q.name for q in self.queries]
        if len(set(names)) != len(names):
            raise ValueError("query names must be unique")
        return self
