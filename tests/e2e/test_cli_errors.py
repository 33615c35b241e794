"""The real `tether` against a real manager, misconfigured the ways a newcomer does: each
error is one line on stderr naming what failed, the URL or CA in use and the setting to
change, with the documented exit status (2 configuration, 3 unreachable, 1 refused)."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path

import aiohttp
import pytest

from shared.tls import ensure_manager_certificates
from tests.e2e.harness import BIN, Cluster, Result

PASSWORD = "Dev-password-123"


@pytest.fixture
async def manager(cluster: Cluster) -> Cluster:
    await cluster.start_manager()
    return cluster


async def tether(
    c: Cluster, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None
) -> Result:
    """The CLI with a config dir of its own; ``env`` replaces the admin's settings."""
    full = {**c.cli_env(), "TETHER_CONFIG_DIR": str(c.root / "cli"), **(env or {})}
    return await c.run(str(BIN / "tether"), *args, env=full, stdin=stdin)


BARE = {"TETHER_API_KEY": "", "TETHER_MANAGER_URL": "", "TETHER_CA_FILE": ""}


def one_line(res: Result) -> str:
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


async def check_http_against_the_tls_port_says_use_https(manager: Cluster) -> None:
    plain = manager.url.replace("https://", "http://")

    res = await tether(manager, "task", "list", env={"TETHER_MANAGER_URL": plain})

    assert res.code == 2
    assert one_line(res) == (
        f"error: {plain} closed the connection without answering: it probably serves https;"
        " use https:// (URL from TETHER_MANAGER_URL: fix its scheme there)"
    )


async def check_a_wrong_ca_names_the_ca_file_and_how_to_change_it(manager: Cluster) -> None:
    other = ensure_manager_certificates(manager.root / "other-tls", ["localhost"]).ca_cert

    res = await tether(manager, "task", "list", env={"TETHER_CA_FILE": str(other)})

    assert res.code == 2
    line = one_line(res)
    assert line.startswith(
        f"error: the TLS certificate of {manager.url} is not trusted by CA file {other} ("
    )
    assert line.endswith(
        "(CA from TETHER_CA_FILE: give the manager's CA with --ca-file or TETHER_CA_FILE,"
        " or in the context: tether context add)"
    )
    assert "SSLCertVerificationError" not in line


async def check_a_manager_that_is_not_there_exits_3(manager: Cluster) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{s.getsockname()[1]}"
    res = await tether(manager, "--manager-url", url, "task", "list")

    assert res.code == 3
    assert one_line(res).startswith(f"error: cannot connect to {url} (")
    assert one_line(res).endswith("(URL from --manager-url: is the manager running there?)")


async def check_a_bad_email_is_explained_not_a_regex(manager: Cluster) -> None:
    # The CLI checks it before sending (exit 2)...
    res = await tether(manager, "user", "create", "not-an-email")
    assert res.code == 2
    assert one_line(res) == (
        "error: EMAIL: not an email address: expected a name, @ and a domain (dev@example.com)"
    )
    # ... and the API says the same to any other client, in its 400.
    context = ssl.create_default_context(cafile=str(manager.ca_file))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{manager.url}/api/v1/users",
            json={"email": "not-an-email"},
            headers={"Authorization": f"Bearer {manager.admin_key}"},
            ssl=context,
        ) as resp,
    ):
        body = await resp.json()
    assert (resp.status, body["error"]["message"]) == (
        400,
        "email: not an email address: expected a name, @ and a domain (dev@example.com)",
    )


async def test_each_misconfiguration_says_what_to_change(manager: Cluster) -> None:
    # One manager for all (each start costs seconds): each check is independent of the rest.
    await check_http_against_the_tls_port_says_use_https(manager)
    await check_a_wrong_ca_names_the_ca_file_and_how_to_change_it(manager)
    await check_a_manager_that_is_not_there_exits_3(manager)
    await check_a_bad_email_is_explained_not_a_regex(manager)


async def test_after_login_the_context_remembers_url_and_ca(manager: Cluster) -> None:
    created = await tether(manager, "user", "create", "dev@example.com")
    assert created.code == 0, created.stderr
    invite = created.stdout.strip().splitlines()[-1]
    # Logged in with the URL and CA from the environment, and no API key...
    user = {"TETHER_API_KEY": ""}
    res = await tether(
        manager,
        "login",
        "--invite",
        invite,
        "--password-stdin",
        stdin=f"{PASSWORD}\n".encode(),
        env=user,
    )
    assert res.code == 0, res.stderr
    config = manager.root / "cli" / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    # ... later commands need neither: the context has them.
    res = await tether(manager, "whoami", env=BARE)
    assert res.code == 0, res.stderr
    assert res.stdout.startswith("dev@example.com (user usr_")
    listed = await tether(manager, "context", "list", env=BARE)
    assert listed.code == 0, listed.stderr
    token = _token_of(config)
    assert token not in listed.stdout + listed.stderr
    assert "127.0.0.1" in listed.stdout
    assert "dev@example.com" in listed.stdout
    # A context that does not exist is a usage error listing those that do.
    res = await tether(manager, "--context", "nope", "whoami", env=BARE)
    assert (res.code, one_line(res)) == (2, "error: no context 'nope' (contexts: 127.0.0.1)")


def _token_of(config: Path) -> str:
    data = json.loads(config.read_text())
    return str(data["contexts"]["127.0.0.1"]["session"]["token"])
