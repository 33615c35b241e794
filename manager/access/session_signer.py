"""Credentials: the admin API key, delegate tokens and delegate session credentials.

A session credential is signed (HMAC-SHA256) with a key kept in the store, so it holds
across a manager restart and across replicas without a database read per request. It
names the delegate and the token it registered with; a revoked token ends it at once,
through the hub's revoked set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuthError", "SessionClaims", "SessionSigner", "bearer"]

_PREFIX = "tds1"


class AuthError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class SessionClaims:
    delegate_id: str
    token_id: str
    expires_at: float


# Credentials whose signature was checked, kept so that a delegate's every request does not
# decode and MAC its credential again. A credential is a few hundred bytes; past this many
# (more live delegates than that) the memo starts again, which costs only re-checks.
VERIFIED_KEPT = 16384


class SessionSigner:
    def __init__(self, key: bytes, *, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._ttl = ttl
        self._clock = clock
        # Only credentials that verified, by their exact text: the same text always verifies
        # to the same claims under one key. Expiry is judged at every use.
        self._verified: dict[str, SessionClaims] = {}

    @staticmethod
    def new_key() -> str:
        return secrets.token_hex(32)

    def issue(self, delegate_id: str, token_id: str) -> str:
        body = json.dumps(
            {"d": delegate_id, "t": token_id, "e": self._clock() + self._ttl},
            separators=(",", ":"),
        ).encode()
        payload = _b64(body)
        return f"{_PREFIX}.{payload}.{_b64(self._mac(payload))}"

    def verify(self, credential: str) -> SessionClaims:
        claims = self._verified.get(credential)
        if claims is None:
            claims = self._check(credential)
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()
            self._verified[credential] = claims
        if claims.expires_at < self._clock():
            raise AuthError("session_expired", "session credential expired; register again")
        return claims

    def _check(self, credential: str) -> SessionClaims:
        """The claims of a credential signed with this key; AuthError when it is not."""
        parts = credential.split(".")
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise AuthError("invalid_credential", "not a delegate session credential")
        _, payload, mac = parts
        try:
            given = _unb64(mac)
            body = json.loads(_unb64(payload))
            claims = SessionClaims(str(body["d"]), str(body["t"]), float(body["e"]))
        except (ValueError, KeyError, TypeError):
            raise AuthError("invalid_credential", "malformed session credential") from None
        if not hmac.compare_digest(given, self._mac(payload)):
            raise AuthError("invalid_credential", "session credential signature does not match")
        return claims

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
