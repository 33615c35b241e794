"""Lockout against enumeration and against locking others out: an unknown email, a wrong
password and a locked user get one answer after the same work; a stranger's guesses lock
their network, not the owner elsewhere; guesses from many networks meet an account-wide
ceiling; failed logins reach the audit trail one event per account and minute."""

from __future__ import annotations

from typing import Any

import pytest

from manager.access.directory import UserBody
from manager.access.entities import Entity
from manager.access.lockout import ACCOUNT_FACTOR, MAX_NETWORKS, claim, network_of
from manager.access.login import LOGINS, Logins
from manager.api.failed_logins import FAILED_LOGINS, MAX_ADDRESSES
from manager.api.http import status_of
from manager.core.audit_chain import AuditQuery
from manager.errors import DomainError
from manager.schemas.auth import AuthSettings
from tests.manager.access.test_login import PASSWORD, joined, login
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401

STRANGER = "203.0.113.9"
OWNER = "198.51.100.7"


async def attempt(logins: Logins, client: str, password: str = PASSWORD, **kw: Any) -> str:
    """The error code of a login from ``client``; "ok" when it succeeded."""
    try:
        await logins.login(kw.pop("email", "ana@example.com"), password, client=client, **kw)
    except DomainError as exc:
        return f"{status_of(exc)} {exc.code}"
    return "ok"


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("", "unknown"),
        ("not an address", "not an address"),
    ],
)
def test_failures_count_per_network(address: str, network: str) -> None:
    assert network_of(address) == network


def test_a_user_remembers_a_bounded_number_of_networks() -> None:
    s = AuthSettings(lockout_attempts=50)
    body = UserBody(email="ana@example.com")
    for n in range(MAX_NETWORKS * 3):
        body = claim(body, f"10.0.{n // 256}.{n % 256}", s, 1000.0 + n).body
    assert len(body.network_failures) == MAX_NETWORKS
    assert body.failed_logins == MAX_NETWORKS * 3  # the account-wide count forgets nothing


# -- through the manager -----------------------------------------------------------------------


async def test_unknown_wrong_and_locked_get_one_answer_after_the_same_work(m: Manager) -> None:
    await joined(m, lockout_attempts=2)
    logins: Logins = m.client.app[LOGINS]
    checked: list[str | None] = []
    verify = logins.passwords.verify

    async def counted(stored: str | None, password: str) -> bool:
        checked.append(stored)
        return await verify(stored, password)

    logins.passwords.verify = counted  # type: ignore[method-assign]
    unknown = await login(m, 401, email="nobody@example.com")
    wrong = await login(m, 401, password="Wrong-horse-1")
    await login(m, 401, password="Wrong-horse-2")  # locks this address
    checked.clear()
    locked = await login(m, 401)  # the right password, refused by the lock
    assert unknown == wrong == locked
    assert locked == {
        "error": {
            "code": "invalid_credentials",
            "message": "wrong email or password",
            "field": None,
        }
    }
    assert len(checked) == 1  # the password hashed, as for a wrong one


async def test_a_strangers_guesses_do_not_lock_the_owner_out_elsewhere(m: Manager) -> None:
    await joined(m, lockout_attempts=3)
    logins: Logins = m.client.app[LOGINS]
    for n in range(10):
        assert await attempt(logins, STRANGER, f"Guess-{n}") == "401 invalid_credentials"
    # The stranger is locked out, even with the right password...
    assert await attempt(logins, STRANGER) == "401 invalid_credentials"
    # ...the owner, from their own address, is not.
    assert await attempt(logins, OWNER) == "ok"
    m.clock.advance(15 * 60)
    assert await attempt(logins, STRANGER) == "ok"


async def test_guesses_from_many_networks_meet_the_account_wide_ceiling(m: Manager) -> None:
    await joined(m, lockout_attempts=2, lockout_minutes=10)
    logins: Logins = m.client.app[LOGINS]
    locks: list[tuple[str, str]] = []

    def on_lock(user: Entity[UserBody], scope: str, minutes: int) -> None:
        locks.append((user.body.email, scope))  # the lock's event: none, here

    for n in range(2 * ACCOUNT_FACTOR):
        code = await attempt(logins, f"192.0.2.{n}", "Guess", on_lock=on_lock)
        assert code == "401 invalid_credentials"
    assert await attempt(logins, OWNER) == "401 invalid_credentials"
    assert locks == [("ana@example.com", "everywhere")]
    m.clock.advance(10 * 60)
    assert await attempt(logins, OWNER) == "ok"


async def test_failed_logins_are_audited_once_per_account_and_minute(m: Manager) -> None:
    await joined(m, lockout_attempts=0, login_attempts_per_ip_per_minute=1000)  # all checked
    m.clock.now = (m.clock.now // 60) * 60 + 1  # the start of a minute
    failed = m.client.app[FAILED_LOGINS]
    for n in range(30):
        await login(m, 401, password=f"Wrong-{n}")
        await login(m, 401, email=f"nobody-{n}@example.com", password="Typed-A-Password-1")
    assert await failed.flush() == 0  # the minute has not ended
    assert await m.store.list_audit(AuditQuery(action="login_failed")) == []
    m.clock.advance(60)
    assert await failed.flush() == 2
    events = await m.store.list_audit(AuditQuery(action="login_failed", ascending=True))
    by_name = {e.resource_name: e for e in events}
    assert set(by_name) == {"ana@example.com", "unknown email"}
    assert by_name["ana@example.com"].summary.startswith("30 failed logins for ana@example.com")
    unknown = by_name["unknown email"]
    assert unknown.summary.startswith("30 failed logins for unknown email")
    # What a guesser typed is not kept: neither the emails nor what went in the password field.
    for text in (unknown.summary, unknown.diff):
        assert "nobody-" not in text
        assert "Typed-A-Password" not in text
    assert await failed.flush() == 0  # written once


async def test_a_flood_from_many_addresses_names_a_few(m: Manager) -> None:
    await joined(m, lockout_attempts=0)
    logins: Logins = m.client.app[LOGINS]
    failed = m.client.app[FAILED_LOGINS]
    ana = await logins.directory.users.by_key("ana@example.com")
    for n in range(MAX_ADDRESSES + 3):
        failed.note(ana, f"192.0.2.{n}")
    assert await failed.flush(everything=True) == 1
    (event,) = await m.store.list_audit(AuditQuery(action="login_failed"))
    assert event.summary.endswith("and other addresses")
    assert event.summary.count("192.0.2.") == MAX_ADDRESSES
