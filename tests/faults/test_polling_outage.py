"""A polling delegate after a manager outage: new work is picked up within one long-poll.

The long-poll's retries used to back off like reconnects (up to a minute at the default
timings, 23 s measured), so a delegate that had polled through an outage sat out new work
long after the manager was back. Judged on the manager's own timestamps of the new task.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import pytest

from tests.e2e.harness import Cluster
from tests.e2e.proxy import UpgradeBlockingProxy
from tests.faults.support import wait_final

# Heartbeat 2 s, long-poll 5 s; the old backoff reached 12 s after a few failed polls.
SCALE = 0.2
FAILED_POLLS = 6


@pytest.fixture
async def slow(running: Cluster) -> AsyncIterator[UpgradeBlockingProxy]:
    """The manager at the scale above, behind a proxy that refuses the stream: its
    delegates poll."""
    running.time_scale = SCALE
    await running.restart_manager()
    proxy = UpgradeBlockingProxy(running.url, running.data_dir, running.root)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_a_polling_delegate_picks_up_new_work_within_a_long_poll_of_the_managers_return(
    running: Cluster, slow: UpgradeBlockingProxy
) -> None:
    poll_wait = 25.0 * SCALE
    delegate = await running.start_delegate("poller", url=slow.url, wait_mode="polling")
    assert running.manager is not None
    await running.manager.stop(signal.SIGKILL)
    after = len(delegate.events())
    await delegate.wait_until(
        lambda: (
            sum(e.get("event") == "poll failed" for e in delegate.events()[after:]) >= FAILED_POLLS
        ),
        f"{FAILED_POLLS} failed polls",
        timeout=120,
    )
    await running.start_manager(port=running.port)

    res = await running.tether("task", "submit", "--", "echo", "picked up")
    assert res.code == 0, res.stderr
    task = await wait_final(running, res.last_line)
    assert task["state"] == "succeeded"
    waited = task["started_at"] - task["created_at"]
    assert waited <= poll_wait, waited
