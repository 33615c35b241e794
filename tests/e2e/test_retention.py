"""Retention from the command line, against a real manager: nothing goes by default, a dry
run shows what would go and deletes nothing, a purge deletes it, records one event with the
counts, and the audit trail still verifies."""

from __future__ import annotations

import json
import re

from tests.e2e.harness import BIN, Cluster


async def ok(c: Cluster, *args: str) -> str:
    res = await c.tether(*args)
    assert res.code == 0, f"{args}: {res.stdout}\n{res.stderr}"
    return res.stdout


async def purge(c: Cluster, *extra: str) -> str:
    res = await c.run(
        str(BIN / "tether-manager"), "purge", "--data-dir", str(c.data_dir), *c.store_args(), *extra
    )
    assert res.code == 0, res.stderr
    return res.stdout


async def test_purge_from_the_host_by_the_settings_set_with_the_cli(cluster: Cluster) -> None:
    c = cluster
    await c.start_manager()
    await c.start_delegate("d1", "main")
    await ok(c, "task", "run", "--selector", "main", "--", "echo", "kept-until-purged")
    [task] = json.loads(await ok(c, "--output", "json", "task", "list"))["tasks"]

    # Default: nothing is deleted.
    assert "Nothing" in await purge(c, "--dry-run")
    assert "Nothing" in await purge(c)
    assert "kept forever" in await ok(c, "retention", "get")

    # A rule for every task (a split second, so the task already run is past it).
    await ok(c, "retention", "set", "--tasks-days", "0.000001")
    shown = json.loads(await ok(c, "--output", "json", "retention", "get"))
    assert shown["rules"] == [
        {"app": "*", "env_type": "*", "logs_days": None, "tasks_days": 0.000001}
    ]
    bad = await c.tether("retention", "set", "--logs-days", "5")
    assert bad.code != 0
    assert "logs_days cannot exceed tasks_days" in bad.stdout + bad.stderr

    dry = await purge(c, "--dry-run")
    assert "Would delete" in dry
    assert re.search(r"tasks +1 ", dry), dry
    await ok(c, "task", "get", task["id"])
    done = await purge(c)
    assert "Deleted" in done
    assert re.search(r"tasks +1 ", done), done
    gone = await c.tether("task", "get", task["id"])
    assert gone.code != 0

    events = json.loads(await ok(c, "--output", "json", "audit", "list", "--type", "retention"))
    actions = [e["action"] for e in events["events"]]
    assert actions == ["purge", "update"], events
    assert '"tasks": 1' in events["events"][0]["diff"]
    verified = json.loads(await ok(c, "--output", "json", "audit", "verify"))
    assert verified["broken"] is None
