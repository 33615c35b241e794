from __future__ import annotations

from typing import Any

from manager.core.assign import Candidate, choose, eligible
from manager.records import DelegateRecord
from manager.tasks.hub import Hub


def cand(delegate_id: str = "dlg_a", **overrides: Any) -> Candidate:
    fields: dict[str, Any] = {
        "delegate_id": delegate_id,
        "selectors": frozenset({"linux", "eu"}),
        "task_types": frozenset({"shell", "http"}),
        "capacity": 4,
        "running": 0,
    }
    fields.update(overrides)
    return Candidate(**fields)


def delegate(name: str, selectors: tuple[str, ...] = ()) -> DelegateRecord:
    return DelegateRecord(
        id=f"dlg_{name}",
        name=name,
        token_id="tok_1",
        hostname=f"{name}.internal",
        version="0.1.0",
        protocol_version=1,
        selectors=selectors,
        task_types=("shell",),
        capacity=2,
        public_key="k" * 44,
        created_at=0.0,
        last_seen=0.0,
    )


# --- eligibility ---------------------------------------------------------------------------


def test_candidate_with_all_selectors_is_eligible() -> None:
    assert eligible(["linux", "eu"], "shell", cand())


def test_task_without_selectors_fits_any_delegate() -> None:
    assert eligible([], "shell", cand())


def test_one_missing_selector_excludes_the_candidate() -> None:
    assert not eligible(["linux", "us"], "shell", cand())


def test_candidate_selectors_may_be_a_superset() -> None:
    assert eligible(["eu"], "shell", cand(selectors=frozenset({"eu", "linux", "gpu"})))


def test_unsupported_task_type_excludes_the_candidate() -> None:
    assert not eligible([], "capability", cand())


def test_candidate_without_free_slots_is_excluded() -> None:
    assert not eligible([], "shell", cand(capacity=2, running=2))


def test_overcommitted_candidate_has_no_free_slots() -> None:
    assert cand(capacity=2, running=3).free_slots == 0


def test_draining_candidate_is_excluded() -> None:
    assert not eligible([], "shell", cand(draining=True))


def test_hub_candidates_count_the_delegate_name_as_a_selector() -> None:
    hub = Hub(lost_after=30.0, clock=lambda: 0.0)
    hub.session(delegate("build-01", selectors=("linux",)))
    hub.session(delegate("build-02", selectors=("linux",)))
    assert choose(["build-02"], "shell", hub.candidates(), limit=None) == ["dlg_build-02"]


def test_hub_candidates_keep_the_configured_selectors() -> None:
    hub = Hub(lost_after=30.0, clock=lambda: 0.0)
    hub.session(delegate("build-01", selectors=("linux", "eu")))
    (only,) = hub.candidates()
    # Its name and its id count too, so a task can ask for exactly this delegate.
    assert only.selectors == frozenset({"linux", "eu", "build-01", only.delegate_id})


# --- choice --------------------------------------------------------------------------------


def test_choose_orders_least_loaded_first() -> None:
    cands = [
        cand("dlg_busy", capacity=4, running=3),
        cand("dlg_idle", capacity=4, running=0),
        cand("dlg_half", capacity=4, running=2),
    ]
    assert choose([], "shell", cands, limit=None) == ["dlg_idle", "dlg_half", "dlg_busy"]


def test_choose_compares_load_relative_to_capacity() -> None:
    cands = [cand("dlg_small", capacity=2, running=1), cand("dlg_big", capacity=10, running=2)]
    assert choose([], "shell", cands, limit=None) == ["dlg_big", "dlg_small"]


def test_choose_breaks_equal_load_by_more_free_slots() -> None:
    cands = [cand("dlg_small", capacity=2, running=0), cand("dlg_big", capacity=8, running=0)]
    assert choose([], "shell", cands, limit=None) == ["dlg_big", "dlg_small"]


def test_choose_leaves_out_ineligible_candidates() -> None:
    cands = [
        cand("dlg_ok"),
        cand("dlg_full", running=4),
        cand("dlg_draining", draining=True),
        cand("dlg_wrong_type", task_types=frozenset({"http"})),
        cand("dlg_wrong_selectors", selectors=frozenset({"us"})),
    ]
    assert choose(["eu"], "shell", cands, limit=None) == ["dlg_ok"]


def test_choose_returns_at_most_limit() -> None:
    cands = [cand(f"dlg_{i}", running=i) for i in range(4)]
    assert choose([], "shell", cands, limit=2) == ["dlg_0", "dlg_1"]


def test_choose_without_eligible_candidates_is_empty() -> None:
    assert choose(["gpu"], "shell", [cand()], limit=2) == []
