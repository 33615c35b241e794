"""The path to the manager stalls: the proxy keeps every connection open but swallows the
bytes (and the FIN) going one or both ways, so nothing closes and nothing errors.

Only the protocol's own liveness can notice: the delegate's heartbeats get no ack for longer
than ``lost_after``, so it drops the stream and reconnects, or falls back to polling. Once
the path carries bytes again, a new task runs.
"""

from __future__ import annotations

import pytest

from tests.e2e.harness import Cluster
from tests.faults.support import token, wait_for
from tests.faults.tcpproxy import Direction, Mode, ProxyStats, TcpProxy


@pytest.mark.parametrize(
    ("direction", "hold_until"),
    [
        (Direction.BOTH, "connecting"),
        (Direction.TO_CLIENT, "connecting"),
        (Direction.BOTH, "polling"),
    ],
    ids=["both-ways", "acks-only", "until-polling"],
)
async def test_a_stalled_stream_is_noticed_and_left_and_tasks_run_after(
    running: Cluster, proxy: TcpProxy, direction: Direction, hold_until: str
) -> None:
    delegate = await running.start_delegate(
        "stuck", url=proxy.url, token=await token(running, "stuck")
    )
    seen = len(delegate.events())
    await proxy.set_mode(Mode.STALL, direction)

    def acks_swallowed(s: ProxyStats) -> bool:
        return s.swallowed[Direction.TO_CLIENT] > 0

    await proxy.wait_until(acks_swallowed, "a heartbeat ack to be swallowed")
    noticed = await wait_for(
        delegate,
        "the missing acks to be noticed",
        lambda e: e.get("event") == "no heartbeat ack; reconnecting",
        after=seen,
    )
    # The delegate leaves the stalled stream on its own (the proxy closes nothing). Held
    # longer, the stall also swallows the handshakes of its new streams, and it polls.
    left = delegate.events().index(noticed)
    await delegate.wait_event("channel mode", mode="connecting", after=left)
    if hold_until == "polling":
        await delegate.wait_event("channel mode", mode="polling", after=left)
    assert proxy.stats.reset == proxy.stats.closed == 0
    restored = len(delegate.events())
    await proxy.set_mode(Mode.PASS)

    # Once bytes flow again it holds the link (on the stream, or by polling) and runs tasks.
    await wait_for(
        delegate,
        "the delegate to hold the link again",
        lambda e: e.get("event") == "channel mode" and e.get("mode") in ("stream", "polling"),
        after=restored if hold_until != "polling" else left,
    )
    res = await running.tether("task", "run", "--", "echo", "after the stall")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == "after the stall"
    ran = await delegate.wait_event("task finished", after=restored)
    assert ran["status"] == "succeeded"
