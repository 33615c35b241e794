"""``kill -9`` of a delegate mid-task, with a second delegate present.

The killed delegate's lease runs out ``lost_after`` after its last heartbeat. With attempts
left the task goes back to the queue and the other delegate runs attempt 2; without, it
fails as ``delegate_lost``. Either way, what the killed attempt might still send (its
result, a log batch) must be refused with 409 and change nothing: the late messages are
sent here with the killed delegate's own token and key, as it would after coming back.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.protocol import TaskResult
from tests.e2e.harness import Cluster, Proc
from tests.faults.support import (
    Impostor,
    first_run_hangs,
    known_bug,
    log_entries,
    task_view,
    token,
    wait_final,
)

POOL = "pool"


@dataclass
class Crash:
    task_id: str
    victim_token: str
    survivor: Proc


async def _kill_victim_mid_task(c: Cluster, first_run: Path, max_attempts: int) -> Crash:
    victim_token = await token(c, "victim")
    victim = await c.start_delegate("victim", POOL, token=victim_token)
    res = await c.tether(
        "task",
        "submit",
        "--selector",
        POOL,
        "--max-attempts",
        str(max_attempts),
        "--",
        "bash",
        "-c",
        first_run_hangs(first_run, "echo rerun-start; echo rerun-end"),
    )
    assert res.code == 0, res.stderr
    task_id = res.last_line
    await victim.wait_event("task started", task_id=task_id, attempt=1)
    # The second delegate joins only now, so attempt 1 is surely the victim's.
    survivor = await c.start_delegate("survivor", POOL, token=await token(c, "survivor"))
    await victim.stop(signal.SIGKILL)
    return Crash(task_id, victim_token, survivor)


async def _late_attempt_one(c: Cluster, crash: Crash) -> Impostor:
    impostor = await Impostor.register(c, "victim", crash.victim_token, [POOL])
    view = await task_view(c, crash.task_id)
    assert impostor.delegate_id == view["attempts"][0]["delegate_id"]
    return impostor


def _late_result() -> TaskResult:
    return TaskResult(attempt=1, status="succeeded", exit_code=0, outputs={"LATE": "1"})


async def _snapshot(c: Cluster, task_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return await task_view(c, task_id), await log_entries(c, task_id)


async def test_with_attempts_left_the_task_runs_again_on_the_other_delegate(
    running: Cluster, first_run: Path
) -> None:
    crash = await _kill_victim_mid_task(running, first_run, max_attempts=2)
    await crash.survivor.wait_event("task started", task_id=crash.task_id, attempt=2)
    done = await crash.survivor.wait_event("task finished", task_id=crash.task_id)
    assert done["status"] == "succeeded"
    assert done["recorded"] is True

    task = await task_view(running, crash.task_id)
    assert task["state"] == "succeeded"
    assert task["attempt"] == 2
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in task["attempts"]] == [
        (1, "victim", "lost"),
        (2, "survivor", "succeeded"),
    ]
    logs = await log_entries(running, crash.task_id)
    assert [ln["text"] for ln in logs if ln["attempt"] == 2] == ["rerun-start", "rerun-end"]

    # The killed attempt comes back late: its result and a log batch are both fenced out.
    before = await _snapshot(running, crash.task_id)
    impostor = await _late_attempt_one(running, crash)
    status, body = await impostor.post_result(crash.task_id, _late_result())
    assert (status, body["error"]["code"]) == (409, "stale_attempt")
    status, body = await impostor.post_logs(crash.task_id, 1, ["late line"])
    assert (status, body["error"]["code"]) == (409, "stale_attempt")
    assert await _snapshot(running, crash.task_id) == before


async def test_without_attempts_left_the_task_fails_as_delegate_lost(
    running: Cluster, first_run: Path
) -> None:
    crash = await _kill_victim_mid_task(running, first_run, max_attempts=1)
    task = await wait_final(running, crash.task_id)
    assert task["state"] == "failed"
    assert task["error"] == "delegate_lost"
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in task["attempts"]] == [
        (1, "victim", "lost")
    ]
    # The other delegate was there and free, and still did not run it a second time.
    assert not [e for e in crash.survivor.events() if e.get("task_id") == crash.task_id]


async def _lost_for_good(c: Cluster, first_run: Path) -> Crash:
    crash = await _kill_victim_mid_task(c, first_run, max_attempts=1)
    await wait_final(c, crash.task_id)
    return crash


async def test_late_result_of_a_lost_last_attempt_is_refused(
    running: Cluster, first_run: Path
) -> None:
    crash = await _lost_for_good(running, first_run)
    before = await _snapshot(running, crash.task_id)
    impostor = await _late_attempt_one(running, crash)
    status, body = await impostor.post_result(crash.task_id, _late_result())
    assert await _snapshot(running, crash.task_id) == before
    known_bug(status == 409, f"late result answered {status} {body}")


async def test_late_log_batch_of_a_lost_last_attempt_is_refused(
    running: Cluster, first_run: Path
) -> None:
    crash = await _lost_for_good(running, first_run)
    before = await _snapshot(running, crash.task_id)
    impostor = await _late_attempt_one(running, crash)
    status, body = await impostor.post_logs(crash.task_id, 1, ["late line"])
    after = await _snapshot(running, crash.task_id)
    known_bug(status == 409, f"late log batch answered {status} {body}")
    known_bug(after == before, "the late log batch changed the task's log")
