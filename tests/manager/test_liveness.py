from __future__ import annotations

from manager.liveness import Leases, Liveness

LOST_AFTER = 30.0
LEASE = 30.0


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


# --- leases --------------------------------------------------------------------------------


def test_grant_makes_the_delegate_the_holder() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    assert leases.holder("task_1") == "dlg_a"
    assert leases.held_by("dlg_a") == {"task_1"}
    assert leases.count("dlg_a") == 1


def test_lease_expires_after_its_duration_and_not_before() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    assert leases.expired(100.0 + LEASE) == []
    assert leases.expired(100.0 + LEASE + 0.001) == [("task_1", "dlg_a")]


def test_renew_extends_a_lease_the_delegate_holds() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    assert leases.renew("dlg_a", ["task_1"], 120.0) == []
    assert leases.expired(100.0 + LEASE + 1.0) == []
    assert leases.expired(120.0 + LEASE + 0.001) == [("task_1", "dlg_a")]


def test_renew_does_not_extend_a_lease_held_by_another_delegate() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.renew("dlg_b", ["task_1"], 120.0)
    assert leases.expired(100.0 + LEASE + 0.001) == [("task_1", "dlg_a")]


def test_renew_returns_listed_tasks_the_delegate_does_not_hold() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.grant("task_2", "dlg_b", 100.0)
    strangers = leases.renew("dlg_a", ["task_1", "task_2", "task_gone"], 110.0)
    assert strangers == ["task_2", "task_gone"]


def test_renew_does_not_grant_a_lease_for_a_stranger() -> None:
    leases = Leases(duration=LEASE)
    leases.renew("dlg_a", ["task_1"], 110.0)
    assert leases.holder("task_1") is None
    assert leases.count("dlg_a") == 0


def test_unrenewed_lease_expires_while_a_renewed_one_lives() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.grant("task_2", "dlg_a", 100.0)
    leases.renew("dlg_a", ["task_2"], 120.0)
    assert leases.expired(140.0) == [("task_1", "dlg_a")]


def test_release_drops_the_lease() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.release("task_1")
    assert leases.holder("task_1") is None
    assert leases.held_by("dlg_a") == set()
    assert leases.count("dlg_a") == 0
    assert leases.expired(1e9) == []


def test_release_of_unknown_task_is_harmless() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.release("task_other")
    assert leases.held_by("dlg_a") == {"task_1"}


def test_grant_to_a_new_holder_moves_the_lease() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.grant("task_1", "dlg_b", 150.0)
    assert leases.holder("task_1") == "dlg_b"
    assert leases.held_by("dlg_a") == set()
    assert leases.held_by("dlg_b") == {"task_1"}
    assert leases.expired(150.0 + LEASE + 0.001) == [("task_1", "dlg_b")]


def test_old_holder_cannot_renew_a_moved_lease() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.grant("task_1", "dlg_b", 150.0)
    assert leases.renew("dlg_a", ["task_1"], 160.0) == ["task_1"]


def test_count_and_held_by_reflect_every_lease_of_a_delegate() -> None:
    leases = Leases(duration=LEASE)
    for task_id in ("task_1", "task_2", "task_3"):
        leases.grant(task_id, "dlg_a", 100.0)
    leases.grant("task_4", "dlg_b", 100.0)
    assert leases.count("dlg_a") == 3
    assert leases.held_by("dlg_a") == {"task_1", "task_2", "task_3"}
    assert leases.count("dlg_c") == 0


def test_held_by_returns_a_copy() -> None:
    leases = Leases(duration=LEASE)
    leases.grant("task_1", "dlg_a", 100.0)
    leases.held_by("dlg_a").clear()
    assert leases.count("dlg_a") == 1
