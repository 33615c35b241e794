"""Upgrades from every earlier release: the data that release's own code made
(tests/upgrade/data/TAG/, by make_data.py), opened by today's real commands.

Each test works on a copy; the committed data is never written.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import ssl
import stat
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shared import __version__
from tests.e2e.harness import BIN, Cluster

DATA = Path(__file__).resolve().parent / "data"
RELEASES = sorted(p.name for p in DATA.iterdir() if p.is_dir())
PG_URL = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.e2e


def facts(release: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DATA / release / "facts.json").read_text())
    return loaded


def copy_data(src: Path, dst: Path) -> Path:
    """The data set as an operator restores it: key files 0600, directories 0700 (git keeps
    neither mode)."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        if path.is_dir():
            path.chmod(0o700)
        elif "key" in path.name or path.parent.name == "spool" or path.suffix == ".seg":
            path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return dst


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(root=tmp_path / "cluster")
    try:
        yield c
    finally:
        await c.close()


def healthz(cluster: Cluster) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    with urllib.request.urlopen(f"{cluster.url}/healthz", context=ctx, timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


async def tether_json(cluster: Cluster, *args: str) -> Any:
    res = await cluster.tether(*args, "--output", "json")
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


async def log_text(cluster: Cluster, task_id: str) -> str:
    res = await cluster.tether("task", "logs", task_id)
    assert res.code == 0, res.stderr
    return res.stdout


async def check_readable(cluster: Cluster, known: dict[str, Any]) -> None:
    """What the old release wrote reads back through today's API, and the chain holds."""
    assert healthz(cluster) == {"status": "ok", "version": __version__}
    task = await tether_json(cluster, "task", "get", known["secret_task"])
    assert (task["state"], task["exit_code"]) == ("succeeded", 0)
    old_log = await log_text(cluster, known["secret_task"])
    assert "hello from the old release" in old_log
    assert known["secret_sha256"] in old_log
    users = await tether_json(cluster, "user", "list")
    assert known["email"] in json.dumps(users)
    verify = await cluster.tether("audit", "verify")
    assert verify.code == 0, verify.stdout + verify.stderr


async def check_secret_decrypts(cluster: Cluster, known: dict[str, Any], delegate: str) -> None:
    """A task on today's delegate gets the secret the old release encrypted: its hash shows
    (the value itself would be masked)."""
    res = await cluster.tether(
        "task",
        "run",
        "--selector",
        "upgrade",
        "--env",
        'PW=${secrets.getValue("db-password")}',
        "--",
        "sh",
        "-c",
        'printf %s "$PW" | sha256sum',
    )
    assert res.code == 0, res.stderr
    assert known["secret_sha256"] in res.stdout, (delegate, res.stdout)


@pytest.mark.parametrize("release", RELEASES)
async def test_sqlite_data_dir_upgrades_and_the_old_spool_replays(
    release: str, cluster: Cluster
) -> None:
    known = facts(release)
    copy_data(DATA / release / "sqlite", cluster.root)
    # The data was made long before this run, so the spooled task's lease and its run
    # timeout ran out long ago, and the manager would rightly refuse the late result
    # (stale_attempt, or timed out by the sweep). An upgrade done inside an outage is the
    # case under test: the task's start and lease are moved to now, as if the outage and the
    # upgrade had taken seconds. Nothing else in the old data is touched.
    conn = sqlite3.connect(cluster.root / "manager" / "tether.db")
    with conn:
        conn.execute(
            "UPDATE tasks SET lease_until = ?, started_at = ? WHERE id = ?",
            (time.time() + 3600, time.time(), known["spooled_task"]),
        )
    conn.close()
    await cluster.start_manager()
    await check_readable(cluster, known)

    # The old delegate's data dir, with its token, under today's delegate: the result and
    # the last line it spooled while the manager was down are delivered now.
    d1 = await cluster.start_delegate("d1", "upgrade", token=known["token"], wait_mode=None)
    delivered = await d1.wait_event("spooled result delivered")
    assert delivered["recorded"] is True, d1.tail()
    task = await tether_json(cluster, "task", "get", known["spooled_task"])
    assert (task["state"], task["exit_code"]) == ("failed", 3)
    replayed = await log_text(cluster, known["spooled_task"])
    assert "before-outage" in replayed
    assert "after-outage" in replayed
    await check_secret_decrypts(cluster, known, "d1")


@pytest.mark.parametrize("release", RELEASES)
async def test_postgres_dump_upgrades(release: str, cluster: Cluster, tmp_path: Path) -> None:
    if not PG_URL:
        pytest.skip("TETHER_TEST_POSTGRES is empty: no PostgreSQL for this run")
    known = facts(release)["postgres"]
    schema = f"up_{secrets.token_hex(6)}"
    dump = (DATA / release / "postgres" / "dump.sql").read_text().replace("@SCHEMA@", schema)
    admin = await asyncpg.connect(PG_URL)
    try:
        subprocess.run(
            ["psql", PG_URL, "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=dump,
            text=True,
            capture_output=True,
            check=True,
        )
        copy_data(DATA / release / "postgres", cluster.root)
        cluster.database = f"{PG_URL}?search_path={schema}"
        dry = await cluster.run(
            str(BIN / "tether-manager"),
            "migrate",
            "--dry-run",
            "--data-dir",
            str(cluster.root / "manager"),
            "--database",
            cluster.database,
        )
        assert dry.code == 0, dry.stderr
        assert dry.stdout.startswith(f"schema version {known['schema_version']}")
        await cluster.start_manager()
        await check_readable(cluster, known)
        await cluster.start_delegate("fresh", "upgrade")
        await check_secret_decrypts(cluster, known, "fresh")
    finally:
        await cluster.close()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
