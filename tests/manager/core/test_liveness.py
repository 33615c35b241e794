from __future__ import annotations

import pytest

from manager.core.liveness import Claim, Leases, Liveness, Renewals

LOST_AFTER = 30.0
INTERVAL = 10.0
TICK = 1.0
# A heartbeat vouches for a lease a sweep short of lost_after: the sweep that finds the
# lease ran out then comes within lost_after of the heartbeat.
LEASE = LOST_AFTER - TICK


def pace() -> Liveness:
    """Production timings: heartbeats every 10 s, lost after 30 s, a sweep every second."""
    return Liveness(lost_after=LOST_AFTER, heartbeat_interval=INTERVAL, tick=TICK)


def ticking(live: Liveness, start: float, end: float) -> None:
    """The sweep loop turning normally from ``start`` to ``end``."""
    t = start
    while t <= end:
        live.tick(t)
        t += TICK


# --- liveness ------------------------------------------------------------------------------


def test_delegate_silent_longer_than_lost_after_is_lost() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    live.seen("dlg_a", 100.0)
    assert live.lost(100.0 + LOST_AFTER + 0.001) == ["dlg_a"]


def test_delegate_silent_exactly_lost_after_is_not_lost() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    live.seen("dlg_a", 100.0)
    assert live.lost(100.0 + LOST_AFTER) == []


def test_heartbeat_resets_the_silence() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    live.seen("dlg_a", 100.0)
    live.seen("dlg_a", 125.0)
    assert live.lost(100.0 + LOST_AFTER + 1.0) == []


def test_only_the_silent_delegate_is_lost() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    live.seen("dlg_a", 100.0)
    live.seen("dlg_b", 120.0)
    assert live.lost(140.0) == ["dlg_a"]


def test_forgotten_delegate_is_never_lost() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    live.seen("dlg_a", 100.0)
    live.forget("dlg_a")
    assert live.lost(1e9) == []
    assert live.last_seen("dlg_a") is None


def test_last_seen_is_the_latest_time_passed() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    live.seen("dlg_a", 100.0)
    live.seen("dlg_a", 107.5)
    assert live.last_seen("dlg_a") == 107.5


# --- heartbeat evidence for leases --------------------------------------------------------


def test_a_heartbeat_vouches_for_what_it_lists_for_a_lease_and_no_longer() -> None:
    live = pace()
    assert live.lease == LEASE
    live.beat("dlg_a", 100.0, running=["t1"])
    assert live.vouches("dlg_a", "t1", 100.0 + LEASE)
    assert not live.vouches("dlg_a", "t1", 100.0 + LEASE + 0.001)
    assert not live.vouches("dlg_a", "t2", 100.0)
    assert not live.vouches("dlg_b", "t1", 100.0)


def test_a_frozen_delegate_loses_its_leases_within_lost_after_of_its_last_heartbeat() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"])
    # Renewals every interval after the last heartbeat never push the lease past it: it
    # runs out a sweep before lost_after, so the sweep that finds it is within lost_after.
    for now in (105.0, 115.0, 125.0, 128.5):
        (claim,) = live.claims(now)
        assert now + claim.lease_for == pytest.approx(100.0 + LEASE)
    assert live.claims(100.0 + LEASE + 0.5) == []
    ticking(live, 100.0, 131.0)
    assert live.lost(131.0) == ["dlg_a"]


def test_a_lease_granted_at_an_acquire_runs_from_the_last_heartbeat() -> None:
    live = pace()
    assert live.lease_left("dlg_a", 100.0) == LEASE  # no heartbeat yet: a full lease
    live.beat("dlg_a", 100.0, running=[])
    assert live.lease_left("dlg_a", 108.0) == LEASE - 8.0
    assert live.lease_left("dlg_a", 100.0 + LEASE + 5) == 0.0


def test_any_call_keeps_a_session_but_only_a_heartbeat_vouches_for_a_lease() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"])
    live.seen("dlg_a", 125.0)  # a log batch, say: the delegate lives
    ticking(live, 100.0, 135.0)
    assert live.lost(135.0) == []
    assert not live.vouches("dlg_a", "t1", 135.0)
    assert live.claims(135.0) == []


def test_a_task_waiting_in_the_spool_keeps_its_lease() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"])
    # t1 ended during an outage; its result waits in the spool, listed as such.
    live.beat("dlg_a", 110.0, running=[], spooled=["t1"])
    assert live.vouches("dlg_a", "t1", 110.0 + LEASE)
    assert live.claims(115.0) == [Claim("t1", "dlg_a", LEASE - 5.0, running=False)]


def test_a_task_listed_both_ways_is_claimed_once_as_running() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"], spooled=["t1", "t2"])
    assert [(c.task_id, c.running) for c in live.claims(100.0)] == [("t1", True), ("t2", False)]


# --- stalls: nothing judged until heartbeats are counted -----------------------------------


def test_a_stall_judges_nothing_until_fresh_heartbeats_were_counted() -> None:
    live = pace()
    ticking(live, 0.0, 100.0)
    live.beat("dlg_a", 95.0, running=["t1"])
    # The process is frozen for 60 s: no tick, no heartbeat counted.
    gap = live.tick(160.0)
    assert gap == pytest.approx(60.0)
    assert not live.judging(160.0)
    assert live.lost(160.0) == []
    # The heartbeats sent meanwhile are counted as the loop turns again.
    ticking(live, 161.0, 163.0)
    live.beat("dlg_a", 163.5, running=["t1"])
    ticking(live, 164.0, 160.0 + live.grace + 1)
    assert live.judging(160.0 + live.grace + 1)
    assert live.vouches("dlg_a", "t1", 160.0 + live.grace + 1)
    assert live.lost(160.0 + live.grace + 1) == []


def test_after_a_stall_a_delegate_that_sent_nothing_is_judged_once_the_grace_is_over() -> None:
    live = pace()
    ticking(live, 0.0, 100.0)
    live.beat("dlg_a", 95.0, running=["t1"])
    live.tick(160.0)
    assert live.lost(160.0 + live.grace - 0.5) == []
    ticking(live, 161.0, 160.0 + live.grace + 1)
    assert live.lost(160.0 + live.grace + 1) == ["dlg_a"]


def test_a_freeze_in_the_middle_of_a_pass_judges_nothing_before_the_next_tick() -> None:
    live = pace()
    ticking(live, 0.0, 100.0)
    assert live.judging(100.5)
    # Frozen after the pass's tick: the decisions still to come in that pass wait.
    assert not live.judging(100.0 + live.stall_after + 0.5)
    live.tick(130.0)
    assert not live.judging(130.0)


def test_a_late_tick_within_the_stall_threshold_changes_nothing() -> None:
    live = pace()
    ticking(live, 0.0, 100.0)
    assert live.tick(100.0 + live.stall_after) is None
    assert live.judging(100.0 + live.stall_after)


def test_a_start_gives_delegates_lost_after_and_the_way_back_to_come_back() -> None:
    live = pace()
    assert live.start_grace == LOST_AFTER + live.grace
    live.started(1_000.0)
    end = 1_000.0 + live.start_grace
    ticking(live, 1_001.0, end - 1)
    assert not live.judging(end - 1)
    ticking(live, end, end + 1)
    assert live.judging(end + 1)


def test_after_a_start_the_others_get_lost_after_from_the_first_heartbeat_back() -> None:
    live = pace()
    live.started(1_000.0)
    ticking(live, 1_001.0, 1_020.0)
    live.beat("dlg_first", 1_020.0, running=["t1"])  # a slow way back
    ticking(live, 1_021.0, 1_049.0)
    assert not live.judging(1_049.0)
    ticking(live, 1_050.0, 1_051.0)
    assert live.judging(1_051.0)


def test_after_a_start_a_late_first_heartbeat_waits_at_most_twice_lost_after() -> None:
    live = pace()
    live.started(1_000.0)
    ticking(live, 1_001.0, 1_055.0)
    live.beat("dlg_first", 1_055.0)
    ticking(live, 1_056.0, 1_000.0 + 2 * LOST_AFTER + 1)
    assert live.judging(1_000.0 + 2 * LOST_AFTER + 1)


# --- when renewals are due -----------------------------------------------------------------


def test_renewals_are_due_every_interval_and_at_once_after_a_failure_or_a_hastening() -> None:
    renewals = Renewals(INTERVAL)
    assert renewals.due(0.0)  # the first pass
    renewals.done(0.0)
    assert not renewals.due(9.0)
    assert renewals.due(10.0)
    renewals.done(10.0)
    renewals.failed()
    assert renewals.due(11.0)  # retried at the next pass, not an interval on
    renewals.failed()
    assert renewals.failures == 2
    assert renewals.done(11.0) == 2
    assert renewals.failures == 0
    renewals.hasten()
    assert renewals.due(12.0)


# --- leases --------------------------------------------------------------------------------


def test_grant_makes_the_delegate_the_holder() -> None:
    leases = Leases()
    leases.grant("task_1", "dlg_a")
    assert leases.holder("task_1") == "dlg_a"


def test_release_drops_the_holder() -> None:
    leases = Leases()
    leases.grant("task_1", "dlg_a")
    leases.release("task_1")
    assert leases.holder("task_1") is None
    assert leases.count("dlg_a") == 0


def test_release_of_unknown_task_is_harmless() -> None:
    leases = Leases()
    leases.release("task_nope")
    assert leases.holder("task_nope") is None


def test_grant_to_a_new_holder_moves_the_task() -> None:
    leases = Leases()
    leases.grant("task_1", "dlg_a")
    leases.grant("task_1", "dlg_b")
    assert leases.holder("task_1") == "dlg_b"
    assert leases.held_by("dlg_a") == set()


def test_count_and_held_by_reflect_every_task_of_a_delegate() -> None:
    leases = Leases()
    leases.grant("task_1", "dlg_a")
    leases.grant("task_2", "dlg_a")
    leases.grant("task_3", "dlg_b")
    assert leases.count("dlg_a") == 2
    assert leases.held_by("dlg_a") == {"task_1", "task_2"}


def test_held_by_returns_a_copy() -> None:
    leases = Leases()
    leases.grant("task_1", "dlg_a")
    leases.held_by("dlg_a").add("task_x")
    assert leases.held_by("dlg_a") == {"task_1"}
