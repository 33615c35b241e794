"""Passwords: the account's policy, and argon2id hashes (argon2-cffi).

Hashing is deliberately slow (tens of milliseconds, 64 MiB), so it runs in a worker thread:
a burst of logins must not stall the event loop that serves delegates' heartbeats.
"""

from __future__ import annotations

import asyncio
import os
import re
import string
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["AuthSettings", "CharClass", "Passwords", "policy_problems"]

CharClass = Literal["lower", "upper", "digit", "symbol"]

_CLASSES: dict[CharClass, str] = {
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "digit": string.digits,
    "symbol": string.punctuation,
}
_DOMAIN = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$"


def _default_classes() -> list[CharClass]:
    return ["lower", "upper", "digit"]


class AuthSettings(BaseModel):
    """The account's login rules. The defaults follow common guidance (NIST 800-63B length
    over rotation): no expiry unless asked for, lockout on, 2FA optional."""

    model_config = ConfigDict(extra="forbid")

    password_min_length: int = Field(default=12, ge=8, le=128)
    password_classes: list[CharClass] = Field(default_factory=_default_classes)
    # 0: passwords never expire. Otherwise the first login after this many days may only
    # change the password.
    password_expiry_days: int = Field(default=0, ge=0, le=3650)
    # 0: never lock. Otherwise this many failed logins in a row lock the user for
    # lockout_minutes (a correct password in between starts the count again).
    lockout_attempts: int = Field(default=5, ge=0, le=100)
    lockout_minutes: int = Field(default=15, ge=1, le=24 * 60)
    # Users without 2FA must enrol at their next login before anything else.
    enforce_2fa: bool = False
    # New users' email domains (empty: any). Existing users are not touched.
    allowed_email_domains: list[str] = Field(default_factory=list, max_length=100)
    session_ttl_minutes: int = Field(default=8 * 60, ge=5, le=7 * 24 * 60)
    # Password logins and invite acceptances from one client address, per minute (a burst
    # of that many, refilled evenly): lockout guards one account, this guards many.
    login_attempts_per_ip_per_minute: int = Field(default=60, ge=1, le=100_000)

    @field_validator("password_classes")
    @classmethod
    def _distinct(cls, classes: list[CharClass]) -> list[CharClass]:
        return list(dict.fromkeys(classes))

    @field_validator("allowed_email_domains")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        out = []
        for d in domains:
            d = d.strip().lower().removeprefix("@")
            if not re.match(_DOMAIN, d) or len(d) > 253:
                raise ValueError(f"{d!r} is not a domain name")
            out.append(d)
        return list(dict.fromkeys(out))

    def domain_allowed(self, email: str) -> bool:
        if not self.allowed_email_domains:
            return True
        return email.rsplit("@", 1)[-1].lower() in self.allowed_email_domains


def policy_problems(password: str, settings: AuthSettings) -> list[str]:
    """What ``password`` lacks under ``settings`` (empty: it is acceptable)."""
    problems = []
    if len(password) < settings.password_min_length:
        problems.append(f"at least {settings.password_min_length} characters")
    for cls in settings.password_classes:
        if not any(ch in _CLASSES[cls] for ch in password):
            problems.append(
                {
                    "lower": "a lowercase letter",
                    "upper": "an uppercase letter",
                    "digit": "a digit",
                    "symbol": "a symbol",
                }[cls]
            )
    if len(password) > 1024:  # argon2 takes any length; a megabyte "password" is an attack
        problems.append("at most 1024 characters")
    return problems


class Passwords:
    """argon2id hashing with the RFC 9106 low-memory profile (argon2-cffi's default)."""

    def __init__(self, hasher: PasswordHasher | None = None, *, parallel: int = 0) -> None:
        self._hasher = hasher or PasswordHasher()
        # At most this many hashes at once (default: one per core). Each takes 64 MiB and a
        # core for a while; a flood of logins waits here instead of taking every thread of
        # the loop's default pool and the memory with it.
        self._slots = asyncio.Semaphore(parallel or os.cpu_count() or 2)
        # Verified against when the email is unknown, so that answering "wrong email or
        # password" takes as long either way and does not tell which emails exist.
        self._dummy = self._hasher.hash("not a password of anyone")

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """The account's hash was made with weaker parameters than today's."""
        return self._hasher.check_needs_rehash(stored)
