"""`tether login` meeting the account's rules, answering its questions from a script: an
enforced 2FA enrolment (then a recovery code), and an expired password. The CLI runs in a
thread against a real manager app on loopback; the session file is what later commands use."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest

from manager.client.cli.main import run_cli
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager, sqlite_store  # noqa: F401

PASSWORD = "Correct-horse-42"
NEW = "Battery-staple-77"


@pytest.fixture
async def m(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    # Real time: the CLI judges a stored session's expiry by the wall clock.
    async with manager(tmp_path, store, Clock(time.time())) as replica:
        yield replica


@dataclass
class Run:
    code: int
    out: str
    err: str
    asked: list[str]


async def tether(
    m: Manager,
    config: Path,
    *argv: str,
    answers: Callable[[str, str], str] | None = None,
    stdin: str = "",
    key: str | None = None,
) -> Run:
    """The CLI with no API key; ``answers(question, stderr so far)`` answers its prompts."""
    out, err = io.StringIO(), io.StringIO()
    asked: list[str] = []

    def prompt(question: str, secret: bool) -> str:
        asked.append(question)
        if answers is None:
            raise AssertionError(f"unexpected question {question!r}")
        return answers(question, err.getvalue())

    env = {
        "TETHER_MANAGER_URL": str(m.client.make_url("")).rstrip("/"),
        "TETHER_CONFIG_DIR": str(config),
        **({"TETHER_API_KEY": key} if key else {}),
    }
    code = await asyncio.to_thread(
        run_cli,
        list(argv),
        env=env,
        out=out,
        err=err,
        prompt=prompt,
        stdin=io.StringIO(stdin),
    )
    return Run(code, out.getvalue(), err.getvalue(), asked)


async def ok(m: Manager, method: str, path: str, body: Any = None) -> Any:
    status, answer = await m.call(method, path, body)
    assert status < 300, answer
    return answer


async def joined(m: Manager, **settings: Any) -> None:
    created = await ok(m, "POST", "/api/v1/users", {"email": "ana@example.com"})
    body = {"token": created["invite_token"], "password": PASSWORD}
    await ok(m, "POST", "/api/v1/auth/invite/accept", body)
    await ok(m, "PUT", "/api/v1/auth/settings", settings)


def login_args() -> tuple[str, ...]:
    return ("login", "--email", "ana@example.com", "--password-stdin")


async def test_login_enrols_in_enforced_2fa_then_a_recovery_code_logs_in(
    m: Manager, tmp_path: Path
) -> None:
    await joined(m, enforce_2fa=True)

    def enrol(question: str, err: str) -> str:
        assert question == "Code from the app: "
        key = re.search(r"key: ([A-Z2-7]+)", err)
        assert key is not None, err
        return pyotp.TOTP(key.group(1)).at(m.clock.now)

    run = await tether(m, tmp_path, *login_args(), answers=enrol, stdin=PASSWORD + "\n")
    assert run.code == 0, run.err
    assert "requires two-factor authentication" in run.err
    codes = re.findall(r"^  ([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})$", run.err, re.M)
    assert len(codes) == 10
    whoami = await tether(m, tmp_path, "whoami")
    assert whoami.code == 0, whoami.err
    assert "two-factor authentication: on" in whoami.out
    assert "restricted" not in whoami.out

    run = await tether(
        m, tmp_path, *login_args(), answers=lambda q, e: codes[3], stdin=PASSWORD + "\n"
    )
    assert run.code == 0, run.err
    assert run.asked == ["Authentication code (or a recovery code): "]
    run = await tether(
        m, tmp_path, *login_args(), answers=lambda q, e: codes[3], stdin=PASSWORD + "\n"
    )
    assert run.code == 1
    assert "invalid_totp" in run.err


async def test_login_changes_an_expired_password(m: Manager, tmp_path: Path) -> None:
    await joined(m, password_expiry_days=30)
    m.clock.advance(31 * 86400)
    script = {"Current password: ": PASSWORD, "New password: ": NEW, "New password again: ": NEW}
    run = await tether(
        m, tmp_path, *login_args(), answers=lambda q, e: script[q], stdin=PASSWORD + "\n"
    )
    assert run.code == 0, run.err
    assert "Your password has expired" in run.err
    assert (await tether(m, tmp_path, "whoami")).code == 0
    status, _ = await m.call(
        "POST", "/api/v1/auth/login", {"email": "ana@example.com", "password": NEW}
    )
    assert status == 200


async def test_differing_new_passwords_change_nothing(m: Manager, tmp_path: Path) -> None:
    await joined(m, password_expiry_days=30)
    m.clock.advance(31 * 86400)
    script = {"Current password: ": PASSWORD, "New password: ": NEW, "New password again: ": "x"}
    run = await tether(
        m, tmp_path, *login_args(), answers=lambda q, e: script[q], stdin=PASSWORD + "\n"
    )
    assert (run.code, run.err.splitlines()[-1]) == (
        2,
        "error: the two passwords differ; nothing was changed",
    )
    assert not (tmp_path / "config.json").exists()
    status, _ = await m.call(
        "POST", "/api/v1/auth/login", {"email": "ana@example.com", "password": PASSWORD}
    )
    assert status == 200


async def test_auth_settings_show_and_change_only_what_is_named(m: Manager, tmp_path: Path) -> None:
    run = await tether(m, tmp_path, "auth-settings", key=m.key)
    assert run.code == 0, run.err
    assert run.out.splitlines()[:2] == [
        "passwords: at least 12 characters, with lower, upper, digit; expire: never",
        "lockout: after 5 failed logins, for 15 min",
    ]
    run = await tether(
        m,
        tmp_path,
        "auth-settings",
        "--min-length",
        "16",
        "--allowed-domain",
        "example.com",
        "--enforce-2fa",
        "--output",
        "json",
        key=m.key,
    )
    assert run.code == 0, run.err
    assert '"password_min_length": 16' in run.out
    status, settings = await m.call("GET", "/api/v1/auth/settings")
    assert status == 200
    assert (settings["password_min_length"], settings["allowed_email_domains"]) == (
        16,
        ["example.com"],
    )
    assert (settings["enforce_2fa"], settings["lockout_attempts"]) == (True, 5)
    run = await tether(m, tmp_path, "auth-settings", "--min-length", "4", key=m.key)
    assert (run.code, run.err.strip()) == (
        2,
        "error: --min-length: Input should be greater than or equal to 8",
    )
    run = await tether(m, tmp_path, "auth-settings", "--any-domain", "--no-enforce-2fa", key=m.key)
    assert "new users' email domains: any" in run.out
    assert "two-factor authentication: optional" in run.out
    # The per-address login limit docs/access.md lists.
    run = await tether(m, tmp_path, "auth-settings", "--logins-per-ip-per-minute", "30", key=m.key)
    assert run.code == 0, run.err
    assert "logins from one address: at most 30 a minute" in run.out
    _, settings = await m.call("GET", "/api/v1/auth/settings")
    assert settings["login_attempts_per_ip_per_minute"] == 30


async def test_the_session_is_not_saved_in_a_directory_others_can_write(
    m: Manager, tmp_path: Path
) -> None:
    await joined(m)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    run = await tether(m, shared, *login_args(), stdin=PASSWORD + "\n")
    assert run.code == 2
    assert "must be yours alone" in run.err
    assert list(shared.iterdir()) == []
