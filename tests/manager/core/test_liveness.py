from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_silence_is_counted_from_the_last_heartbeat_even_after_the_session_was_dropped() -> None:
    live = Liveness(lost_after=LOST_AFTER)
    assert live.silent_for("dlg_a", 100.0) is None
    live.beat("dlg_a", 100.0)
    live.seen("dlg_a", 120.0)
    assert live.silent_for("dlg_a", 131.0) == 31.0
    live.forget("dlg_a")
    assert live.silent_for("dlg_a", 132.0) == 32.0
    live.beat("dlg_a", 140.0)
    assert live.silent_for("dlg_a", 141.0) == 1.0


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
    # Until a renewal is written, each try claims the lease until a lease after the
    # heartbeat, never after the try: it runs out a sweep before lost_after, so the sweep
    # that finds it is within lost_after.
    for now in (105.0, 115.0, 125.0, 128.5):
        (claim,) = live.claims(now)
        assert now + claim.lease_for == pytest.approx(100.0 + LEASE)
    assert live.claims(100.0 + LEASE + 0.5) == []
    ticking(live, 100.0, 131.0)
    assert live.lost(131.0) == ["dlg_a"]


def test_a_heartbeat_renews_once_and_only_a_newer_one_renews_again() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"])
    written = live.claims(100.5)
    live.written(written)
    # The next renewals (every interval) find nothing new: the lease stays where the last
    # heartbeat put it, whatever the delegate's session does meanwhile.
    live.seen("dlg_a", 105.0)
    assert live.claims(110.5) == []
    live.beat("dlg_a", 111.0, running=["t1"])
    (claim,) = live.claims(111.5)
    assert claim.task_id == "t1"
    assert 111.5 + claim.lease_for == pytest.approx(111.0 + LEASE)


def test_a_renewal_that_failed_is_tried_again_from_the_same_heartbeat() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"])
    (first,) = live.claims(100.5)  # the write fails: written() is not called
    (again,) = live.claims(101.5)
    assert again == Claim("t1", "dlg_a", LEASE - 1.5, running=True)
    assert again.beat == first.beat


def test_a_heartbeat_that_came_during_the_write_still_renews() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1"])
    snapshot = live.claims(100.5)
    # Another heartbeat, at the same reading of the clock, lists a task acquired meanwhile.
    live.beat("dlg_a", 100.5, running=["t1", "t2"])
    live.written(snapshot)
    assert [c.task_id for c in live.claims(100.6)] == ["t1", "t2"]


def test_a_task_no_longer_listed_is_no_longer_renewed() -> None:
    live = pace()
    live.beat("dlg_a", 100.0, running=["t1", "t2"])
    live.written(live.claims(100.5))
    live.beat("dlg_a", 110.0, running=["t2"])
    assert [c.task_id for c in live.claims(110.5)] == ["t2"]
    assert not live.vouches("dlg_a", "t1", 110.5)


def test_calls_without_heartbeats_keep_the_session_and_lose_the_lease_in_time() -> None:
    """A delegate whose heartbeat loop froze while other calls (log batches, polls) go on:
    its session stays, but its lease runs out a sweep before lost_after of the last
    heartbeat, and the sweep that finds it comes within lost_after."""
    live = pace()
    ticking(live, 0.0, 100.0)
    live.beat("dlg_a", 100.0, running=["t1"])
    expiry = None
    now = 100.0
    while now <= 140.0:
        live.tick(now)
        live.seen("dlg_a", now)
        for claim in live.claims(now):
            expiry = now + claim.lease_for
        live.written(live.claims(now))
        if expiry is not None and now > expiry:
            break
        now += TICK
    assert expiry == pytest.approx(100.0 + LEASE)
    assert now - 100.0 <= LOST_AFTER
    assert live.lost(now) == []
    assert not live.vouches("dlg_a", "t1", now)


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


# --- the rule as a property ------------------------------------------------------------------

_EVENT = st.tuples(
    st.sampled_from(["beat", "call", "renewed", "renewal failed"]),
    st.floats(min_value=0.0, max_value=12.0),
    st.frozensets(st.sampled_from(["t1", "t2", "t3"])),
)


@given(st.lists(_EVENT, max_size=40))
def test_no_lease_runs_past_a_lease_after_the_last_heartbeat_that_listed_it(
    events: list[tuple[str, float, frozenset[str]]],
) -> None:
    """Whatever mix of heartbeats, other calls and renewals (written or failed), a lease
    written to the store runs out at most a lease after the last heartbeat that listed its
    task; and once the heartbeats stop, at most one renewal follows, from the last one."""
    live = pace()
    now = 0.0
    listed: dict[str, float] = {}
    until: dict[str, float] = {}

    def renew(at: float, write: bool) -> list[Claim]:
        claims = live.claims(at)
        if write:
            for c in claims:
                until[c.task_id] = at + c.lease_for
            live.written(claims)
        return claims

    for kind, dt, tasks in events:
        now += dt
        if kind == "beat":
            live.beat("dlg_a", now, running=sorted(tasks))
            listed.update(dict.fromkeys(tasks, now))
        elif kind == "call":
            live.seen("dlg_a", now)
        else:
            renew(now, write=kind == "renewed")
        for task_id, at in until.items():
            assert at <= listed[task_id] + LEASE + 1e-9
    # The heartbeats stop; other calls and renewals go on every second.
    renew(now + 0.5, write=True)
    before = dict(until)
    for step in range(1, 40):
        live.seen("dlg_a", now + step)
        assert renew(now + step, write=True) == []
    assert until == before
