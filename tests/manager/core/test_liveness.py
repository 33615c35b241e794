from __future__ import annotations

from manager.core.liveness import Leases, Liveness

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
