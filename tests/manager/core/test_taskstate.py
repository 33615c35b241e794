from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from manager.core.taskstate import (
    DELEGATE_LOST,
    Decision,
    Verdict,
    on_acquire,
    on_cancel,
    on_lease_lost,
    on_result,
    on_sweep,
    on_timeout,
    on_withdraw,
    timeout_due,
)
from manager.records import LeaseFor, TaskRecord
from shared.protocol import FINAL_STATES, Deployment, TaskResult, TaskState

CREATED = 1_000.0
TIMEOUT = 600.0
QUEUE_TIMEOUT = 300.0
MARGIN = 11.0


def queued(**overrides: Any) -> TaskRecord:
    base = TaskRecord(
        id="task_1",
        type="shell",
        state=TaskState.QUEUED,
        payload={"type": "shell", "script": "true"},
        selectors=(),
        timeout_s=TIMEOUT,
        queue_timeout_s=QUEUE_TIMEOUT,
        max_attempts=2,
        created_at=CREATED,
    )
    return dataclasses.replace(base, **overrides)


def running(**overrides: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "state": TaskState.RUNNING,
        "attempt": 1,
        "delegate_id": "dlg_a",
        "started_at": CREATED + 5.0,
    }
    return queued(**{**fields, **overrides})


def applied(task: TaskRecord, decision: Decision) -> TaskRecord:
    assert decision.verdict is Verdict.APPLY
    return dataclasses.replace(task, **decision.changes)


def result(attempt: int = 1, status: str = "succeeded", **kw: Any) -> TaskResult:
    return TaskResult.model_validate({"attempt": attempt, "status": status, **kw})


# --- acquire -------------------------------------------------------------------------------


def test_acquire_of_queued_task_starts_attempt_one_for_the_caller() -> None:
    task = applied(queued(), on_acquire(queued(), "dlg_a", 1_010.0))
    assert task.state is TaskState.RUNNING
    assert task.attempt == 1
    assert task.delegate_id == "dlg_a"
    assert task.started_at == 1_010.0


def test_acquire_of_requeued_task_bumps_the_attempt_past_the_old_one() -> None:
    requeued = queued(attempt=1)
    assert on_acquire(requeued, "dlg_b", 1_010.0).changes["attempt"] == 2


def test_acquire_clears_a_stale_cancel_request() -> None:
    assert on_acquire(queued(), "dlg_a", 1_010.0).changes["cancel_requested"] is False


def test_acquire_leases_on_the_store_clock_and_keeps_the_key() -> None:
    decision = on_acquire(queued(), "dlg_a", 1_100.0, lease_for=30.0, key="k-12345678")
    assert decision.changes["lease_until"] == LeaseFor(30.0)
    assert decision.changes["acquire_key"] == "k-12345678"


def test_the_holder_asking_again_with_its_key_is_handed_the_same_attempt() -> None:
    task = applied(queued(), on_acquire(queued(), "dlg_a", 1_100.0, key="k-12345678"))
    again = on_acquire(task, "dlg_a", 1_101.0, key="k-12345678")
    assert again.verdict is Verdict.HELD
    assert again.changes == {}


@pytest.mark.parametrize(
    ("delegate_id", "key"),
    [
        ("dlg_b", "k-12345678"),  # another delegate, even with the same key
        ("dlg_a", "k-87654321"),  # the holder restarted: a new key
        ("dlg_a", None),  # a delegate that sends no key
    ],
)
def test_anyone_else_asking_for_a_held_task_is_told_it_is_taken(
    delegate_id: str, key: str | None
) -> None:
    task = applied(queued(), on_acquire(queued(), "dlg_a", 1_100.0, key="k-12345678"))
    assert on_acquire(task, delegate_id, 1_101.0, key=key).verdict is Verdict.TAKEN


def test_a_requeued_task_is_not_handed_out_again_on_the_old_key() -> None:
    task = applied(queued(), on_acquire(queued(), "dlg_a", 1_100.0, key="k-12345678"))
    requeued = applied(task, on_lease_lost(task, 1_200.0))
    decision = on_acquire(requeued, "dlg_a", 1_201.0, key="k-12345678")
    # A fresh attempt (the next number), not the lost one again.
    assert applied(requeued, decision).attempt == 2


def test_acquire_of_running_task_is_taken() -> None:
    decision = on_acquire(running(), "dlg_b", 1_010.0)
    assert decision.verdict is Verdict.TAKEN
    assert decision.changes == {}


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_acquire_of_final_task_is_gone(state: TaskState) -> None:
    decision = on_acquire(queued(state=state), "dlg_a", 1_010.0)
    assert decision.verdict is Verdict.GONE
    assert state.value in decision.reason
    assert decision.changes == {}


# --- result --------------------------------------------------------------------------------


def test_result_from_the_holder_finishes_the_task() -> None:
    task = running()
    decision = on_result(task, result(exit_code=0, outputs={"K": "V"}), "dlg_a", 2_000.0)
    done = applied(task, decision)
    assert done.state is TaskState.SUCCEEDED
    assert done.exit_code == 0
    assert done.outputs == {"K": "V"}
    assert done.finished_at == 2_000.0


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled", "timed_out"])
def test_result_status_becomes_the_task_state(status: str) -> None:
    decision = on_result(running(), result(status=status), "dlg_a", 2_000.0)
    assert decision.changes["state"] is TaskState(status)


def test_result_carries_reported_deployment() -> None:
    dep = Deployment(service="web", environment="prod", version="1.2")
    decision = on_result(running(), result(deployment=dep.model_dump()), "dlg_a", 2_000.0)
    assert decision.changes["deployment"] == dep.model_dump()


def test_result_without_deployment_keeps_the_submitted_one() -> None:
    submitted = {"service": "web", "environment": "prod", "artifact": None, "version": None}
    decision = on_result(running(deployment=submitted), result(), "dlg_a", 2_000.0)
    assert decision.changes["deployment"] == submitted


def test_result_from_a_stale_attempt_is_stale() -> None:
    decision = on_result(running(attempt=2), result(attempt=1), "dlg_a", 2_000.0)
    assert decision.verdict is Verdict.STALE
    assert decision.changes == {}


def test_result_from_another_delegate_is_stale() -> None:
    decision = on_result(running(), result(), "dlg_b", 2_000.0)
    assert decision.verdict is Verdict.STALE


def test_result_from_the_old_holder_after_requeue_is_stale() -> None:
    task = applied(running(), on_lease_lost(running(), 1_100.0))
    decision = on_result(task, result(), "dlg_a", 2_000.0)
    assert decision.verdict is Verdict.STALE


def test_result_resent_after_final_is_noop() -> None:
    task = running()
    done = applied(task, on_result(task, result(), "dlg_a", 2_000.0))
    decision = on_result(done, result(status="failed"), "dlg_a", 2_001.0)
    assert decision.verdict is Verdict.NOOP
    assert "succeeded" in decision.reason


def test_result_from_another_delegate_after_final_is_still_stale() -> None:
    done = running(state=TaskState.SUCCEEDED)
    assert on_result(done, result(), "dlg_b", 2_000.0).verdict is Verdict.STALE


# --- cancel --------------------------------------------------------------------------------


def test_cancel_of_queued_task_cancels_it_at_once() -> None:
    task = applied(queued(), on_cancel(queued(), 1_050.0))
    assert task.state is TaskState.CANCELLED
    assert task.finished_at == 1_050.0


def test_cancel_of_running_task_only_requests_it() -> None:
    decision = on_cancel(running(), 1_050.0)
    assert decision.verdict is Verdict.APPLY
    assert decision.changes == {"cancel_requested": True}


def test_cancel_of_running_task_twice_is_noop() -> None:
    task = applied(running(), on_cancel(running(), 1_050.0))
    assert on_cancel(task, 1_051.0).verdict is Verdict.NOOP


def test_cancel_of_queued_task_twice_is_noop() -> None:
    task = applied(queued(), on_cancel(queued(), 1_050.0))
    assert on_cancel(task, 1_051.0).verdict is Verdict.NOOP


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_cancel_of_final_task_is_noop(state: TaskState) -> None:
    assert on_cancel(queued(state=state), 1_050.0).verdict is Verdict.NOOP


# --- lease lost ----------------------------------------------------------------------------


def test_lease_lost_with_attempts_left_requeues_and_clears_the_holder() -> None:
    task = applied(running(attempt=1), on_lease_lost(running(attempt=1), 1_100.0))
    assert task.state is TaskState.QUEUED
    assert task.delegate_id is None
    assert task.started_at is None
    assert task.attempt == 1  # the next acquire bumps it, fencing the old holder out


def test_lease_lost_on_last_attempt_fails_with_delegate_lost() -> None:
    task = running(attempt=2)
    done = applied(task, on_lease_lost(task, 1_100.0))
    assert done.state is TaskState.FAILED
    assert done.error == DELEGATE_LOST
    assert done.finished_at == 1_100.0


def test_lease_lost_with_cancel_requested_becomes_cancelled() -> None:
    task = running(attempt=1, cancel_requested=True)
    done = applied(task, on_lease_lost(task, 1_100.0))
    assert done.state is TaskState.CANCELLED


@pytest.mark.parametrize("state", [TaskState.QUEUED, *sorted(FINAL_STATES)])
def test_lease_lost_of_task_not_running_is_noop(state: TaskState) -> None:
    assert on_lease_lost(queued(state=state), 1_100.0).verdict is Verdict.NOOP


# --- sweep ---------------------------------------------------------------------------------


def test_sweep_expires_queued_task_past_its_queue_timeout() -> None:
    now = CREATED + QUEUE_TIMEOUT + 0.001
    task = applied(queued(), on_sweep(queued(), now, run_margin=MARGIN))
    assert task.state is TaskState.EXPIRED
    assert task.finished_at == now


def test_sweep_leaves_queued_task_at_its_queue_timeout() -> None:
    now = CREATED + QUEUE_TIMEOUT
    assert on_sweep(queued(), now, run_margin=MARGIN).verdict is Verdict.NOOP


def test_sweep_times_out_running_task_past_timeout_and_margin() -> None:
    task = running()
    assert task.started_at is not None
    now = task.started_at + TIMEOUT + MARGIN + 0.001
    assert applied(task, on_sweep(task, now, run_margin=MARGIN)).state is TaskState.TIMED_OUT


def test_sweep_leaves_running_task_within_the_margin() -> None:
    task = running()
    assert task.started_at is not None
    now = task.started_at + TIMEOUT + MARGIN
    assert on_sweep(task, now, run_margin=MARGIN).verdict is Verdict.NOOP


def test_sweep_does_not_expire_running_task_by_its_queue_timeout() -> None:
    task = running()
    now = CREATED + QUEUE_TIMEOUT + 1.0
    assert on_sweep(task, now, run_margin=MARGIN).verdict is Verdict.NOOP


@pytest.mark.parametrize("state", sorted(FINAL_STATES))
def test_sweep_leaves_final_tasks_alone(state: TaskState) -> None:
    task = running(state=state)
    assert on_sweep(task, CREATED + 1e9, run_margin=MARGIN).verdict is Verdict.NOOP


def test_sweep_gives_a_task_requeued_after_a_lost_lease_its_full_queue_timeout() -> None:
    task = running(attempt=1)
    lost_at = CREATED + QUEUE_TIMEOUT + 60.0  # it ran for six minutes, then its delegate died
    requeued = applied(task, on_lease_lost(task, lost_at))
    assert on_sweep(requeued, lost_at + 1.0, run_margin=MARGIN).verdict is Verdict.NOOP


# --- clock skew: only the `now` passed in counts ----------------------------------------------


def test_result_finish_time_is_the_managers_not_the_delegates() -> None:
    skewed = result(started_at=9e9, finished_at=9e9 + 1)
    decision = on_result(running(), skewed, "dlg_a", 2_000.0)
    assert decision.changes["finished_at"] == 2_000.0


def test_sweep_with_a_clock_behind_creation_does_nothing() -> None:
    assert on_sweep(queued(), CREATED - 1e6, run_margin=MARGIN).verdict is Verdict.NOOP


def test_same_task_and_now_give_the_same_decision() -> None:
    task = running()
    first = on_sweep(task, 5_000.0, run_margin=MARGIN)
    assert on_sweep(task, 5_000.0, run_margin=MARGIN) == first


# --- timeouts, judged by the caller ---------------------------------------------------------


def test_timeout_due_is_the_queue_timeout_for_a_queued_task_and_the_run_timeout_after() -> None:
    assert timeout_due(queued(), run_margin=MARGIN) == CREATED + QUEUE_TIMEOUT
    task = running()
    assert timeout_due(task, run_margin=MARGIN) == CREATED + 5.0 + TIMEOUT + MARGIN
    assert timeout_due(queued(state=TaskState.SUCCEEDED), run_margin=MARGIN) is None


def test_on_timeout_expires_a_queued_task_and_times_out_a_running_one() -> None:
    assert applied(queued(), on_timeout(queued(), 2_000.0)).state is TaskState.EXPIRED
    assert applied(running(), on_timeout(running(), 2_000.0)).state is TaskState.TIMED_OUT
    assert on_timeout(queued(state=TaskState.FAILED), 2_000.0).verdict is Verdict.NOOP


# -- withdraw: an assignment declined or never acknowledged ---------------------------------


def test_a_withdrawn_claim_goes_back_to_the_queue_and_keeps_its_number() -> None:
    task = running(
        attempt=3, acquire_key="key-00000001", lease_until=CREATED + 30, queued_at=CREATED + 1
    )
    back = applied(task, on_withdraw(task, "dlg_a", 3, CREATED + 9))
    assert (back.state, back.attempt, back.delegate_id) == (TaskState.QUEUED, 3, None)
    assert (back.started_at, back.lease_until, back.acquire_key) == (None, None, None)
    # The queue timeout still runs from when it was queued: it never ran.
    assert back.queued_at == CREATED + 1
    # The next claim is a new number, which fences the withdrawn one out.
    assert applied(back, on_acquire(back, "dlg_b", CREATED + 10)).attempt == 4


@pytest.mark.parametrize(
    ("delegate_id", "attempt", "task"),
    [
        ("dlg_b", 1, running()),  # not the holder
        ("dlg_a", 2, running()),  # another attempt
        ("dlg_a", 1, queued()),  # already back in the queue
        ("dlg_a", 1, running(state=TaskState.SUCCEEDED)),  # finished meanwhile
    ],
)
def test_a_withdraw_of_an_attempt_that_does_not_hold_the_task_is_stale(
    delegate_id: str, attempt: int, task: TaskRecord
) -> None:
    assert on_withdraw(task, delegate_id, attempt, CREATED).verdict is Verdict.STALE


def test_a_withdrawn_claim_of_a_task_asked_to_cancel_ends_it_cancelled() -> None:
    task = running(cancel_requested=True)
    assert applied(task, on_withdraw(task, "dlg_a", 1, CREATED + 9)).state is TaskState.CANCELLED


def test_withdrawn_attempts_do_not_count_against_max_attempts_when_a_lease_is_lost() -> None:
    # Attempt 3 of max 2, two of them withdrawn before they ran: one real attempt so far.
    task = running(attempt=3, max_attempts=2)
    assert applied(task, on_lease_lost(task, CREATED, withdrawn=2)).state is TaskState.QUEUED
    assert applied(task, on_lease_lost(task, CREATED, withdrawn=1)).state is TaskState.FAILED
