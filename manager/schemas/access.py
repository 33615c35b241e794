"""Models of the access routes (API keys, their defaults, the IP allowlist), shared by the
server and the client."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_BURST",
    "MAX_QPS",
    "AllowlistEntryCreate",
    "AllowlistEntryView",
    "AllowlistView",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyDefaults",
    "ApiKeyDefaultsUpdate",
    "ApiKeyList",
    "ApiKeyView",
    "Confirm",
    "TrustedProxies",
    "TrustedProxiesPut",
    "parse_cidr",
]

# As high as the admin key's own limit (manager.access.tokens.ADMIN_MAX_QPS).
MAX_QPS = 10000.0
MAX_BURST = 10000
# Below this a refused request would be told to come back in minutes.
_MIN_QPS = 0.01
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=_NAME)]
Cidr = Annotated[str, Field(min_length=1, max_length=64)]


class Model(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


# -- API keys ------------------------------------------------------------------------------


class ApiKeyCreate(Model):
    name: Name
    # Whom the key acts for: a service account's name (default: the key's name); a personal
    # key is always its creator's, so owner may only repeat that.
    owner: str | None = Field(default=None, min_length=1, max_length=128)
    service_account: bool = False
    # User groups the key is narrowed to (enforced once groups exist).
    groups: list[Name] = Field(default_factory=list, max_length=64)
    # Default: the account's (GET /api/v1/api-key-defaults).
    max_qps: float | None = Field(default=None, ge=_MIN_QPS, le=MAX_QPS)
    burst: int | None = Field(default=None, ge=1, le=MAX_BURST)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)

    @field_validator("groups")
    @classmethod
    def _distinct(cls, groups: list[str]) -> list[str]:
        return list(dict.fromkeys(groups))


class ApiKeyView(Model):
    id: str
    name: str
    # The key's first characters, to tell keys apart; the rest is never shown again.
    prefix: str
    owner: str
    owner_user_id: str | None = None
    service_account: bool
    groups: list[str]
    max_qps: float
    burst: int
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None
    status: Literal["active", "expired", "revoked"]
    # The actor id of whoever made the key (None for the keys made at first start).
    created_by: str | None = None


class ApiKeyCreated(ApiKeyView):
    # Shown once; only its hash is kept.
    key: str


class ApiKeyList(Model):
    api_keys: list[ApiKeyView]


class ApiKeyDefaults(Model):
    """What a new key gets when its creator names no limit."""

    max_qps: float
    burst: int


class ApiKeyDefaultsUpdate(Model):
    max_qps: float | None = Field(default=None, ge=_MIN_QPS, le=MAX_QPS)
    burst: int | None = Field(default=None, ge=1, le=MAX_BURST)


# -- the IP allowlist ----------------------------------------------------------------------


class Confirm(Model):
    """A change that would refuse the caller's own address needs ``confirm: true``."""

    confirm: bool = False


class AllowlistEntryCreate(Model):
    # An IPv4 or IPv6 CIDR range, or one address.
    cidr: Cidr
    description: str = Field(default="", max_length=256)
    enabled: bool = True


class AllowlistEntryView(Model):
    id: str
    cidr: str
    description: str
    enabled: bool
    created_at: float


class AllowlistView(Model):
    enabled: bool
    entries: list[AllowlistEntryView]
    trusted_proxies: list[str]
    # The caller's address as the manager judges it: what an entry must cover for it.
    your_ip: str | None = None


class TrustedProxies(Model):
    proxies: list[str]


class TrustedProxiesPut(Model):
    # CIDRs of the proxies whose X-Forwarded-For is believed; [] believes nobody's.
    proxies: list[Cidr] = Field(max_length=64)
    confirm: bool = False


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR range, or one address (a /32 or /128). ValueError, saying why, otherwise: host
    bits set (``10.0.0.1/8``) are refused rather than silently widened."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(
                f"{text!r} is not an IPv4 or IPv6 address or CIDR range "
                "(such as 203.0.113.0/24 or 2001:db8::/32)"
            ) from None
        raise ValueError(f"{text} has host bits set; did you mean {loose}?") from None
