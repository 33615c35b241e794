from __future__ import annotations

import math
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from manager.core.assignment import (
    Action,
    Assigner,
    Phase,
    Push,
    Queued,
    Refuse,
    Requeue,
)
from manager.core.eligibility import DelegateFacts, DelegateScope, Place, TaskFacts

ACK_WITHIN = 5.0


def dlg(name: str, *, selectors: tuple[str, ...] = (), **overrides: Any) -> DelegateFacts:
    fields: dict[str, Any] = {
        "id": f"dlg_{name}",
        "name": name,
        "selectors": frozenset(selectors),
        "task_types": frozenset({"shell"}),
        "scope": DelegateScope(),
    }
    fields.update(overrides)
    return DelegateFacts(**fields)


def task(
    n: int,
    *,
    selectors: tuple[str, ...] = (),
    place: Place | None = None,
    type: str = "shell",
    attempt: int = 0,
) -> Queued:
    return Queued(f"tsk_{n}", TaskFacts(type, selectors, place), attempt)


def pushes(actions: list[Action]) -> list[Push]:
    return [a for a in actions if isinstance(a, Push)]


def idle(*names: str, capacity: int = 4) -> Assigner:
    a = Assigner(ack_within=ACK_WITHIN)
    for name in names:
        assert a.connected(dlg(name), capacity, f"key_{name}", 0.0) == []
    return a


def queue_all(a: Assigner, count: int, now: float = 0.0) -> list[Push]:
    out: list[Push] = []
    for n in range(count):
        out += pushes(a.queued(task(n), now))
    return out


# --- spread ----------------------------------------------------------------------------------


def test_six_tasks_on_three_idle_delegates_land_two_each() -> None:
    a = idle("a", "b", "c")
    sent = queue_all(a, 6)
    assert len(sent) == 6
    assert Counter(p.delegate_id for p in sent) == {"dlg_a": 2, "dlg_b": 2, "dlg_c": 2}


def test_spread_holds_when_every_assignment_was_acked() -> None:
    a = idle("a", "b", "c")
    for n in range(6):
        (p,) = pushes(a.queued(task(n), 0.0))
        assert a.ack(p.task_id, p.delegate_id, p.attempt, 0.0) == []
    assert [a.load(d) for d in ("dlg_a", "dlg_b", "dlg_c")] == [2, 2, 2]


def test_least_loaded_counts_the_leases_a_delegate_already_holds() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.connected(dlg("a"), 4, "key_a", 0.0, held=["tsk_old1", "tsk_old2"])
    a.connected(dlg("b"), 4, "key_b", 0.0)
    a.connected(dlg("c"), 4, "key_c", 0.0)
    sent = queue_all(a, 4)
    assert Counter(p.delegate_id for p in sent) == {"dlg_b": 2, "dlg_c": 2}
    # Now all hold two: the next goes to a.
    assert pushes(a.queued(task(9), 0.0))[0].delegate_id == "dlg_a"


def test_each_listing_replaces_what_the_delegate_held() -> None:
    """A poller lists its running tasks with every poll; a thief's made-up ids, new each
    time, must not pile up as held (and a task no longer listed frees its slot)."""
    a = Assigner(ack_within=ACK_WITHIN)
    for n in range(100):
        a.connected(dlg("a"), 2, "key_a", float(n), held=[f"tsk_made_up_{n}"])
    assert a.load("dlg_a") == 1
    a.connected(dlg("a"), 2, "key_a", 100.0, held=[])
    assert a.load("dlg_a") == 0
    (p,) = pushes(a.queued(task(1), 101.0))
    assert p.delegate_id == "dlg_a"


def test_a_held_lease_that_ends_frees_its_slot() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.connected(dlg("a"), 1, "key_a", 0.0, held=["tsk_old"])
    assert a.queued(task(1), 0.0) == []
    (p,) = pushes(a.result("tsk_old", "dlg_a", 3, 1.0))
    assert (p.task_id, p.delegate_id) == ("tsk_1", "dlg_a")


def test_least_loaded_is_relative_to_capacity() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.connected(dlg("small"), 1, "k1", 0.0)
    a.connected(dlg("big"), 8, "k2", 0.0)
    sent = queue_all(a, 5)
    assert Counter(p.delegate_id for p in sent) == {"dlg_big": 4, "dlg_small": 1}


# --- eligibility -----------------------------------------------------------------------------


def test_a_delegate_without_the_selectors_never_gets_the_task() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.connected(dlg("a"), 4, "k", 0.0)
    a.connected(dlg("gpu", selectors=("gpu",)), 4, "k", 0.0)
    sent: list[Push] = []
    for n in range(3):
        sent += pushes(a.queued(task(n, selectors=("gpu",)), 0.0))
    assert {p.delegate_id for p in sent} == {"dlg_gpu"}
    assert pushes(a.queued(task(9, type="capability"), 0.0)) == []
    assert a.queue() == ["tsk_9"]


def test_a_task_naming_a_delegate_goes_only_to_it() -> None:
    a = idle("a", "b", "c")
    sent = [pushes(a.queued(task(n, selectors=("c",)), 0.0))[0] for n in range(3)]
    assert {p.delegate_id for p in sent} == {"dlg_c"}


def test_a_draining_delegate_gets_no_push_until_it_stops_draining() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.connected(dlg("a", draining=True), 4, "k", 0.0)
    a.connected(dlg("b"), 4, "k", 0.0)
    assert a.drain("dlg_b", True, 0.0) == []
    assert queue_all(a, 3) == []
    sent = pushes(a.drain("dlg_a", False, 1.0))
    assert [(p.task_id, p.delegate_id) for p in sent] == [
        ("tsk_0", "dlg_a"),
        ("tsk_1", "dlg_a"),
        ("tsk_2", "dlg_a"),
    ]


def test_a_delegate_whose_scope_does_not_cover_the_place_never_gets_it() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.connected(dlg("staging", scope=DelegateScope(envs=frozenset({"env_stg"}))), 4, "k", 0.0)
    a.connected(dlg("prod", scope=DelegateScope(apps=frozenset({"app_1"}))), 4, "k", 0.0)
    prod = Place("app_1", "env_prd", "production", dedicated=True)
    sent: list[Push] = []
    for n in range(4):
        sent += pushes(a.queued(task(n, place=prod), 0.0))
    assert {p.delegate_id for p in sent} == {"dlg_prod"}
    # Outside any application: neither narrowed token takes it.
    assert a.queued(task(9), 0.0) == []


# --- decline -----------------------------------------------------------------------------


def test_a_declined_task_goes_to_the_next_delegate_with_a_new_attempt() -> None:
    a = idle("a", "b")
    (first,) = pushes(a.queued(task(1), 0.0))
    assert (first.delegate_id, first.attempt) == ("dlg_a", 1)
    out = a.decline("tsk_1", "dlg_a", 1, 0.5)
    assert out == [
        Requeue("tsk_1", "dlg_a", 1, "declined"),
        Push("tsk_1", "dlg_b", 2, "key_b"),
    ]
    assert a.holder("tsk_1") == "dlg_b"


def test_a_task_declined_by_everyone_is_not_offered_back_this_round() -> None:
    a = idle("a", "b")
    (p,) = pushes(a.queued(task(1), 0.0))
    (q,) = pushes(a.decline(p.task_id, p.delegate_id, p.attempt, 0.0))
    assert pushes(a.decline(q.task_id, q.delegate_id, q.attempt, 0.0)) == []
    assert a.phase("tsk_1") is Phase.QUEUED
    # Other tasks still go to them.
    assert len(queue_all(a, 1)) == 1
    # A new round for a: its capacity reported again.
    (again,) = pushes(a.capacity("dlg_a", 4, 1.0))
    assert (again.task_id, again.delegate_id, again.attempt) == ("tsk_1", "dlg_a", 3)


def test_a_delegate_declining_as_full_gets_nothing_until_a_slot_frees() -> None:
    a = idle("a", capacity=4)
    (p,) = pushes(a.queued(task(1), 0.0))
    assert a.ack(p.task_id, "dlg_a", 1, 0.0) == []
    (q,) = pushes(a.queued(task(2), 0.0))
    assert pushes(a.decline(q.task_id, "dlg_a", q.attempt, 0.0, full=True)) == []
    assert a.queued(task(3), 0.0) == []
    sent = pushes(a.result("tsk_1", "dlg_a", 1, 1.0))
    assert [(s.task_id, s.attempt) for s in sent] == [("tsk_2", 2), ("tsk_3", 1)]


def test_a_stale_decline_changes_nothing() -> None:
    a = idle("a", "b")
    (p,) = pushes(a.queued(task(1), 0.0))
    a.decline(p.task_id, p.delegate_id, p.attempt, 0.0)
    assert a.decline(p.task_id, p.delegate_id, p.attempt, 0.1) == []
    assert (a.holder("tsk_1"), a.attempt("tsk_1")) == ("dlg_b", 2)


# --- a stream lost after the push, before the ack ------------------------------------------------


def test_same_delegate_back_with_the_same_key_is_pushed_the_same_attempt() -> None:
    a = idle("a", "b")
    (p,) = pushes(a.queued(task(1), 0.0))
    assert a.stream_lost("dlg_a", 1.0) == []
    assert a.phase("tsk_1") is Phase.UNANSWERED
    # While a is away the task is not handed to b.
    assert a.tick(1.0 + ACK_WITHIN - 0.01) == []
    out = a.connected(dlg("a"), 4, "key_a", 2.0)
    assert out == [Push("tsk_1", "dlg_a", p.attempt, "key_a")]
    assert a.phase("tsk_1") is Phase.ASSIGNED
    assert a.ack("tsk_1", "dlg_a", p.attempt, 2.1) == []
    assert a.phase("tsk_1") is Phase.ACKED


def test_a_verdict_on_a_push_does_not_take_back_the_same_claim_pushed_again() -> None:
    # A long-poll ended with its claim still being written; the poller's next poll had the
    # same claim pushed again. The first push's "nobody got it" is about the first push only.
    a = idle("a", "b")
    (first,) = pushes(a.queued(task(1), 0.0))
    a.stream_lost("dlg_a", 1.0)
    (again,) = pushes(a.connected(dlg("a"), 4, "key_a", 2.0))
    assert again == first
    assert again.push != first.push
    assert not a.current(first)
    assert a.current(again)
    assert a.decline("tsk_1", "dlg_a", first.attempt, 2.1, passed=False, push=first.push) == []
    assert (a.holder("tsk_1"), a.phase("tsk_1")) == ("dlg_a", Phase.ASSIGNED)
    # The later push's own verdict still counts.
    out = a.decline("tsk_1", "dlg_a", again.attempt, 2.2, passed=False, push=again.push)
    assert [type(x) for x in out] == [Requeue, Push]
    assert not a.current(again)


def test_back_listing_the_task_as_running_means_only_the_ack_was_lost() -> None:
    a = idle("a")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    a.stream_lost("dlg_a", 1.0)
    assert a.connected(dlg("a"), 4, "key_a", 2.0, held=["tsk_1"]) == []
    assert a.phase("tsk_1") is Phase.ACKED
    assert a.load("dlg_a") == 1


def test_back_with_the_result_spooled_means_it_ran_and_is_not_pushed_again() -> None:
    a = idle("a")
    pushes(a.queued(task(1), 0.0))
    a.stream_lost("dlg_a", 1.0)
    assert a.connected(dlg("a"), 4, "key_a", 2.0, spooled=["tsk_1"]) == []
    assert a.phase("tsk_1") is Phase.ACKED


# --- claims from before a restart (adopt) -------------------------------------------------------


def adopted(attempt: int = 3) -> Assigner:
    """A new process: the store holds tsk_1 at ``attempt`` for a's process key_a."""
    a = Assigner(ack_within=ACK_WITHIN)
    a.adopt(task(1, attempt=attempt), "dlg_a", "key_a")
    return a


def test_an_adopted_claim_its_process_never_had_is_pushed_to_it_again_at_the_same_attempt() -> None:
    a = adopted()
    assert a.connected(dlg("b"), 4, "key_b", 0.0) == []  # nobody else is handed it
    assert a.connected(dlg("a"), 4, "key_a", 1.0) == [Push("tsk_1", "dlg_a", 3, "key_a")]
    assert a.ack("tsk_1", "dlg_a", 3, 1.1) == []
    assert a.phase("tsk_1") is Phase.ACKED


def test_an_adopted_claim_its_process_lists_runs_there() -> None:
    for held, spooled in ((["tsk_1"], []), ([], ["tsk_1"])):
        a = adopted()
        assert a.connected(dlg("a"), 1, "key_a", 1.0, held, spooled) == []
        assert a.phase("tsk_1") is Phase.ACKED
        # It holds the slot until its result.
        assert pushes(a.queued(task(2), 1.0)) == []
        assert [p.task_id for p in pushes(a.result("tsk_1", "dlg_a", 3, 2.0))] == ["tsk_2"]


def test_an_adopted_claim_of_a_process_that_is_gone_is_left_to_its_lease() -> None:
    # Another process of the delegate: the old one may have run it, so no withdrawal (which
    # would not count the attempt) and no push; the lease runs out and the store requeues it.
    a = adopted()
    assert a.connected(dlg("a"), 4, "key_new", 1.0) == []
    assert a.holder("tsk_1") is None
    assert a.queued(task(1, attempt=3), 5.0) == [Push("tsk_1", "dlg_a", 4, "key_new")]


def churn(a: Assigner, count: int, now: float) -> None:
    """Many short tasks through the delegates up (each push a deadline, which the hand-out
    never reaches): enough that the deadlines' heap is rebuilt."""
    for n in range(count):
        (p,) = pushes(a.queued(task(1000 + n), now))
        a.ack(p.task_id, p.delegate_id, p.attempt, now)
        a.result(p.task_id, p.delegate_id, p.attempt, now)


def test_an_adopted_claim_is_never_due_however_the_deadlines_are_rebuilt() -> None:
    # Found by review: a rebuilt heap read an adopted claim as due at 0, and the tick then
    # withdrew it (not counted) and handed it to another delegate while its holder, not yet
    # judged, might be running it; with the holder away the tick raised KeyError.
    for holder_back in (False, True):
        a = Assigner(ack_within=math.inf)  # as the hand-out makes it
        a.adopt(task(1, attempt=3), "dlg_a", "key_a")
        if holder_back:
            a.connected(dlg("a"), 1, "key_a", 0.0, listing=False)
            a.stream_lost("dlg_a", 0.5)
        a.connected(dlg("b"), 4, "key_b", 0.0)
        churn(a, 200, 1.0)
        assert a.tick(2.0) == []
        assert (a.holder("tsk_1"), a.phase("tsk_1")) == ("dlg_a", Phase.UNANSWERED)


def test_a_claim_made_here_after_an_adopted_one_is_withdrawn_as_any_when_its_process_goes() -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    a.adopt(task(1, attempt=3), "dlg_a", "key_a")
    a.connected(dlg("b"), 4, "key_b", 0.0)
    # a never came back: its lease ran out, the store requeued the task (attempt 3 counted).
    (p,) = pushes(a.queued(task(1, attempt=3), 10.0))
    assert (p.delegate_id, p.attempt) == ("dlg_b", 4)
    # This process's own push, whose frame b's old process never got.
    a.stream_lost("dlg_b", 10.1)
    out = a.connected(dlg("b"), 4, "key_b2", 10.2)
    assert out[0] == Requeue("tsk_1", "dlg_b", 4, "restarted")
    assert pushes(out) == [Push("tsk_1", "dlg_b", 5, "key_b2")]


def test_an_adopted_claim_waits_for_a_connect_that_lists_what_the_delegate_has() -> None:
    a = adopted()
    assert a.connected(dlg("a"), 4, "key_a", 1.0, listing=False) == []
    assert a.phase("tsk_1") is Phase.UNANSWERED
    assert a.connected(dlg("a"), 4, "key_a", 2.0, held=["tsk_1"]) == []
    assert a.phase("tsk_1") is Phase.ACKED


def test_after_the_deadline_the_task_goes_to_another_with_the_next_attempt() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    a.stream_lost("dlg_a", 1.0)
    out = a.tick(1.0 + ACK_WITHIN)
    assert out == [
        Requeue("tsk_1", "dlg_a", 1, "unanswered"),
        Push("tsk_1", "dlg_b", 2, "key_b"),
    ]
    # a comes back late: nothing pushed again, and its ack of attempt 1 is refused.
    assert a.connected(dlg("a"), 4, "key_a", 10.0) == []
    assert a.ack("tsk_1", "dlg_a", 1, 10.0) == [
        Refuse("tsk_1", "dlg_a", 1, "this attempt does not hold the task")
    ]
    assert a.holder("tsk_1") == "dlg_b"


def test_a_restarted_delegate_is_not_handed_its_old_attempt() -> None:
    a = idle("a")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    a.stream_lost("dlg_a", 1.0)
    out = a.connected(dlg("a"), 4, "key_a_new", 2.0)
    # The claim under the old key is withdrawn; the new process gets a new attempt.
    assert out == [
        Requeue("tsk_1", "dlg_a", 1, "restarted"),
        Push("tsk_1", "dlg_a", 2, "key_a_new"),
    ]


def test_a_delegate_back_draining_is_not_pushed_even_its_own_claim() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    a.stream_lost("dlg_a", 1.0)
    out = a.connected(dlg("a", draining=True), 4, "key_a", 2.0)
    assert out == [
        Requeue("tsk_1", "dlg_a", 1, "ineligible"),
        Push("tsk_1", "dlg_b", 2, "key_b"),
    ]


def test_a_silent_delegate_with_its_stream_up_loses_the_task_after_the_deadline() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    assert a.tick(ACK_WITHIN - 0.01) == []
    out = a.tick(ACK_WITHIN)
    assert out == [
        Requeue("tsk_1", "dlg_a", 1, "unanswered"),
        Push("tsk_1", "dlg_b", 2, "key_b"),
    ]


def test_the_slot_of_an_unanswered_claim_goes_to_another_waiting_task() -> None:
    a = idle("a", capacity=1)
    assert [p.task_id for p in queue_all(a, 2)] == ["tsk_0"]
    # tsk_0 is not offered to a again this round; tsk_1, waiting, takes the freed slot.
    assert a.tick(ACK_WITHIN) == [
        Requeue("tsk_0", "dlg_a", 1, "unanswered"),
        Push("tsk_1", "dlg_a", 1, "key_a"),
    ]
    assert a.queue() == ["tsk_0"]


def test_a_session_that_ends_requeues_its_unanswered_assignments_at_once() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    (q,) = pushes(a.queued(task(2), 0.0))
    assert q.delegate_id == "dlg_b"
    a.ack("tsk_2", "dlg_b", 1, 0.0)
    out = a.disconnected("dlg_b", 1.0)
    # The acked one is the lease sweep's; nothing unanswered was on b.
    assert out == []
    assert a.phase("tsk_2") is None
    out = a.disconnected("dlg_a", 1.0)
    assert out == [Requeue("tsk_1", "dlg_a", 1, "disconnected")]
    assert a.queue() == ["tsk_1"]


# --- acks and results --------------------------------------------------------------------


def test_a_duplicate_ack_is_a_noop() -> None:
    a = idle("a")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    assert a.ack("tsk_1", "dlg_a", 1, 0.1) == []
    assert a.ack("tsk_1", "dlg_a", 1, 0.2) == []
    assert (a.phase("tsk_1"), a.load("dlg_a"), a.attempt("tsk_1")) == (Phase.ACKED, 1, 1)


def test_an_ack_from_anyone_but_the_assignee_is_refused() -> None:
    a = idle("a", "b")
    pushes(a.queued(task(1), 0.0))
    assert a.ack("tsk_1", "dlg_b", 1, 0.1) == [
        Refuse("tsk_1", "dlg_b", 1, "this attempt does not hold the task")
    ]
    assert a.phase("tsk_1") is Phase.ASSIGNED


def test_a_result_for_an_older_attempt_is_refused_and_the_current_holds() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    a.tick(ACK_WITHIN)
    assert a.attempt("tsk_1") == 2
    assert a.result("tsk_1", "dlg_a", 1, 6.0) == [
        Refuse("tsk_1", "dlg_a", 1, "this attempt no longer holds it")
    ]
    assert a.phase("tsk_1") is Phase.ASSIGNED
    assert a.result("tsk_1", "dlg_b", 2, 6.0) == []
    assert a.phase("tsk_1") is None
    assert a.load("dlg_b") == 0


def test_a_result_frees_the_slot_for_the_oldest_waiting_task() -> None:
    a = idle("a", capacity=1)
    sent = queue_all(a, 3)
    assert [p.task_id for p in sent] == ["tsk_0"]
    (p,) = pushes(a.result("tsk_0", "dlg_a", 1, 1.0))
    assert p.task_id == "tsk_1"


def test_about_a_task_it_does_not_know_it_says_nothing() -> None:
    a = idle("a")
    assert a.ack("tsk_x", "dlg_a", 1, 0.0) == []
    assert a.result("tsk_x", "dlg_a", 1, 0.0) == []


# --- capacity, and one hand-out at a time ---------------------------------------------------


def test_capacity_is_never_exceeded() -> None:
    a = idle("a", "b", capacity=2)
    sent = queue_all(a, 10)
    assert Counter(p.delegate_id for p in sent) == {"dlg_a": 2, "dlg_b": 2}
    assert len(a.queue()) == 6
    # Lowered capacity: nothing more until the load is under it.
    a.capacity("dlg_a", 1, 1.0)
    (first, *_) = [p for p in sent if p.delegate_id == "dlg_a"]
    assert a.result(first.task_id, "dlg_a", first.attempt, 1.0) == []
    assert a.load("dlg_a") == 1


def test_a_capacity_raised_fills_the_new_slots_oldest_first() -> None:
    a = idle("a", capacity=1)
    queue_all(a, 4)
    sent = pushes(a.capacity("dlg_a", 3, 1.0))
    assert [p.task_id for p in sent] == ["tsk_1", "tsk_2"]


def test_a_queued_notice_older_than_the_claim_is_ignored() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    assert a.queued(task(1, attempt=0), 0.1) == []
    assert (a.holder("tsk_1"), a.attempt("tsk_1")) == ("dlg_a", 1)


def test_a_lost_lease_requeued_by_the_store_is_assigned_again() -> None:
    a = idle("a", "b")
    assert pushes(a.queued(task(1), 0.0))[0].delegate_id == "dlg_a"
    a.ack("tsk_1", "dlg_a", 1, 0.0)
    (q,) = pushes(a.queued(task(1, attempt=1), 40.0))
    assert q.attempt == 2
    assert a.load("dlg_a") + a.load("dlg_b") == 1


def test_a_task_that_is_gone_frees_its_slot() -> None:
    a = idle("a", capacity=1)
    queue_all(a, 2)
    (p,) = pushes(a.gone("tsk_0", 1.0))
    assert p.task_id == "tsk_1"
    assert a.gone("tsk_0", 1.0) == []


# --- property: random event sequences ------------------------------------------------------

NAMES = ("a", "b", "c")
SELECTORS = ("gpu", "eu")

op = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(NAMES), st.sampled_from(("k1", "k2"))),
    st.tuples(st.just("lost"), st.sampled_from(NAMES)),
    st.tuples(st.just("disconnect"), st.sampled_from(NAMES)),
    st.tuples(st.just("capacity"), st.sampled_from(NAMES), st.integers(0, 3)),
    st.tuples(st.just("drain"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(st.just("queue"), st.sampled_from(((), ("gpu",), ("eu",), ("gpu", "eu")))),
    st.tuples(st.just("ack"), st.integers(0, 50)),
    st.tuples(st.just("decline"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("result"), st.integers(0, 50)),
    st.tuples(st.just("lease_lost"), st.integers(0, 50)),
    st.tuples(st.just("gone"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(op, min_size=20, max_size=80),
    st.fixed_dictionaries({n: st.sets(st.sampled_from(SELECTORS)) for n in NAMES}),
)
def test_never_two_holders_at_once_nor_more_than_capacity(
    ops: list[tuple[Any, ...]], offered: dict[str, set[str]]
) -> None:
    a = Assigner(ack_within=ACK_WITHIN)
    now = 0.0
    capacity = dict.fromkeys(NAMES, 2)
    facts = {n: dlg(n, selectors=tuple(sorted(offered[n]))) for n in NAMES}
    up: set[str] = set()
    keys: dict[str, str] = {}
    # What the delegates were handed and not yet taken back: task -> (delegate, attempt).
    out_there: dict[str, tuple[str, int]] = {}
    last_attempt: dict[str, int] = {}
    first_key: dict[str, str] = {}
    sent: list[Push] = []
    task_facts: dict[str, Queued] = {}

    def apply(actions: list[Action]) -> None:
        for act in actions:
            if isinstance(act, Requeue):
                assert out_there.pop(act.task_id) == (act.delegate_id, act.attempt)
            elif isinstance(act, Push):
                name = act.delegate_id.removeprefix("dlg_")
                assert name in up
                assert not facts[name].draining
                # Always under the key of the link it goes over: a restarted process is
                # never handed the attempt its old process was.
                assert act.key == keys[name]
                assert set(task_facts[act.task_id].facts.selectors) <= offered[name]
                held = out_there.get(act.task_id)
                if held is not None:
                    # Only the same attempt again, to its holder.
                    assert held == (act.delegate_id, act.attempt)
                    assert act.key == first_key[act.task_id]
                else:
                    assert act.attempt > last_attempt.get(act.task_id, 0)
                    out_there[act.task_id] = (act.delegate_id, act.attempt)
                    last_attempt[act.task_id] = act.attempt
                    first_key[act.task_id] = act.key
                    mine = sum(1 for d, _ in out_there.values() if d == act.delegate_id)
                    assert mine <= capacity[name]
                sent.append(act)

    def pick(i: int) -> Push | None:
        return sent[i % len(sent)] if sent else None

    for step in ops:
        kind = step[0]
        if kind == "connect":
            name, key = step[1], step[2]
            up.add(name)
            keys[name] = key
            apply(a.connected(facts[name], capacity[name], key, now))
        elif kind == "lost":
            up.discard(step[1])
            apply(a.stream_lost(f"dlg_{step[1]}", now))
        elif kind == "disconnect":
            up.discard(step[1])
            actions = a.disconnected(f"dlg_{step[1]}", now)
            apply(actions)
            # Its leases are the sweep's now: the store takes them back.
            for t, (d, _) in list(out_there.items()):
                if d == f"dlg_{step[1]}":
                    del out_there[t]
        elif kind == "capacity":
            capacity[step[1]] = step[2]
            apply(a.capacity(f"dlg_{step[1]}", step[2], now))
        elif kind == "drain":
            name = step[1]
            facts[name] = dlg(name, selectors=tuple(sorted(offered[name])), draining=step[2])
            apply(a.drain(f"dlg_{name}", step[2], now))
        elif kind == "queue":
            q = task(len(task_facts), selectors=step[1])
            task_facts[q.id] = q
            apply(a.queued(q, now))
        elif kind == "tick":
            now += step[1]
            apply(a.tick(now))
        elif (p := pick(step[1])) is not None:
            current = out_there.get(p.task_id) == (p.delegate_id, p.attempt)
            if kind == "ack":
                actions = a.ack(p.task_id, p.delegate_id, p.attempt, now)
                assert (actions == []) == (current or a.phase(p.task_id) is None)
            elif kind == "decline":
                apply(a.decline(p.task_id, p.delegate_id, p.attempt, now, full=step[2]))
            elif kind == "result":
                actions = a.result(p.task_id, p.delegate_id, p.attempt, now)
                if current:
                    assert actions == [] or not isinstance(actions[0], Refuse)
                    del out_there[p.task_id]
                    apply(actions)
                else:
                    assert all(isinstance(x, Refuse) for x in actions)
            elif kind == "lease_lost" and current and a.phase(p.task_id) is Phase.ACKED:
                del out_there[p.task_id]
                apply(a.queued(Queued(p.task_id, task_facts[p.task_id].facts, p.attempt), now))
            elif kind == "gone":
                out_there.pop(p.task_id, None)
                apply(a.gone(p.task_id, now))
        # No task is dropped on the floor: every one not handed out waits in the queue.
        waiting = {t for t in task_facts if a.phase(t) is Phase.QUEUED}
        assert waiting == set(a.queue())
        # Its own count of each delegate's load is what the delegates were handed.
        for name in NAMES:
            mine = sum(1 for d, _ in out_there.values() if d == f"dlg_{name}")
            assert a.load(f"dlg_{name}") == mine
