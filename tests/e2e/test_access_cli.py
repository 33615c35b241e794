"""Access control from the real `tether` command against a real manager: an admin makes an
application, an environment, a group and a user; the user accepts the invite, logs in, is
held to the group's permissions, logs out; a disabled user's session stops."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.e2e.conftest import ON_SQLITE
from tests.e2e.harness import BIN, Cluster, Result

PASSWORD = "Dev-password-123"


class User:
    """The CLI as a user with no API key: only the session `tether login` stores."""

    def __init__(self, cluster: Cluster, config_dir: Path) -> None:
        self.cluster = cluster
        self.config_dir = config_dir

    async def tether(self, *args: str, stdin: bytes | None = None) -> Result:
        env = {
            **self.cluster.cli_env(),
            "TETHER_API_KEY": "",
            "TETHER_CONFIG_DIR": str(self.config_dir),
        }
        return await self.cluster.run(str(BIN / "tether"), *args, env=env, stdin=stdin)


async def admin(cluster: Cluster, *args: str) -> Result:
    res = await cluster.tether(*args)
    assert res.code == 0, res.stderr
    return res


@ON_SQLITE
async def test_a_user_is_invited_logs_in_and_is_held_to_their_group(running: Cluster) -> None:
    await admin(running, "app", "create", "checkout")
    await admin(running, "env", "create", "checkout", "qa", "--type", "non_production")
    await admin(running, "env", "create", "checkout", "prod", "--type", "production")
    spec = "apps=checkout;envs=non_production;actions=create,read,update,execute"
    await admin(running, "group", "create", "deployers", "--app-permission", spec)
    created = await admin(running, "user", "create", "dev@example.com", "--group", "deployers")
    invite = created.stdout.strip().splitlines()[-1]
    assert invite.startswith("tiv_")
    assert "shown once" in created.stderr
    listed = json.loads((await admin(running, "user", "list", "--output", "json")).stdout)
    assert [(u["email"], u["status"]) for u in listed["users"]] == [("dev@example.com", "invited")]

    user = User(running, running.root / "dev-config")
    res = await user.tether("whoami")
    assert (res.code, res.stderr) == (
        2,
        f"error: not logged in to {running.url} (from TETHER_MANAGER_URL): "
        "run tether login, or set TETHER_API_KEY or --api-key\n",
    )
    res = await user.tether("login", "--invite", invite, "--password-stdin", stdin=b"weak\n")
    assert res.code == 1
    assert "the password needs at least 12 characters" in res.stderr
    res = await user.tether(
        "login", "--invite", invite, "--password-stdin", stdin=f"{PASSWORD}\n".encode()
    )
    assert res.code == 0, res.stderr
    assert "Logged in as dev@example.com" in res.stderr
    session_file = user.config_dir / "config.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(user.config_dir.stat().st_mode) == 0o700
    assert PASSWORD not in session_file.read_text()

    res = await user.tether("whoami")
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith("dev@example.com (user usr_")
    assert "groups: deployers" in res.stdout
    # The group's application permissions: qa yes, prod no, delegates' tokens not at all.
    qa = await user.tether("task", "submit", "--app", "checkout", "--app-env", "qa", "--", "true")
    assert qa.code == 0, qa.stderr
    prod = await user.tether(
        "task", "submit", "--app", "checkout", "--app-env", "prod", "--", "true"
    )
    assert prod.code == 1
    assert "403" in prod.stderr
    tokens = await user.tether("token", "list")
    assert tokens.code == 1
    assert "this needs the manage_delegates permission" in tokens.stderr
    await admin(running, "group", "update", "deployers", "--permission", "manage_delegates")
    tokens = await user.tether("token", "list", "--output", "json")
    assert tokens.code == 0, tokens.stderr
    groups = json.loads((await admin(running, "group", "list", "--output", "json")).stdout)
    deployers = next(g for g in groups["groups"] if g["name"] == "deployers")
    assert deployers["account_permissions"] == ["manage_delegates"]
    assert deployers["members"] == ["dev@example.com"]

    res = await user.tether("logout")
    assert (res.code, res.stderr) == (0, "Logged out.\n")
    assert '"session"' not in session_file.read_text()  # the context stays, its session not
    assert (await user.tether("whoami")).code == 2

    wrong = await user.tether(
        "login", "--email", "dev@example.com", "--password-stdin", stdin=b"Not-the-password-1\n"
    )
    assert wrong.code == 1
    assert wrong.stderr == "error: HTTP 401 invalid_credentials: wrong email or password\n"
    res = await user.tether(
        "login", "--email", "dev@example.com", "--password-stdin", stdin=f"{PASSWORD}\n".encode()
    )
    assert res.code == 0, res.stderr

    await admin(running, "user", "disable", "dev@example.com")
    res = await user.tether("whoami")
    assert res.code == 1
    assert "401" in res.stderr
    assert "tether login" in res.stderr
