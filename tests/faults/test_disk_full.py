"""The manager's data volume fills up while tasks run, then is freed.

The data dir is a small tmpfs of its own, filled to the last byte by a file beside the
database, for longer than a lease. While it is full, writes are refused with a reason that
says so and ``/readyz`` is not ready with that reason; once the file is gone the manager
recovers by itself, and the tasks its delegate kept running end as the delegate reported
them, with every line. SQLite only: the PostgreSQL server here is shared with other tests,
and filling its disk would fail them (tests/manager/store/test_disk_full.py raises
PostgreSQL's disk_full error through a trigger instead).

Needs root (to mount); skipped with the reason otherwise. CI runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from manager.client import ApiError
from manager.schemas.tasks import TaskSubmit
from shared.protocol import ShellPayload
from shared.tls import client_context
from tests.e2e.harness import Cluster
from tests.faults.support import (
    client,
    log_entries,
    numbered_lines_script,
    wait_final,
    wait_for_line,
)

# Room for the manager's files (database, WAL, keys, certificates) with some to spare.
VOLUME = "16m"
FILLER = "filler"


def _mount(at: Path) -> str | None:
    """Mount a tmpfs at ``at``; None, or why it cannot be done here."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    at.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME},mode=0700", "tmpfs", str(at)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else f"mount refused: {done.stderr.strip()}"


def _umount(at: Path) -> None:
    # Lazy: a process that still holds a file there must not keep the mount behind.
    subprocess.run(["umount", "-l", str(at)], capture_output=True, check=False)


def _fill(volume: Path) -> int:
    """Write a file until the volume has no room left; its size."""
    chunk = b"\0" * 65536
    written = 0
    with open(volume / FILLER, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # The last partial page: whatever fits.
        for size in (4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    written += f.write(chunk[:size])
    return written


@pytest.fixture
async def on_tmpfs(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A cluster whose manager's data dir (``root/manager``) is a tmpfs of its own."""
    data_dir = tmp_path / "manager"
    why = _mount(data_dir)
    if why is not None:
        pytest.skip(why)
    c = Cluster(root=tmp_path)
    try:
        yield c
    finally:
        await c.close()
        _umount(data_dir)


async def _readyz(c: Cluster) -> tuple[int, dict[str, Any]]:
    connector = aiohttp.TCPConnector(ssl=client_context(c.ca_file))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(c.url + "/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def _until_ready(c: Cluster, timeout: float = 30) -> None:
    """Ask /readyz until it answers ready (each ask while full is a probe write)."""
    async with asyncio.timeout(timeout):
        while (await _readyz(c))[0] != 200:
            await asyncio.sleep(0.1)


def _leases(c: Cluster, task_ids: list[str]) -> list[float]:
    """The tasks' leases as the manager stored them (read-only, beside the manager)."""
    db = sqlite3.connect(f"file:{c.data_dir / 'tether.db'}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(task_ids))
        rows = db.execute(f"SELECT lease_until FROM tasks WHERE id IN ({marks})", task_ids)
        return [float(r[0]) for r in rows]
    finally:
        db.close()


async def _until_leases_lapse(c: Cluster, task_ids: list[str], timeout: float = 30) -> None:
    """Wait until the manager's stored leases of the tasks have all run out on its clock
    (time.time(), as the sweep judges them): the outage has outlasted a lease."""
    async with asyncio.timeout(timeout):
        while time.time() <= max(_leases(c, task_ids)):
            await asyncio.sleep(0.1)


# Everything up to the tasks' outcomes holds; they do not yet: a result waiting in the
# delegate's spool is not listed in its heartbeats, and a lease the manager could not renew
# while full is judged against the wall clock when it comes back (issue 21 item 1, the
# `leases` work). Not strict: which of the two tasks fails first depends on timing.
async def test_a_full_data_volume_refuses_writes_as_full_and_loses_no_task(
    on_tmpfs: Cluster,
) -> None:
    c = on_tmpfs
    await c.start_manager()
    delegate = await c.start_delegate("steady")
    # One ends while the volume is full, the other runs on after it is freed.
    short = numbered_lines_script(30, 0.05)
    long = numbered_lines_script(60, 0.1)
    async with client(c) as api:
        ends_inside = (await api.submit_task(TaskSubmit(payload=ShellPayload(script=short)))).id
        runs_through = (await api.submit_task(TaskSubmit(payload=ShellPayload(script=long)))).id
    await wait_for_line(c, ends_inside, "line-1")
    await wait_for_line(c, runs_through, "line-1")

    assert _fill(c.data_dir) > 0
    try:
        # (a) A write is refused, and says why.
        refused = TaskSubmit(payload=ShellPayload(script="echo later"), idempotency_key="later")
        async with client(c) as api:
            with pytest.raises(ApiError) as caught:
                await api.submit_task(refused)
        assert (caught.value.status, caught.value.code) == (503, "disk_full")
        assert "full" in caught.value.message
        # (b) Not ready, with the reason.
        status, body = await _readyz(c)
        assert status == 503
        assert body["status"] == "disk full"
        assert "full" in body["reason"]
        # The first task finishes on the delegate; its report waits in the delegate's spool.
        await delegate.wait_event(
            "task result spooled; sent when the manager is back", task_id=ends_inside
        )
        # Full for longer than a lease, as the manager judges leases.
        await _until_leases_lapse(c, [ends_inside, runs_through])
        assert (await _readyz(c))[0] == 503
    finally:
        (c.data_dir / FILLER).unlink()

    # (c) The manager recovers by itself: ready again, writes taken.
    await _until_ready(c)
    async with client(c) as api:
        later = await api.submit_task(refused)
    assert later.state.value in ("queued", "running", "succeeded")

    manager_log = [e.get("event") for e in c.manager.events()] if c.manager else []
    # One line when it started, one when it ended, however many writes were refused.
    assert manager_log.count("data volume full: writes are refused until space is freed") == 1
    assert manager_log.count("data volume has room again: writes succeed") == 1
    assert "store error" not in manager_log
    assert "sweep failed" not in manager_log

    for task_id, lines in ((ends_inside, 30), (runs_through, 60)):
        task = await wait_final(c, task_id, timeout=60)
        outcome = (task["state"], task.get("error"), task["exit_code"])
        assert outcome == ("succeeded", None, 0), f"{task_id}, run through a full volume"
        assert [(a["attempt"], a["status"]) for a in task["attempts"]] == [(1, "succeeded")]
        texts = [ln["text"] for ln in await log_entries(c, task_id)]
        assert texts == [f"line-{i}" for i in range(1, lines + 1)]
