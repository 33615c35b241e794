"""Password hashing: no hash is made at start, and an unknown email is checked against a hash
as a known one is, from the first login on."""

from __future__ import annotations

from typing import Literal

from argon2 import PasswordHasher

from manager.access.passwords import Passwords


class _Counting(PasswordHasher):
    """A cheap argon2id hasher that counts its hashes and what it verified against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.hashed = 0
        self.verified: list[str] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.hashed += 1
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(str(hash))
        return super().verify(hash, password)


async def test_no_hash_is_made_at_start() -> None:
    hasher = _Counting()
    Passwords(hasher)
    assert hasher.hashed == 0


async def test_an_unknown_email_is_verified_against_a_hash_from_the_first_login_on() -> None:
    hasher = _Counting()
    passwords = Passwords(hasher)
    assert await passwords.verify(None, "a guess") is False
    assert hasher.hashed == 1  # the stand-in, made for this first check
    assert len(hasher.verified) == 1  # and verified against: as long as for a known email
    assert await passwords.verify(None, "another") is False
    assert hasher.hashed == 1  # made once
    assert hasher.verified[0] == hasher.verified[1]


async def test_a_known_email_first_makes_the_stand_in_too() -> None:
    """The first login pays for the stand-in whichever email it names: were it made only for
    an unknown one, that first answer would be slower, and tell."""
    hasher = _Counting()
    passwords = Passwords(hasher)
    stored = await passwords.hash("Correct-horse-42")
    assert await passwords.verify(stored, "Correct-horse-42") is True
    assert hasher.hashed == 2  # the account's hash, and the stand-in at its first verify
    assert await passwords.verify(None, "Correct-horse-42") is False
    assert hasher.hashed == 2
