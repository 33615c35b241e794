"""What feeds the systemd watchdog: the manager's sweep loop turning, not a constant True."""

from __future__ import annotations

import time
from typing import cast

from manager.api.context import Context
from manager.server.app import _loops_alive
from shared.limits import Timings


class _Loops:
    def __init__(self, last_sweep: float) -> None:
        self.last_sweep = last_sweep
        self.timings = Timings()


def test_a_sweep_loop_that_turned_lately_feeds_the_watchdog() -> None:
    assert _loops_alive(cast(Context, _Loops(time.monotonic() - 1.0)))


def test_a_stuck_sweep_loop_starves_the_watchdog() -> None:
    assert not _loops_alive(cast(Context, _Loops(time.monotonic() - 31.0)))
