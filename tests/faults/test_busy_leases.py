"""Leases under load: a task that holds its lease is never stopped unless someone asks.

The soak found this at 30 and 50 delegates; here it is on its own, with enough acquires and
heartbeats going on at once (4 delegates of 16 slots, 200 tasks that each run ~1.5 s and
print every 20 ms) that the manager's batched lease renewal often overlaps a heartbeat.
Nobody cancels anything, so every task must succeed.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from manager.schemas.tasks import TaskSubmit
from shared.protocol import ShellPayload
from tests.e2e.harness import Cluster
from tests.faults.support import (
    client,
    known_bug,
    numbered_lines_script,
    token,
    wait_final,
)

DELEGATES = 4
SLOTS = 16
TASKS = 200


# Leases of 6 s rather than the suite's 1.5 s: 64 tasks printing every 20 ms on two cores can
# starve a heartbeat past 1.5 s, and a lease lost that way is a different story (tested in
# tests/faults/test_delegate_crash.py); what this test is after is a cancel nobody asked for.
TIME_SCALE = 0.2


async def test_no_task_is_cancelled_unasked_while_many_run_at_once(running: Cluster) -> None:
    running.time_scale = TIME_SCALE
    await running.restart_manager()
    names = [f"busy-{n}" for n in range(DELEGATES)]
    tokens = [await token(running, name) for name in names]
    await asyncio.gather(
        *(
            running.start_delegate(name, token=tok, extra=("--max-tasks", str(SLOTS)))
            for name, tok in zip(names, tokens, strict=True)
        )
    )
    script = numbered_lines_script(60, 0.02)
    async with client(running) as api:
        ids = [
            (await api.submit_task(TaskSubmit(payload=ShellPayload(script=script)))).id
            for _ in range(TASKS)
        ]
    slots = asyncio.Semaphore(32)

    async def final_state(task_id: str) -> tuple[str, str | None]:
        async with slots:
            task = await wait_final(running, task_id, timeout=120)
            return str(task["state"]), task.get("error")

    finals = await asyncio.gather(*(final_state(t) for t in ids))
    states = Counter(state for state, _ in finals)
    assert sum(states.values()) == TASKS
    errors = Counter(error for state, error in finals if state not in {"succeeded", "cancelled"})
    assert set(states) <= {"succeeded", "cancelled"}, (states, errors)
    known_bug(states["cancelled"] == 0, f"tasks nobody cancelled ended cancelled: {states}")
