"""The link between a delegate and the manager is cut (the proxy drops every connection and
refuses new ones, or resets them with an RST) while tasks print, then restored.

What to expect follows from the leases (delegate protocol v1, *Leases*). A running task's
lease is renewed by heartbeats that list it and runs out ``lost_after`` (1.5 s here) after
the last one:

* a cut shorter than that costs nothing: the delegate reconnects, the lines written during
  the cut arrive afterwards, in order, and the task succeeds once;
* a cut longer than that loses the lease: with ``--max-attempts 1`` the task fails as
  ``delegate_lost``, whatever the delegate sends for it afterwards is refused with 409 and
  changes nothing, and the delegate, once back, runs the next task;
* however often the link is reset, the delegate itself survives: a network fault is never a
  reason for it to exit.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from manager.schemas.tasks import TaskSubmit
from shared.protocol import ShellPayload
from tests.e2e.harness import Cluster, Proc
from tests.faults.support import (
    TIMINGS,
    client,
    known_bug,
    log_entries,
    numbered_lines_script,
    task_view,
    token,
    wait_final,
    wait_for,
    wait_for_line,
)
from tests.faults.tcpproxy import Mode, TcpProxy

LINES = 40
# Well inside the lease: the last heartbeat before the cut may be up to one interval old,
# and the first one after it may wait up to one interval of retry backoff.
SHORT_CUT = (TIMINGS.lost_after - 2 * TIMINGS.heartbeat_interval) * 0.6


async def _task_under_way(c: Cluster, proxy: TcpProxy) -> tuple[Proc, str]:
    delegate = await c.start_delegate("edge", url=proxy.url, token=await token(c, "edge"))
    assert proxy.stats.accepted >= 1
    res = await c.tether(
        "task", "submit", "--max-attempts", "1", "--", "bash", "-c",
        numbered_lines_script(LINES, 0.1),
    )  # fmt: skip
    assert res.code == 0, res.stderr
    task_id = res.last_line
    await wait_for_line(c, task_id, "line-5")
    return delegate, task_id


def _texts(lines: list[dict[str, Any]]) -> list[str]:
    return [str(ln["text"]) for ln in lines]


async def test_a_cut_shorter_than_the_lease_loses_no_line_and_runs_the_task_once(
    running: Cluster, proxy: TcpProxy
) -> None:
    delegate, task_id = await _task_under_way(running, proxy)
    seen = len(delegate.events())
    cut_from = time.time()
    await proxy.set_mode(Mode.DROP)
    await asyncio.sleep(SHORT_CUT)  # the fault's length: the test holds the link down
    accepted_during_cut = proxy.stats.accepted
    await proxy.set_mode(Mode.PASS)
    cut_to = time.time()

    done = await delegate.wait_event("task finished", task_id=task_id)
    assert (done["status"], done["recorded"]) == ("succeeded", True)
    # The delegate saw the cut (its stream closed) and came back through the proxy.
    assert [e for e in delegate.events()[seen:] if e.get("event") == "channel mode"]
    assert proxy.stats.accepted > accepted_during_cut

    task = await task_view(running, task_id)
    assert task["state"] == "succeeded"
    assert [(a["attempt"], a["status"]) for a in task["attempts"]] == [(1, "succeeded")]
    lines = await log_entries(running, task_id)
    assert [ln["seq"] for ln in lines] == list(range(LINES))
    assert _texts(lines) == [f"line-{i}" for i in range(1, LINES + 1)]
    written_during_cut = [ln for ln in lines if cut_from < ln["ts"] < cut_to]
    assert written_during_cut, "the cut was too short to catch a line"


async def _cut_past_the_lease(
    c: Cluster, proxy: TcpProxy
) -> tuple[Proc, str, dict[str, Any], list[dict[str, Any]]]:
    """Cut until the manager fails the task; return it and its log as they were then."""
    delegate, task_id = await _task_under_way(c, proxy)
    await proxy.set_mode(Mode.DROP)
    # The cut lasts exactly until the manager gives up on the lease and ends the task.
    task = await wait_final(c, task_id)
    lines = await log_entries(c, task_id)
    seen = len(delegate.events())
    await proxy.set_mode(Mode.PASS)
    # Back on the link, the delegate learns the task is no longer its own and stops it:
    # from a heartbeat ack that lists it to cancel, or a log batch refused as stale.
    await wait_for(
        delegate,
        "the delegate to let go of the lost task",
        lambda e: (
            e.get("task_id") == task_id
            and (
                e.get("event") == "task finished"
                # Refused as stale, sent straight or from the spool the cut filled.
                or str(e.get("event", "")).startswith(
                    ("log batch refused", "spooled log batch refused")
                )
            )
        ),
        after=seen,
    )
    return delegate, task_id, task, lines


async def test_a_cut_longer_than_the_lease_fails_the_task_and_the_delegate_recovers(
    running: Cluster, proxy: TcpProxy
) -> None:
    delegate, task_id, lost, _ = await _cut_past_the_lease(running, proxy)
    assert lost["state"] == "failed"
    assert lost["error"] == "delegate_lost"
    assert [(a["attempt"], a["delegate_name"], a["status"]) for a in lost["attempts"]] == [
        (1, "edge", "lost")
    ]
    # Whatever the delegate reported for the lost attempt changed nothing...
    assert await task_view(running, task_id) == lost
    assert not [
        e
        for e in delegate.events()
        if e.get("event") == "task finished" and e.get("task_id") == task_id and e["recorded"]
    ]
    # ...and the delegate takes the next task.
    res = await running.tether("task", "run", "--", "echo", "next")
    assert (res.code, res.stdout.strip()) == (0, "next")
    assert await delegate.wait_event("task finished", status="succeeded")


async def test_lines_the_lost_attempt_sends_after_a_long_cut_are_refused(
    running: Cluster, proxy: TcpProxy
) -> None:
    _, task_id, _, lines_then = await _cut_past_the_lease(running, proxy)
    lines_now = await log_entries(running, task_id)
    late = _texts(lines_now[len(lines_then) :])
    known_bug(lines_now == lines_then, f"late lines were stored after delegate_lost: {late}")


# Resets of 0.2 s every 0.5 s, with tasks shipping logs through them. Under uvloop the
# delegate died within ~15 cycles on average (18 runs of 18, exit 1 or SIGABRT); 80 cycles
# keep that from passing by luck should it come back.
STORM_CYCLES = 80
STORM_RESET_S = 0.2
STORM_PASS_S = 0.3
STORM_TASKS = 3  # one slot of the four stays free for the task after the storm
FD_REUSE = "is used by transport"


async def test_the_delegate_outlives_a_storm_of_connection_resets(
    running: Cluster, proxy: TcpProxy
) -> None:
    delegate = await running.start_delegate(
        "edge", url=proxy.url, token=await token(running, "edge")
    )
    async with client(running) as api:
        for _ in range(STORM_TASKS):
            await api.submit_task(
                TaskSubmit(payload=ShellPayload(script=numbered_lines_script(2000, 0.02)))
            )
    await delegate.wait_until(
        lambda: sum(e.get("event") == "task started" for e in delegate.events()) == STORM_TASKS,
        "the tasks to start",
    )
    cycles = 0
    assert delegate.proc is not None
    while cycles < STORM_CYCLES and delegate.proc.returncode is None:
        # The storm's shape: the test holds each reset, and each calm, for a set time.
        await proxy.set_mode(Mode.RESET)
        await asyncio.sleep(STORM_RESET_S)
        await proxy.set_mode(Mode.PASS)
        await asyncio.sleep(STORM_PASS_S)
        cycles += 1
    if delegate.proc.returncode is not None:
        code = await delegate.wait_exit()
        errors = [
            str(e.get("error")) for e in delegate.events() if e.get("event") == "channel failed"
        ]
        known_bug(
            code != -signal.SIGABRT and not any(FD_REUSE in err for err in errors),
            f"the delegate exited ({code}) after {cycles} reset cycles: {errors}",
        )
        raise AssertionError(f"the delegate exited ({code})\n{delegate.tail()}")
    # It came through: it holds the link again and takes the next task.
    res = await running.tether("task", "run", "--", "echo", "after the storm")
    assert (res.code, res.stdout.strip()) == (0, "after the storm")
