"""``kill -9`` of the manager mid-task, and a restart on the same data dir and port."""

from __future__ import annotations

import signal

from tests.e2e.harness import BIN, Cluster, Proc
from tests.faults.support import (
    log_entries,
    numbered_lines_script,
    task_view,
)

LINES = 30


async def test_a_task_outlives_a_manager_kill_with_its_log_whole_and_its_result_recorded_once(
    running: Cluster,
) -> None:
    delegate = await running.start_delegate("steady")
    res = await running.tether(
        "task", "submit", "--", "bash", "-c", numbered_lines_script(LINES, 0.1)
    )
    assert res.code == 0, res.stderr
    task_id = res.last_line
    # Kill the manager once the first lines are stored, while the task still has ~2.5 s to go.
    follower = Proc(
        "follow", [str(BIN / "tether"), "task", "logs", task_id, "--follow"], running.cli_env()
    )
    await follower.start()
    try:
        await follower.wait_stdout("^line-5$")
    finally:
        await follower.stop()
    await running.restart_manager(signal.SIGKILL)

    finished = await delegate.wait_event("task finished", task_id=task_id)
    # Recorded once: the delegate's report was taken (by the new manager), as one attempt.
    assert (finished["status"], finished["recorded"]) == ("succeeded", True)
    task = await task_view(running, task_id)
    assert task["state"] == "succeeded"
    assert task["exit_code"] == 0
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in task["attempts"]] == [
        (1, "steady", "succeeded")
    ]

    lines = await log_entries(running, task_id)
    assert [ln["attempt"] for ln in lines] == [1] * len(lines)
    assert [ln["seq"] for ln in lines] == list(range(len(lines)))
    assert [ln["text"] for ln in lines] == [f"line-{i}" for i in range(1, LINES + 1)]
