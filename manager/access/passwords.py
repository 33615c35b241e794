"""Passwords: the account's policy, and argon2id hashes (argon2-cffi).

Hashing is deliberately slow (tens of milliseconds, 64 MiB), so it runs in a worker thread:
a burst of logins must not stall the event loop that serves delegates' heartbeats.
"""

from __future__ import annotations

import asyncio
import os

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from manager.schemas.auth import CHAR_CLASSES, AuthSettings

__all__ = ["Passwords", "policy_problems"]


def policy_problems(password: str, settings: AuthSettings) -> list[str]:
    """What ``password`` lacks under ``settings`` (empty: it is acceptable)."""
    problems = []
    if len(password) < settings.password_min_length:
        problems.append(f"at least {settings.password_min_length} characters")
    for cls in settings.password_classes:
        if not any(ch in CHAR_CLASSES[cls] for ch in password):
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
        # password" takes as long either way and does not tell which emails exist. Made at
        # the first verify of any kind, known email or not (so that one is no tell either),
        # not at start: a hash is a fifth of a second of CPU every manager start would pay.
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        if self._dummy is None:
            self._dummy = self._hasher.hash("not a password of anyone")
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """The account's hash was made with weaker parameters than today's."""
        return self._hasher.check_needs_rehash(stored)
