"""Stalls: the manager frozen (SIGSTOP) for longer than a lease, and a delegate frozen.

A frozen manager must change nothing about tasks whose delegate kept running them: it counts
the delegates' heartbeats again before it judges any lease. A frozen delegate, on the other
hand, loses its task within ``lost_after`` of its last heartbeat, and the task runs again on
another delegate, at the production timings. Both are judged on outcomes and on the
processes' own events: the delegate saying its stream stalled (which takes ``lost_after``
without an ack), and the manager's record, at its decision, of how long the holder had been
silent and how long since its sweep last looked.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from manager.core.liveness import Liveness
from shared.limits import Timings
from tests.e2e.harness import Cluster
from tests.faults.support import (
    client,
    first_run_hangs,
    log_entries,
    logged_at,
    task_view,
    token,
    wait_final,
    wait_for_line,
)

LINES = 10


def _gated(gate: Path) -> str:
    """Prints ``line-1`` .. ``line-LINES``, waits quietly for ``gate``, prints as many more."""
    return (
        f"for i in $(seq 1 {LINES}); do echo line-$i; done;"
        f" while [ ! -e {gate} ]; do sleep 0.02; done;"
        f" for i in $(seq {LINES + 1} {2 * LINES}); do echo line-$i; done"
    )


async def _submit(c: Cluster, script: str, *args: str) -> str:
    res = await c.tether("task", "submit", *args, "--", "bash", "-c", script)
    assert res.code == 0, res.stderr
    return res.last_line


async def test_a_manager_frozen_longer_than_the_lease_changes_nothing_for_running_tasks(
    on_each_store: Cluster, tmp_path: Path
) -> None:
    c = on_each_store
    delegate = await c.start_delegate("steady", extra=("--max-tasks", "4"))
    # One task ends while the manager is frozen (its last lines and result wait for it), the
    # other only after; one may run again, the other may not: neither must.
    during, after = tmp_path / "during", tmp_path / "after"
    ending = await _submit(c, _gated(during), "--max-attempts", "1")
    going_on = await _submit(c, _gated(after), "--max-attempts", "2")
    for task_id in (ending, going_on):
        await wait_for_line(c, task_id, f"line-{LINES}")
    manager = c.manager
    assert manager is not None
    assert manager.proc is not None
    seen = len(delegate.events())

    manager.proc.send_signal(signal.SIGSTOP)
    try:
        during.touch()
        # The delegate's own witness that the freeze outlasted a lease: no ack for lost_after.
        await delegate.wait_event("no heartbeat ack; reconnecting", after=seen)
    finally:
        manager.proc.send_signal(signal.SIGCONT)
    stalled = await manager.wait_event(
        "manager stalled; judging no lease until heartbeats are counted"
    )
    after.touch()

    for task_id in (ending, going_on):
        task = await wait_final(c, task_id)
        assert (task["state"], task["exit_code"]) == ("succeeded", 0), task
        view = await task_view(c, task_id)
        assert [(a["attempt"], a["delegate_name"], a["status"]) for a in view["attempts"]] == [
            (1, "steady", "succeeded")
        ]
        lines = await log_entries(c, task_id)
        assert [ln["seq"] for ln in lines] == list(range(2 * LINES))
        assert [ln["text"] for ln in lines] == [f"line-{i}" for i in range(1, 2 * LINES + 1)]
    assert stalled["stalled_s"] > 0
    assert not [e for e in manager.events() if str(e.get("event", "")).startswith("lease lost")]


# The production timings, which the frozen delegate is judged at: heartbeats every 10 s,
# lost after 30 s, a sweep every second, a lease of lost_after less a sweep (29 s) from the
# heartbeat that listed the task, 45 s of grace after the manager's start.
PRODUCTION = Timings()
LEASE = PRODUCTION.lost_after - PRODUCTION.sweep_interval
START_GRACE = Liveness(
    lost_after=PRODUCTION.lost_after,
    heartbeat_interval=PRODUCTION.heartbeat_interval,
    tick=PRODUCTION.sweep_interval,
).start_grace


async def _heartbeat_after(c: Cluster, name: str, at: float) -> float:
    """Waits for the manager to hear a heartbeat from ``name`` at ``at`` (wall) or later;
    returns when it heard it. Read from the API: the delegates' logs do not say."""
    async with client(c) as api:
        for _ in range(int(3 * PRODUCTION.heartbeat_interval / 0.2)):
            (view,) = [d for d in await api.list_delegates() if d.name == name]
            if view.last_heartbeat is not None and view.last_heartbeat >= at:
                return view.last_heartbeat
            await asyncio.sleep(0.2)
    raise AssertionError(f"no heartbeat from {name} after {at}")


# At the production timings the start grace alone is 45 s: the default timeout of a test is
# too short on a loaded machine.
@pytest.mark.production_leases
@pytest.mark.timeout(300)
async def test_a_frozen_delegate_loses_its_task_within_lost_after_of_its_last_heartbeat(
    on_each_store: Cluster, first_run: Path
) -> None:
    c = on_each_store
    manager = c.manager
    assert manager is not None
    # The manager's start (before it said where it listens) is behind this.
    up = time.time()
    victim = await c.start_delegate("victim", "pool", token=await token(c, "victim"))
    task_id = await _submit(
        c, first_run_hangs(first_run), "--selector", "pool", "--max-attempts", "2"
    )
    await victim.wait_event("task started", task_id=task_id, attempt=1)
    survivor = await c.start_delegate("survivor", "pool", token=await token(c, "survivor"))
    # Frozen right after a heartbeat late enough that its lease ends after the manager's
    # start grace: what is measured is the lease, not the grace.
    await _heartbeat_after(c, "victim", up + START_GRACE - LEASE + 3.0)
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        rerun = await survivor.wait_event("task started", task_id=task_id, attempt=2, timeout=90)
        requeued = await manager.wait_event("lease lost; task requeued", task_id=task_id)
        lost = await manager.wait_event("delegate lost", timeout=PRODUCTION.heartbeat_interval)
    finally:
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.send_signal(signal.SIGCONT)

    # On the manager's own monotonic clock, at its decision: silent for a lease at least (it
    # was never cut short).
    silent = float(requeued["silent_s"])
    assert silent >= LEASE - 0.05, requeued
    judging = [logged_at(e) for e in manager.events() if e.get("event") == "judging leases again"]
    stalled = [e for e in manager.events() if str(e.get("event", "")).startswith("manager stalled")]
    last_heartbeat = float(lost["last_heartbeat"])
    if not stalled:
        # The grace after the start was over before the lease ran out: the lease was
        # measured, not the grace (only a stall of the manager's own, which it logs, could
        # have moved the grace past it).
        assert judging
        assert judging[0] < last_heartbeat + LEASE, (judging, last_heartbeat)
        assert "since_last_look_s" in requeued, requeued
    # At most a lease plus the time since the sweep before looked (never renewed past the
    # last heartbeat), however late that sweep came. The allowance is PostgreSQL's: its
    # renewal counts the lease from when the statement ran, milliseconds after it was
    # reckoned.
    if "since_last_look_s" in requeued:
        since_look = float(requeued["since_last_look_s"])
        assert silent <= LEASE + since_look + PRODUCTION.sweep_interval / 2, requeued
    else:
        since_look = float("inf")  # judged for the first time since the start: the grace
    # The same on the wall clock of the log lines, with the requeue's own write: within
    # lost_after of the last heartbeat, or the sweep came late and the manager says so.
    late = max(0.0, since_look - PRODUCTION.sweep_interval)
    waited = logged_at(requeued) - last_heartbeat
    assert waited <= PRODUCTION.lost_after + late + PRODUCTION.sweep_interval / 2, requeued
    print(
        f"frozen delegate: requeued {logged_at(requeued) - last_heartbeat:.2f} s and rerun"
        f" {logged_at(rerun) - last_heartbeat:.2f} s after its last heartbeat (silent_s {silent},"
        f" since_last_look_s {since_look})"
    )
    task = await wait_final(c, task_id)
    assert task["state"] == "succeeded"
    view = await task_view(c, task_id)
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in view["attempts"]] == [
        (1, "victim", "lost"),
        (2, "survivor", "succeeded"),
    ]
