"""`tether audit` against a real manager on each store: list, export, verify, saved filters,
and the events host-side commands write as the system."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import stat

import asyncpg

from tests.e2e.conftest import ON_SQLITE
from tests.e2e.harness import Cluster


async def tamper(cluster: Cluster, sql: str) -> None:
    """Edit the stored trail behind the manager's back."""
    if cluster.database is None:
        conn = sqlite3.connect(cluster.data_dir / "tether.db")
        try:
            with conn:
                conn.execute(sql)
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(cluster.database)  # its search_path names the test's schema
    try:
        await pg.execute(sql)
    finally:
        await pg.close()


async def two_changes(cluster: Cluster) -> None:
    """One through the API (the admin key), one on the manager host (the system)."""
    res = await cluster.tether("token", "create", "via-api")
    assert res.code == 0, res.stderr
    await cluster.token("on-host")


@ON_SQLITE
async def test_list_shows_api_and_host_side_changes_with_their_actors(running: Cluster) -> None:
    await two_changes(running)
    res = await running.tether("audit", "list", "--output", "json")
    assert res.code == 0, res.stderr
    events = json.loads(res.stdout)["events"]
    assert [(e["resource_name"], e["actor_kind"], e["method"]) for e in events] == [
        ("on-host", "system", "CLI"),
        ("via-api", "api_key", "POST"),
        # The admin key the manager made at its first start.
        ("admin", "system", "START"),
    ]
    assert events[0]["path"] == "tether-manager token create on-host"
    res = await running.tether("audit", "list", "--actor", "system", "--type", "token")
    assert res.code == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "ACTOR"]
    assert len(lines) == 2
    assert "on-host" in lines[1]


async def test_verify_passes_then_fails_on_an_edited_row(running: Cluster) -> None:
    await two_changes(running)
    res = await running.tether("audit", "verify")
    assert res.code == 0, res.stderr
    assert "intact: 3 event(s)" in res.stdout
    await tamper(running, "UPDATE audit_events SET summary = 'nothing happened' WHERE seq = 1")
    res = await running.tether("audit", "verify")
    assert res.code == 1
    assert "BROKEN at seq 1: hash mismatch" in res.stdout
    res = await running.tether("audit", "verify", "--output", "json")
    assert res.code == 1
    assert json.loads(res.stdout)["broken"]["seq"] == 1


async def test_verify_finds_a_deleted_row(running: Cluster) -> None:
    await two_changes(running)
    await running.tether("token", "revoke", "via-api")
    await tamper(running, "DELETE FROM audit_events WHERE seq = 2")
    res = await running.tether("audit", "verify")
    assert res.code == 1
    assert "BROKEN at seq 2: gap in seq" in res.stdout


@ON_SQLITE
async def test_export_writes_csv_to_a_private_file_and_jsonl_to_stdout(running: Cluster) -> None:
    await two_changes(running)
    out = running.root / "audit.csv"
    res = await running.tether("audit", "export", "--format", "csv", "-o", str(out))
    assert res.code == 0, res.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["resource_name"] for r in rows] == ["admin", "via-api", "on-host"]
    res = await running.tether("audit", "export", "--actor", "system", "--type", "token")
    assert res.code == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert json.loads(line)["resource_name"] == "on-host"


@ON_SQLITE
async def test_saved_filters_from_the_command_line(running: Cluster) -> None:
    await two_changes(running)
    res = await running.tether(
        "audit", "filter", "save", "host", "--actor", "system", "--type", "token"
    )
    assert res.code == 0, res.stderr
    res = await running.tether("audit", "filter", "list")
    assert "host" in res.stdout
    assert "--actor system" in res.stdout
    res = await running.tether("audit", "list", "--filter", "host", "--output", "json")
    assert [e["resource_name"] for e in json.loads(res.stdout)["events"]] == ["on-host"]
    res = await running.tether("audit", "filter", "delete", "host")
    assert res.code == 0, res.stderr
    res = await running.tether("audit", "filter", "delete", "host")
    assert res.code == 1
    assert "404" in res.stderr
