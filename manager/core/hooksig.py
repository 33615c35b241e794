"""How an incoming webhook delivery proves its sender: plain code over the headers, the raw
body, the secret and the time.

- ``hmac``: ``X-Tether-Timestamp`` (epoch seconds), ``X-Tether-Delivery`` (a unique id) and
  ``X-Tether-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<raw body>``. A
  timestamp more than :data:`WINDOW_S` away from now is refused, so a captured delivery
  cannot be sent again later; within the window the delivery id drops replays.
- ``github``: ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body
  (GitHub signs no timestamp); ``X-GitHub-Delivery`` is the id replays are dropped by.
- ``bearer``: ``Authorization: Bearer <secret>``, for senders that cannot sign
  (Prometheus Alertmanager); ``X-Tether-Delivery`` drops replays when the sender gives one.

Every comparison of a secret or a MAC is constant-time. A refusal names the reason in a few
words (it is counted by it) and never quotes a header's value or the body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["WINDOW_S", "HookAuth", "Verdict", "github_signature", "sign", "verify"]

HookAuth = Literal["hmac", "github", "bearer"]

# How far a signed timestamp may be from the manager's clock, either way.
WINDOW_S = 300.0
# A delivery id longer than this is refused: it is stored to drop replays.
MAX_DELIVERY_ID = 128


@dataclass(frozen=True, slots=True)
class Verdict:
    """``reason`` is None when the delivery is authentic; ``delivery_id`` is what replays
    are dropped by (None: the sender gave none)."""

    reason: str | None
    delivery_id: str | None = None


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Tether-Signature`` of a delivery: what a sender computes."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def github_signature(secret: bytes, body: bytes) -> str:
    """GitHub's ``X-Hub-Signature-256`` of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters (a forged header).
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive already; a plain dict in tests may not be.
    found = headers.get(name)
    if found is None:
        lowered = name.lower()
        found = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return found


def _delivery_id(headers: Mapping[str, str], name: str) -> tuple[str | None, str | None]:
    """(the id, or a refusal)."""
    value = _header(headers, name)
    if value is None:
        return None, None
    value = value.strip()
    if not value or len(value) > MAX_DELIVERY_ID or not value.isprintable():
        return None, f"malformed {name}"
    return value, None


def verify(
    auth: HookAuth, secret: bytes, headers: Mapping[str, str], body: bytes, now: float
) -> Verdict:
    if auth == "bearer":
        given = _header(headers, "Authorization") or ""
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Verdict("missing bearer token")
        if not _same(token.strip(), secret.decode("utf-8", "surrogateescape")):
            return Verdict("wrong bearer token")
        delivery, bad = _delivery_id(headers, "X-Tether-Delivery")
        return Verdict(bad, delivery)
    if auth == "github":
        hub = _header(headers, "X-Hub-Signature-256")
        if hub is None:
            return Verdict("missing X-Hub-Signature-256")
        if not _same(hub.strip(), github_signature(secret, body)):
            return Verdict("bad signature")
        delivery, bad = _delivery_id(headers, "X-GitHub-Delivery")
        if bad is None and delivery is None:
            bad = "missing X-GitHub-Delivery"
        return Verdict(bad, delivery)
    raw_stamp = _header(headers, "X-Tether-Timestamp")
    signature = _header(headers, "X-Tether-Signature")
    if raw_stamp is None or signature is None:
        return Verdict("missing X-Tether-Timestamp or X-Tether-Signature")
    stamp = raw_stamp.strip()
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        return Verdict("malformed X-Tether-Timestamp")
    # The MAC first: an unsigned timestamp tells nothing, and a stale one is judged only
    # once it is known to be the sender's.
    if not _same(signature.strip(), sign(secret, stamp, body)):
        return Verdict("bad signature")
    if abs(now - int(stamp)) > WINDOW_S:
        return Verdict("timestamp outside the 5-minute window")
    delivery, bad = _delivery_id(headers, "X-Tether-Delivery")
    if bad is None and delivery is None:
        bad = "missing X-Tether-Delivery"
    return Verdict(bad, delivery)
