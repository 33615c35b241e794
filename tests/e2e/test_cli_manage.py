"""The commands added for CLI parity, from the real `tether` against a real manager:
deleting environments, applications and groups, reading and changing one user or group."""

from __future__ import annotations

import json

from tests.e2e.harness import Cluster, Result


async def ok(c: Cluster, *args: str) -> Result:
    res = await c.tether(*args)
    assert res.code == 0, res.stderr
    return res


async def test_delete_env_app_group_and_change_a_user(cluster: Cluster) -> None:
    c = cluster
    await c.start_manager()
    await ok(c, "app", "create", "checkout")
    await ok(c, "env", "create", "checkout", "qa", "--type", "non_production")
    await ok(c, "group", "create", "deployers", "--permission", "view_audit")
    await ok(c, "user", "create", "dev@example.com", "--group", "deployers")

    # A removal off a terminal needs --yes, and says so.
    res = await c.tether("env", "delete", "checkout", "qa")
    assert (res.code, res.stderr) == (
        2,
        "error: deleting environment checkout/qa: add --yes (no terminal to ask on)\n",
    )
    # The application still has an environment: the manager refuses, in one line.
    res = await c.tether("app", "delete", "checkout", "--yes")
    assert res.code == 1
    assert len(res.stderr.splitlines()) == 1
    await ok(c, "env", "delete", "checkout", "qa", "--yes")
    await ok(c, "app", "delete", "checkout", "--yes")
    apps = json.loads((await ok(c, "app", "list", "--output", "json")).stdout)
    assert apps == {"apps": []}

    group = await ok(c, "group", "get", "deployers")
    assert group.stdout.splitlines()[-1] == "  members: dev@example.com"
    user = await ok(c, "user", "update", "dev@example.com", "--name", "Dev", "--no-groups")
    assert "groups:     -" in user.stdout
    got = json.loads((await ok(c, "user", "get", "dev@example.com", "--output", "json")).stdout)
    assert (got["name"], got["groups"]) == ("Dev", [])
    await ok(c, "group", "delete", "deployers", "--yes")
    res = await c.tether("group", "get", "deployers")
    assert res.code == 1
    assert "404" in res.stderr
