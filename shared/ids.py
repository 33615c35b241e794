"""Identifiers and opaque secrets: time-ordered ids, random tokens, and their hashes."""

from __future__ import annotations

import hashlib
import secrets
import time

__all__ = ["hash_secret", "new_id", "new_token"]


def new_id(prefix: str) -> str:
    """A time-ordered id (milliseconds, then 64 random bits), so listings sort by creation."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def new_token(prefix: str) -> str:
    """256 random bits with a readable prefix, so a leaked token says what it is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(value: str) -> str:
    """Tokens carry 256 bits of entropy, so a plain SHA-256 is enough (no password stretching)."""
    # surrogateescape: a header with stray bytes (aiohttp keeps them as surrogates) hashes
    # to something that matches nothing, rather than raising.
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
