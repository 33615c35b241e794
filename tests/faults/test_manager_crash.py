"""``kill -9`` of the manager mid-task, and a restart on the same data dir and port.

The task is held at a gate until the manager is dead, so the path under test is always the
same whatever the machine's load: the rest of its log and its result wait in the delegate's
spool while the manager is away, the delegate lists the task as spooled in its heartbeats
(which keeps its lease), and everything lands once, in order, when the manager is back.
Every wait is on an event: a stored line, a process's exit, a delegate's log event. The
manager runs with the production lease and start grace (30 s, 45 s) while the delegate keeps
fast reconnects: a restart on a loaded machine cannot outlast the lease (at the harness's
scale it was 1.5 s, and a loaded machine took longer to start the manager again).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from manager.core.liveness import Liveness
from shared.limits import Timings
from tests.e2e.harness import BIN, Cluster, Proc
from tests.faults.support import log_entries, logged_at, task_view

BEFORE, AFTER = 10, 20


def _gated_script(gate: Path) -> str:
    """Prints ``line-1`` .. ``line-BEFORE``, waits for ``gate`` to exist, prints the rest."""
    return (
        f"for i in $(seq 1 {BEFORE}); do echo line-$i; done;"
        f" while [ ! -e {gate} ]; do sleep 0.02; done;"
        f" for i in $(seq {BEFORE + 1} {BEFORE + AFTER}); do echo line-$i; done"
    )


# Three manager starts and a dozen other processes: on a loaded machine the default
# timeout of a test is too short (every wait inside is on an event, with its own bound).
@pytest.mark.timeout(300)
@pytest.mark.production_leases
async def test_a_task_outlives_a_manager_kill_with_its_log_whole_and_its_result_recorded_once(
    on_each_store: Cluster, tmp_path: Path
) -> None:
    running = on_each_store
    delegate = await running.start_delegate("steady")
    gate = tmp_path / "gate"
    res = await running.tether("task", "submit", "--", "bash", "-c", _gated_script(gate))
    assert res.code == 0, res.stderr
    task_id = res.last_line
    follower = Proc(
        "follow", [str(BIN / "tether"), "task", "logs", task_id, "--follow"], running.cli_env()
    )
    await follower.start()
    try:
        await follower.wait_stdout(f"^line-{BEFORE}$")
    finally:
        await follower.stop()
    assert running.manager is not None
    await running.manager.stop(signal.SIGKILL)

    # The manager is gone: the task finishes now, its last lines and its result spooled.
    gate.touch()
    finished = await delegate.wait_event("task finished", task_id=task_id)
    assert (finished["status"], finished["delivery"]) == ("succeeded", "spooled")
    seen = len(delegate.events())
    await running.start_manager(port=running.port)

    delivered = await delegate.wait_event("spooled result delivered", task_id=task_id, after=seen)
    # Recorded once: the first time the new manager heard of it, as the only attempt.
    assert delivered["recorded"] is True
    task = await task_view(running, task_id)
    assert task["state"] == "succeeded"
    assert task["exit_code"] == 0
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in task["attempts"]] == [
        (1, "steady", "succeeded")
    ]

    lines = await log_entries(running, task_id)
    assert [ln["attempt"] for ln in lines] == [1] * len(lines)
    assert [ln["seq"] for ln in lines] == list(range(len(lines)))
    assert [ln["text"] for ln in lines] == [f"line-{i}" for i in range(1, BEFORE + AFTER + 1)]


async def test_the_delegates_time_to_come_back_runs_from_when_the_manager_listens(
    running: Cluster,
) -> None:
    """No lease is judged before a full start grace from when the manager could be reached.
    Counted from its recovery (before its keys, TLS and listener), a slow start spent it
    before any delegate could connect, and a healthy delegate of the soak lost a lease it
    had no time to list (a manager restart, then judging 1.4 s after the listener opened,
    with a grace of 2.25 s)."""
    manager = await running.restart_manager(signal.SIGKILL)
    listening = await manager.wait_event("manager listening")
    judging = await manager.wait_event("judging leases again")
    t = Timings().scaled(running.time_scale)
    grace = Liveness(
        lost_after=t.lost_after, heartbeat_interval=t.heartbeat_interval, tick=t.sweep_interval
    ).start_grace
    assert logged_at(judging) - logged_at(listening) >= grace, (listening, judging)
