"""Stalls: the manager frozen (SIGSTOP) for longer than a lease, and a delegate frozen.

A frozen manager must change nothing about tasks whose delegate kept running them: it counts
the delegates' heartbeats again before it judges any lease. A frozen delegate, on the other
hand, loses its task within ``lost_after`` of its last heartbeat, and the task runs again on
another delegate. Both are judged on outcomes and on the processes' own events: the
delegate saying its stream stalled (which takes ``lost_after`` without an ack), and the
manager's record of the last heartbeat against the time of the requeue in its own log.
"""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

from tests.e2e.harness import Cluster
from tests.faults.support import (
    first_run_hangs,
    log_entries,
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


# Heartbeat 2 s, lost after 6 s, a sweep every 0.2 s: the bound is measured on the manager's
# own records, and a loaded machine's hiccups stay small beside it.
FROZEN_SCALE = 0.2


def _at(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


async def test_a_frozen_delegate_loses_its_task_within_lost_after_of_its_last_heartbeat(
    on_each_store: Cluster, first_run: Path
) -> None:
    c = on_each_store
    c.time_scale = FROZEN_SCALE
    manager = await c.restart_manager()
    lost_after = 30.0 * FROZEN_SCALE
    interval = 10.0 * FROZEN_SCALE
    # The restarted manager judges no lease before its delegates could come back.
    await manager.wait_event("judging leases again")
    victim = await c.start_delegate("victim", "pool", token=await token(c, "victim"))
    task_id = await _submit(
        c, first_run_hangs(first_run), "--selector", "pool", "--max-attempts", "2"
    )
    await victim.wait_event("task started", task_id=task_id, attempt=1)
    survivor = await c.start_delegate("survivor", "pool", token=await token(c, "survivor"))
    assert victim.proc is not None
    victim.proc.send_signal(signal.SIGSTOP)
    try:
        await survivor.wait_event("task started", task_id=task_id, attempt=2, timeout=60)
        lost = await manager.wait_event("delegate lost", timeout=5)
        requeued = await manager.wait_event("lease lost; task requeued", task_id=task_id, timeout=5)
    finally:
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.send_signal(signal.SIGCONT)

    last_heartbeat = float(lost["last_heartbeat"])
    # Within lost_after of its last heartbeat, never renewed past it; unless the manager
    # itself stalled meanwhile (a starved machine): it then judged again only once it had
    # counted heartbeats, which it says.
    resumed = [
        _at(e)
        for e in manager.events()
        if e.get("event") == "judging leases again" and last_heartbeat < _at(e) <= _at(requeued)
    ]
    due = max([last_heartbeat + lost_after, *resumed])
    waited = _at(requeued) - last_heartbeat
    assert lost_after - interval / 2 <= waited, waited
    # The slack is the requeue's own write and log line on a loaded machine.
    assert _at(requeued) <= due + interval / 4, (waited, resumed)
    task = await wait_final(c, task_id)
    assert task["state"] == "succeeded"
    view = await task_view(c, task_id)
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in view["attempts"]] == [
        (1, "victim", "lost"),
        (2, "survivor", "succeeded"),
    ]
