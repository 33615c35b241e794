"""Several manager replicas on one PostgreSQL, behind a load balancer."""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.balancer import Balancer
from tests.e2e.harness import BIN, TIME_SCALE, Cluster, Proc

PG = os.environ.get("TETHER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Replicas:
    cluster: Cluster
    database: str
    managers: list[Proc] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    async def start(self) -> Proc:
        proc = Proc(
            f"replica-{len(self.managers)}",
            [
                str(BIN / "tether-manager"),
                "serve",
                "--data-dir",
                str(self.cluster.data_dir),
                "--listen",
                "127.0.0.1:0",
                "--database",
                self.database,
                "--time-scale",
                str(TIME_SCALE),
                "--log-format",
                "json",
            ],
        )
        await proc.start()
        self.cluster.procs.append(proc)
        match = await proc.wait_stdout(r"listening on (https://\S+)")
        self.managers.append(proc)
        self.urls.append(match.group(1))
        return proc

    async def delegate(self, name: str) -> Proc:
        # Tokens through the API: the host-side command works on a SQLite data dir.
        res = await self.cluster.tether("token", "create", name)
        assert res.code == 0, res.stderr
        return await self.cluster.start_delegate(name, token=res.last_line)

    def ports(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", int(u.rsplit(":", 1)[1])) for u in self.urls]


@pytest.fixture
async def replicas(cluster: Cluster) -> AsyncIterator[Replicas]:
    schema = f"t_{secrets.token_hex(6)}"
    try:
        conn = await asyncpg.connect(PG)
    except OSError as exc:
        pytest.fail(f"PostgreSQL at {PG} is needed for the replica tests: {exc}")
    await conn.execute(f"CREATE SCHEMA {schema}")
    cluster.data_dir = cluster.root / "manager"
    r = Replicas(cluster, f"{PG}?search_path={schema}")
    try:
        yield r
    finally:
        await cluster.close()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_a_task_submitted_on_one_replica_runs_on_a_delegate_held_by_another(
    replicas: Replicas,
) -> None:
    await replicas.start()
    await replicas.start()
    c = replicas.cluster
    c.url = replicas.urls[1]
    delegate = await replicas.delegate("held-by-b")
    c.url = replicas.urls[0]
    res = await c.tether("task", "run", "--", "echo", "crossed replicas")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "crossed replicas"
    assert await delegate.wait_event("task finished", status="succeeded")
    # Replica A lists the delegate held by replica B as connected (from B's presence rows).
    listed = await c.tether("delegate", "list", "--output", "json")
    (row,) = json.loads(listed.stdout)["delegates"]
    assert row["status"] == "connected"


def _settled(d: Proc, mark: int) -> bool:
    """No stream was lost since event ``mark``, or a new one opened after the last loss."""
    events = d.events()[mark:]
    lost = [
        i
        for i, e in enumerate(events)
        if e.get("event") in ("stream closed", "no heartbeat ack; reconnecting")
    ]
    if not lost:
        return True
    return any(
        e.get("event") == "channel mode" and e.get("mode") == "stream"
        for e in events[lost[-1] + 1 :]
    )


async def test_killing_a_replica_moves_its_delegates_and_their_tasks_go_on(
    replicas: Replicas, tmp_path: Path
) -> None:
    first = await replicas.start()
    await replicas.start()
    balancer = Balancer(replicas.ports())
    port = await balancer.start()
    c = replicas.cluster
    c.url = f"https://127.0.0.1:{port}"
    try:
        delegates = [await replicas.delegate(f"d{i}") for i in range(4)]
        # A task that spans the kill, and a stamp file its second half writes.
        stamp = tmp_path / "stamp"
        res = await c.tether(
            "task",
            "submit",
            "--",
            "bash",
            "-c",
            f"echo before; sleep 2; echo after > {stamp}; echo after",
        )
        task_id = res.last_line
        marks = [len(d.events()) for d in delegates]
        await first.stop(signal.SIGKILL)
        # Whoever was on the dead replica reconnects through the balancer to the live one;
        # the others (the balancer sent them to the live replica) have nothing to do. A
        # delegate that has not noticed the kill yet passes here, and the follow below, which
        # needs the task's holder back, still proves the move.
        for d, mark in zip(delegates, marks, strict=True):
            await d.wait_until(functools.partial(_settled, d, mark), "a settled stream")
        follow = await c.tether("task", "logs", task_id, "--follow", timeout=60)
        assert follow.stdout.split() == ["before", "after"]
        assert stamp.read_text().strip() == "after"
        res = await c.tether("task", "run", "--", "echo", "still serving")
        assert res.code == 0, res.stderr
    finally:
        await balancer.close()
