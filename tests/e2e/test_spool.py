"""The delegate's spool with the real commands: a manager killed mid-task, a delegate killed
with a result on disk, and the delegate's memory while a task prints hundreds of megabytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import ON_SQLITE
from tests.e2e.harness import BIN, PRODUCTION_LEASES, Cluster, Proc

MIB = 1024 * 1024
# The delegate's resident memory while a task prints ~200 MB as fast as it can.
RSS_LIMIT = 150 * MIB
# Manager timings for the restart test: a 6 s lease, so a delegate process started after
# the manager comes back is surely in time to claim the task it finished.
SLOW_MANAGER = ("--time-scale", "0.2")


def gated_script(gate: Path, after: int) -> str:
    """Print ``a-N`` lines until ``gate`` exists, then ``after`` ``b-N`` lines, then end."""
    return (
        f"i=0; while [ ! -e {gate} ]; do i=$((i+1)); echo a-$i; sleep 0.002; done; "
        f"for j in $(seq 1 {after}); do echo b-$j; done; "
        'echo "PRINTED=$i" >> "$TETHER_OUTPUT"; exit 3'
    )


async def follow_until(c: Cluster, task_id: str, pattern: str) -> None:
    follower = Proc(
        "follow", [str(BIN / "tether"), "task", "logs", task_id, "--follow"], c.cli_env()
    )
    await follower.start()
    try:
        await follower.wait_stdout(pattern)
    finally:
        await follower.stop(signal.SIGKILL)


async def task_json(c: Cluster, task_id: str) -> dict[str, Any]:
    res = await c.tether("task", "get", task_id, "--output", "json")
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


async def check_log_complete(c: Cluster, task: dict[str, Any], after: int) -> None:
    """Every line once, seqs without a gap, and the text in the order it was printed."""
    res = await c.tether("task", "logs", task["id"], "--output", "json")
    assert res.code == 0, res.stderr
    entries = [json.loads(line) for line in res.stdout.splitlines()]
    assert [e["seq"] for e in entries] == list(range(len(entries)))
    assert {e["attempt"] for e in entries} == {1}
    texts = [e["text"] for e in entries if e["stream"] == "stdout"]
    printed = int(task["outputs"]["PRINTED"])
    assert printed > 0
    assert texts == [f"a-{i}" for i in range(1, printed + 1)] + [
        f"b-{j}" for j in range(1, after + 1)
    ]


def recorded_results(delegates: list[Proc], task_id: str) -> int:
    """How many of the delegates' result posts the manager recorded (not a resend)."""
    return sum(
        1
        for d in delegates
        for e in d.events()
        if e.get("task_id") == task_id
        and e.get("event") in ("task finished", "spooled result delivered")
        and e.get("recorded") is True
    )


# The production lease and start grace: a restart on a loaded machine cannot outlast the
# lease (1.5 s at the harness's scale), which would make the spooled result stale.
@pytest.mark.production_leases
async def test_a_killed_manager_gets_the_whole_log_in_order_and_the_result_once(
    running: Cluster, tmp_path: Path
) -> None:
    delegate = await running.start_delegate("spooler")
    gate = tmp_path / "gate"
    submitted = await running.tether(
        "task", "submit", "--timeout", "120", "--", "bash", "-c", gated_script(gate, 2000)
    )
    task_id = submitted.last_line
    await follow_until(running, task_id, r"^a-20$")
    assert running.manager is not None

    await running.manager.stop(signal.SIGKILL)  # while the task prints
    await delegate.wait_event("manager unreachable; spooling the task's log", task_id=task_id)
    gate.touch()
    await delegate.wait_event("task result spooled; sent when the manager is back", task_id=task_id)
    seen = len(delegate.events())
    await running.start_manager(port=running.port)
    delivered = await delegate.wait_event("spooled result delivered", after=seen, task_id=task_id)

    assert delivered["recorded"] is True
    task = await task_json(running, task_id)
    assert task["state"] == "failed"
    assert task["exit_code"] == 3
    assert len(task["attempts"]) == 1
    await check_log_complete(running, task, after=2000)
    assert recorded_results([delegate], task_id) == 1
    assert not list((running.root / "delegate-spooler" / "spool").iterdir())


async def test_a_result_spooled_by_a_killed_delegate_is_sent_by_its_next_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_manager(*SLOW_MANAGER)
    token = await cluster.token("phoenix")
    first = await cluster.start_delegate("phoenix", token=token)
    gate = tmp_path / "gate"
    submitted = await cluster.tether(
        "task", "submit", "--timeout", "120", "--", "bash", "-c", gated_script(gate, 500)
    )
    task_id = submitted.last_line
    await follow_until(cluster, task_id, r"^a-20$")
    assert cluster.manager is not None
    await cluster.manager.stop(signal.SIGKILL)
    gate.touch()
    await first.wait_event("task result spooled; sent when the manager is back", task_id=task_id)
    await first.stop(signal.SIGKILL)

    spool = cluster.root / "delegate-phoenix" / "spool"
    (attempt_dir,) = list(spool.iterdir())
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert stat.S_IMODE(attempt_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in attempt_dir.iterdir()} == {0o600}

    # Production timings for the restarted manager: it waits lost_after (30 s) for delegates
    # to come back before judging a lease, which a new delegate process starting on a loaded
    # machine must not outlast (at a scaled 6 s it could, and its attempt was then stale).
    await cluster.start_manager(*PRODUCTION_LEASES, port=cluster.port)
    second = await cluster.start_delegate("phoenix", token=token, wait_mode=None)
    replayed = await second.wait_event("replaying spooled task", task_id=task_id)
    delivered = await second.wait_event("spooled result delivered", task_id=task_id)

    assert replayed["result"] is True
    assert delivered["recorded"] is True
    task = await task_json(cluster, task_id)
    assert task["state"] == "failed"
    assert len(task["attempts"]) == 1
    await check_log_complete(cluster, task, after=500)
    assert recorded_results([first, second], task_id) == 1
    assert not list(spool.iterdir())


@ON_SQLITE
async def test_delegate_memory_stays_bounded_while_a_task_prints_200_mb(running: Cluster) -> None:
    delegate = await running.start_delegate("loud")
    # 200 MiB in lines of 8 KiB, written as fast as Python can.
    script = (
        "import sys\n"
        "line = b'x' * 8191 + b'\\n'\n"
        "write = sys.stdout.buffer.write\n"
        "for _ in range(200 * 1024 // 8):\n"
        "    write(line)\n"
    )
    process = psutil.Process(delegate.pid)
    start_rss = process.memory_info().rss
    peak = start_rss
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)

    sampler = asyncio.create_task(sample())
    submitted = await running.tether(
        "task", "submit", "--timeout", "300", "--", "python3", "-c", script
    )
    task_id = submitted.last_line
    finished = await delegate.wait_event("task finished", task_id=task_id, timeout=240)
    done.set()
    await sampler

    print(f"delegate RSS: start {start_rss / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB")
    assert finished["status"] == "succeeded"
    assert finished["delivery"] == "delivered"
    assert peak < RSS_LIMIT, f"peak RSS {peak / MIB:.1f} MiB"
