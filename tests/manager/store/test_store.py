"""The store's behaviour, the same on every backend (see ``conftest.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from manager.records import (
    AttemptRecord,
    Claimed,
    DelegateRecord,
    LeaseFor,
    LogRecord,
    Presence,
    TaskFilter,
    TaskRecord,
    TokenRecord,
)
from manager.store.base import Conflict, Store, StoreError
from manager.store.sqlite import SqliteStore, lease_clock
from shared.protocol import TaskState
from tests.manager.conftest import StoreMaker

WINDOW = 3600.0


def token(name: str = "ci", id: str = "tok_1", **kw: Any) -> TokenRecord:
    return TokenRecord(id=id, name=name, token_hash=f"hash-{id}", created_at=100.0, **kw)


def delegate(id: str = "dlg_1", public_key: str = "pk" * 22, **kw: Any) -> DelegateRecord:
    fields: dict[str, Any] = {
        "name": "build-01",
        "token_id": "tok_1",
        "hostname": "build-01.internal",
        "version": "0.1.0",
        "protocol_version": 1,
        "selectors": ("linux",),
        "task_types": ("shell",),
        "capacity": 2,
        "created_at": 100.0,
        "last_seen": 100.0,
    }
    fields.update(kw)
    return DelegateRecord(id=id, public_key=public_key, **fields)


def task(id: str = "task_1", created_at: float = 1_000.0, **kw: Any) -> TaskRecord:
    fields: dict[str, Any] = {
        "type": "shell",
        "state": TaskState.QUEUED,
        "payload": {"type": "shell", "script": "echo hi"},
        "selectors": ("linux",),
        "timeout_s": 600.0,
        "queue_timeout_s": 300.0,
        "max_attempts": 2,
    }
    fields.update(kw)
    return TaskRecord(id=id, created_at=created_at, **fields)


def line(seq: int, text: str = "", attempt: int = 1) -> LogRecord:
    return LogRecord(attempt=attempt, seq=seq, stream="stdout", ts=1_000.0 + seq, text=text)


ACQUIRE: dict[str, Any] = {
    "state": TaskState.RUNNING,
    "attempt": 1,
    "delegate_id": "dlg_1",
    "started_at": 1_010.0,
}


async def acquired(store: Store, task_id: str = "task_1") -> TaskRecord:
    """Insert a task and run it as attempt 1 on dlg_1."""
    await store.insert_task(task(task_id), idempotency_window=WINDOW)
    updated = await store.update_task(
        task_id,
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes=ACQUIRE,
        start_attempt=AttemptRecord(task_id, 1, "dlg_1", 1_010.0),
    )
    assert updated is not None
    return updated


# --- open, migrations, settings ------------------------------------------------------------


async def test_calls_before_open_fail_with_store_error(new_store: StoreMaker) -> None:
    s = new_store()
    with pytest.raises(StoreError):
        await s.get_setting("x")
    await s.close()


async def test_migrations_run_once_across_reopens(new_store: StoreMaker) -> None:
    for _ in range(2):
        s = new_store()
        await s.open()
        await s.close()
    assert await new_store.schema_versions() == [v for v, _ in new_store.migrations]


async def test_data_survives_a_reopen(new_store: StoreMaker) -> None:
    s = new_store()
    await s.open()
    await s.insert_task(task(), idempotency_window=WINDOW)
    await s.close()
    again = new_store()
    await again.open()
    try:
        assert await again.get_task("task_1") == task()
    finally:
        await again.close()


async def test_missing_setting_is_none(store: Store) -> None:
    assert await store.get_setting("signing_key") is None


async def test_put_setting_if_absent_stores_the_first_value(store: Store) -> None:
    assert await store.put_setting_if_absent("signing_key", "first") == "first"
    assert await store.get_setting("signing_key") == "first"


async def test_put_setting_if_absent_keeps_the_existing_value(store: Store) -> None:
    await store.put_setting_if_absent("signing_key", "first")
    assert await store.put_setting_if_absent("signing_key", "second") == "first"
    assert await store.get_setting("signing_key") == "first"


async def test_replace_setting_is_a_compare_and_set(store: Store) -> None:
    assert await store.replace_setting("signing_key", "first", "second") is False
    await store.put_setting_if_absent("signing_key", "first")
    assert await store.replace_setting("signing_key", "stale", "second") is False
    assert await store.get_setting("signing_key") == "first"
    assert await store.replace_setting("signing_key", "first", "second") is True
    assert await store.get_setting("signing_key") == "second"


# --- tokens --------------------------------------------------------------------------------


async def test_created_token_is_found_by_hash(store: Store) -> None:
    await store.create_token(token())
    assert await store.token_by_hash("hash-tok_1") == token()
    assert await store.list_tokens() == [token()]


async def test_second_live_token_with_the_same_name_conflicts(store: Store) -> None:
    await store.create_token(token(id="tok_1"))
    with pytest.raises(Conflict):
        await store.create_token(token(id="tok_2"))


async def test_revoke_marks_the_live_token(store: Store) -> None:
    await store.create_token(token())
    revoked = await store.revoke_token("ci", 200.0)
    assert revoked is not None
    assert (revoked.id, revoked.revoked_at) == ("tok_1", 200.0)


async def test_revoke_of_unknown_or_revoked_name_is_none(store: Store) -> None:
    await store.create_token(token())
    await store.revoke_token("ci", 200.0)
    assert await store.revoke_token("ci", 300.0) is None
    assert await store.revoke_token("nobody", 300.0) is None


async def test_revoked_token_ids_lists_only_revoked_among_given(store: Store) -> None:
    await store.create_token(token("a", id="tok_a"))
    await store.create_token(token("b", id="tok_b"))
    await store.create_token(token("c", id="tok_c"))
    await store.revoke_token("a", 200.0)
    await store.revoke_token("c", 200.0)
    assert await store.revoked_token_ids(["tok_a", "tok_b"]) == {"tok_a"}
    assert await store.revoked_token_ids([]) == set()


async def test_new_token_may_reuse_a_revoked_name(store: Store) -> None:
    await store.create_token(token(id="tok_1"))
    await store.revoke_token("ci", 200.0)
    await store.create_token(token(id="tok_2"))
    assert [t.id for t in await store.list_tokens()] == ["tok_1", "tok_2"]


# --- delegates -----------------------------------------------------------------------------


async def test_upsert_inserts_a_new_delegate(store: Store) -> None:
    stored = await store.upsert_delegate(delegate())
    assert stored == delegate()
    assert await store.get_delegate("dlg_1") == delegate()


async def test_upsert_with_a_known_public_key_keeps_the_id(store: Store) -> None:
    await store.upsert_delegate(delegate(id="dlg_1"))
    again = delegate(id="dlg_2", capacity=8, selectors=("gpu",), created_at=500.0, last_seen=500.0)
    stored = await store.upsert_delegate(again)
    assert stored is not None
    assert stored.id == "dlg_1"
    assert (stored.capacity, stored.selectors, stored.last_seen) == (8, ("gpu",), 500.0)
    assert stored.created_at == 100.0
    assert [d.id for d in await store.list_delegates()] == ["dlg_1"]


async def test_upsert_records_how_the_delegate_isolates_its_tasks_as_last_said(
    store: Store,
) -> None:
    await store.upsert_delegate(delegate(isolation="task_users"))
    assert (await store.get_delegate("dlg_1")).isolation == "task_users"  # type: ignore[union-attr]
    # A restart with --shared-user is what the list must show from then on.
    stored = await store.upsert_delegate(delegate(id="dlg_2", isolation="shared_user"))
    assert stored is not None
    assert (stored.id, stored.isolation) == ("dlg_1", "shared_user")


async def test_upsert_of_a_key_registered_under_another_token_changes_nothing(
    store: Store,
) -> None:
    await store.upsert_delegate(delegate(id="dlg_1", token_id="tok_1"))
    taken = delegate(id="dlg_2", token_id="tok_2", name="thief", selectors=("prod",))
    assert await store.upsert_delegate(taken) is None
    assert await store.list_delegates() == [delegate(id="dlg_1", token_id="tok_1")]


async def test_token_scope_round_trips_and_is_found_by_id(store: Store) -> None:
    scoped = token(id="tok_9", scope='{"apps":[],"envs":["env_1"]}')
    await store.create_token(scoped)
    assert await store.token_by_id("tok_9") == scoped
    assert await store.token_by_id("tok_nope") is None
    await store.revoke_token("ci", 300.0)
    revoked = await store.token_by_id("tok_9")
    assert revoked is not None
    assert revoked.revoked_at == 300.0


async def test_delegates_named_and_delete(store: Store) -> None:
    await store.upsert_delegate(delegate(id="dlg_1", public_key="a" * 44, name="web"))
    await store.upsert_delegate(delegate(id="dlg_2", public_key="b" * 44, name="web"))
    await store.upsert_delegate(delegate(id="dlg_3", public_key="c" * 44, name="db"))
    assert {d.id for d in await store.delegates_named("web")} == {"dlg_1", "dlg_2"}
    assert await store.delete_delegate("dlg_1") is True
    assert await store.delete_delegate("dlg_1") is False
    assert [d.id for d in await store.delegates_named("web")] == ["dlg_2"]
    assert await store.get_delegate("dlg_1") is None


async def test_delegates_with_different_keys_are_different_rows(store: Store) -> None:
    await store.upsert_delegate(delegate(id="dlg_1", public_key="a" * 44))
    await store.upsert_delegate(delegate(id="dlg_2", public_key="b" * 44))
    assert {d.id for d in await store.list_delegates()} == {"dlg_1", "dlg_2"}


# --- tasks ---------------------------------------------------------------------------------


async def test_inserted_task_reads_back_equal(store: Store) -> None:
    rich = task(
        secret_env_sealed="sealed",
        secret_env_names=("A", "B"),
        deployment={"service": "web", "environment": "prod"},
    )
    assert await store.insert_task(rich, idempotency_window=WINDOW) == (rich, True)
    assert await store.get_task("task_1") == rich


async def test_inserted_task_is_durable_on_return(store: Store, new_store: StoreMaker) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    # Another store on the same database sees it: the transaction is committed on return.
    other = new_store()
    await other.open()
    try:
        assert await other.get_task("task_1") == task()
    finally:
        await other.close()


async def test_same_idempotency_key_within_window_returns_the_first_task(
    store: Store,
) -> None:
    first = task("task_1", created_at=1_000.0, idempotency_key="deploy-42")
    await store.insert_task(first, idempotency_window=WINDOW)
    second = task("task_2", created_at=1_000.0 + WINDOW, idempotency_key="deploy-42")
    assert await store.insert_task(second, idempotency_window=WINDOW) == (first, False)
    assert await store.get_task("task_2") is None


async def test_same_idempotency_key_outside_window_creates_a_new_task(
    store: Store,
) -> None:
    first = task("task_1", created_at=1_000.0, idempotency_key="deploy-42")
    await store.insert_task(first, idempotency_window=WINDOW)
    second = task("task_2", created_at=1_000.0 + WINDOW + 1, idempotency_key="deploy-42")
    assert await store.insert_task(second, idempotency_window=WINDOW) == (second, True)
    old = await store.get_task("task_1")
    assert old is not None
    assert old.idempotency_key is None


async def test_tasks_without_idempotency_key_are_always_new(store: Store) -> None:
    await store.insert_task(task("task_1"), idempotency_window=WINDOW)
    _, created = await store.insert_task(task("task_2"), idempotency_window=WINDOW)
    assert created


async def test_update_with_matching_snapshot_applies_changes(store: Store) -> None:
    updated = await acquired(store)
    assert (updated.state, updated.attempt, updated.delegate_id) == (
        TaskState.RUNNING,
        1,
        "dlg_1",
    )
    assert await store.get_task("task_1") == updated


async def test_update_with_wrong_expected_state_is_none(store: Store) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    missed = await store.update_task(
        "task_1", expect_state=TaskState.RUNNING, expect_attempt=0, changes=ACQUIRE
    )
    assert missed is None
    assert await store.get_task("task_1") == task()


async def test_update_with_wrong_expected_attempt_is_none(store: Store) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    missed = await store.update_task(
        "task_1", expect_state=TaskState.QUEUED, expect_attempt=1, changes=ACQUIRE
    )
    assert missed is None


async def test_missed_update_writes_no_attempt_row(store: Store) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    await store.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=0,
        changes=ACQUIRE,
        start_attempt=AttemptRecord("task_1", 1, "dlg_1", 1_010.0),
    )
    assert await store.attempts("task_1") == []


async def test_update_of_unknown_column_is_refused(store: Store) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    with pytest.raises(ValueError, match="payload"):
        await store.update_task(
            "task_1", expect_state=TaskState.QUEUED, expect_attempt=0, changes={"payload": {}}
        )


async def test_start_attempt_records_an_attempt_row(store: Store) -> None:
    await acquired(store)
    assert await store.attempts("task_1") == [AttemptRecord("task_1", 1, "dlg_1", 1_010.0)]


async def test_end_attempt_status_closes_the_current_attempt(store: Store) -> None:
    await acquired(store)
    done = await store.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=1,
        changes={"state": TaskState.SUCCEEDED, "finished_at": 1_100.0, "exit_code": 0},
        end_attempt_status="succeeded",
    )
    assert done is not None
    (attempt,) = await store.attempts("task_1")
    assert attempt.status == "succeeded"
    assert attempt.finished_at is not None


async def test_end_attempt_records_the_finish_time_of_the_decision(store: Store) -> None:
    await acquired(store)
    await store.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=1,
        changes={"state": TaskState.SUCCEEDED, "finished_at": 1_100.0},
        end_attempt_status="succeeded",
    )
    (attempt,) = await store.attempts("task_1")
    assert attempt.finished_at == 1_100.0


async def test_only_one_of_concurrent_acquires_wins(store: Store) -> None:
    await store.insert_task(task(), idempotency_window=WINDOW)
    results = await asyncio.gather(
        *(
            store.update_task(
                "task_1",
                expect_state=TaskState.QUEUED,
                expect_attempt=0,
                changes={**ACQUIRE, "delegate_id": f"dlg_{i}"},
                start_attempt=AttemptRecord("task_1", 1, f"dlg_{i}", 1_010.0),
            )
            for i in range(8)
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert [a.delegate_id for a in await store.attempts("task_1")] == [winners[0].delegate_id]


async def test_update_encodes_json_and_bool_columns(store: Store) -> None:
    await acquired(store)
    updated = await store.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=1,
        changes={"cancel_requested": True, "outputs": {"K": "V"}},
    )
    assert updated is not None
    assert (updated.cancel_requested, updated.outputs) == (True, {"K": "V"})


# --- logs ----------------------------------------------------------------------------------


async def test_append_logs_from_a_delegate_that_does_not_hold_the_task_is_refused(
    store: Store,
) -> None:
    await acquired(store)
    assert await store.append_logs("task_1", 1, "dlg_other", [line(0)]) == -1
    assert await store.get_logs("task_1", after=None, limit=10) == []


async def test_append_logs_returns_how_many_were_new(store: Store) -> None:
    await acquired(store)
    assert await store.append_logs("task_1", 1, "dlg_1", [line(0), line(1)]) == 2


async def test_resent_log_batch_inserts_nothing(store: Store) -> None:
    await acquired(store)
    await store.append_logs("task_1", 1, "dlg_1", [line(0, "a"), line(1, "b")])
    assert await store.append_logs("task_1", 1, "dlg_1", [line(0, "a"), line(1, "b")]) == 0
    assert len(await store.get_logs("task_1", after=None, limit=100)) == 2


async def test_partly_resent_batch_inserts_only_new_lines(store: Store) -> None:
    await acquired(store)
    await store.append_logs("task_1", 1, "dlg_1", [line(0, "a"), line(1, "b")])
    assert await store.append_logs("task_1", 1, "dlg_1", [line(1, "b"), line(2, "c")]) == 1


async def test_resent_line_keeps_the_first_text(store: Store) -> None:
    await acquired(store)
    await store.append_logs("task_1", 1, "dlg_1", [line(0, "first")])
    await store.append_logs("task_1", 1, "dlg_1", [line(0, "second")])
    assert [ln.text for ln in await store.get_logs("task_1", after=None, limit=10)] == ["first"]


async def test_logs_of_a_stale_attempt_are_refused_and_not_written(store: Store) -> None:
    await acquired(store)
    assert await store.append_logs("task_1", 2, "dlg_1", [line(0, attempt=2)]) == -1
    assert await store.get_logs("task_1", after=None, limit=10) == []


async def test_logs_for_an_unknown_task_are_refused(store: Store) -> None:
    assert await store.append_logs("task_nope", 1, "dlg_1", [line(0)]) == -1


async def _logs_over_two_attempts(store: Store) -> None:
    await acquired(store)
    await store.append_logs("task_1", 1, "dlg_1", [line(1, "1.1"), line(0, "1.0")])
    requeued = await store.update_task(
        "task_1",
        expect_state=TaskState.RUNNING,
        expect_attempt=1,
        changes={"state": TaskState.QUEUED, "delegate_id": None, "started_at": None},
    )
    assert requeued is not None
    await store.update_task(
        "task_1",
        expect_state=TaskState.QUEUED,
        expect_attempt=1,
        changes={**ACQUIRE, "attempt": 2, "delegate_id": "dlg_2"},
    )
    await store.append_logs("task_1", 2, "dlg_2", [line(0, "2.0", 2), line(1, "2.1", 2)])


async def test_get_logs_orders_by_attempt_then_seq(store: Store) -> None:
    await _logs_over_two_attempts(store)
    logs = await store.get_logs("task_1", after=None, limit=100)
    assert [ln.text for ln in logs] == ["1.0", "1.1", "2.0", "2.1"]


async def test_get_logs_starts_strictly_after_the_cursor(store: Store) -> None:
    await _logs_over_two_attempts(store)
    logs = await store.get_logs("task_1", after=(1, 0), limit=100)
    assert [ln.text for ln in logs] == ["1.1", "2.0", "2.1"]


async def test_get_logs_cursor_at_the_end_of_an_attempt_moves_to_the_next(
    store: Store,
) -> None:
    await _logs_over_two_attempts(store)
    logs = await store.get_logs("task_1", after=(1, 1), limit=100)
    assert [ln.text for ln in logs] == ["2.0", "2.1"]


async def test_get_logs_honours_the_limit(store: Store) -> None:
    await _logs_over_two_attempts(store)
    logs = await store.get_logs("task_1", after=None, limit=3)
    assert [ln.text for ln in logs] == ["1.0", "1.1", "2.0"]


async def test_get_logs_of_an_old_attempt_are_kept_after_a_new_one(store: Store) -> None:
    await _logs_over_two_attempts(store)
    logs = await store.get_logs("task_1", after=None, limit=100)
    assert {ln.attempt for ln in logs} == {1, 2}


async def test_a_log_page_stops_at_its_byte_bound_and_the_cursor_reads_on(store: Store) -> None:
    # 1,000 bytes a line in UTF-8 (500 two-byte characters): the bound counts bytes, not
    # characters, on both stores; a page of 2,500 bytes holds two lines.
    await acquired(store)
    texts = [f"{i}".ljust(500, "é")[:500] for i in range(7)]
    await store.append_logs("task_1", 1, "dlg_1", [line(i, t) for i, t in enumerate(texts)])
    pages: list[list[str]] = []
    after: tuple[int, int] | None = None
    while page := await store.get_logs("task_1", after=after, limit=100, max_bytes=2_500):
        pages.append([ln.text for ln in page])
        after = (page[-1].attempt, page[-1].seq)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [t for p in pages for t in p] == texts


async def test_a_page_of_many_short_lines_keeps_both_bounds_exactly(store: Store) -> None:
    # More lines than the store reads sizes of at first: a page is read in several pieces.
    await acquired(store)
    texts = [f"{i:010d}" for i in range(300)]
    await store.append_logs("task_1", 1, "dlg_1", [line(i, t) for i, t in enumerate(texts)])
    by_bytes = await store.get_logs("task_1", after=None, limit=1000, max_bytes=1_000)
    assert [ln.text for ln in by_bytes] == texts[:100]
    by_lines = await store.get_logs("task_1", after=(1, 99), limit=170, max_bytes=10**6)
    assert [ln.text for ln in by_lines] == texts[100:270]


async def test_a_line_longer_than_the_byte_bound_comes_alone(store: Store) -> None:
    await acquired(store)
    await store.append_logs("task_1", 1, "dlg_1", [line(0, "x" * 5_000), line(1, "y")])
    first = await store.get_logs("task_1", after=None, limit=100, max_bytes=1_000)
    assert [ln.seq for ln in first] == [0]
    rest = await store.get_logs("task_1", after=(1, 0), limit=100, max_bytes=1_000)
    assert [ln.text for ln in rest] == ["y"]


# --- listing -------------------------------------------------------------------------------


async def _three_tasks(store: Store) -> None:
    await store.insert_task(task("task_1", created_at=1_000.0), idempotency_window=WINDOW)
    await store.insert_task(task("task_2", created_at=2_000.0), idempotency_window=WINDOW)
    await store.insert_task(task("task_3", created_at=3_000.0), idempotency_window=WINDOW)
    await store.update_task(
        "task_2", expect_state=TaskState.QUEUED, expect_attempt=0, changes=ACQUIRE
    )


async def test_list_tasks_returns_newest_first(store: Store) -> None:
    await _three_tasks(store)
    assert [t.id for t in await store.list_tasks(TaskFilter())] == ["task_3", "task_2", "task_1"]


async def test_list_tasks_filters_by_state(store: Store) -> None:
    await _three_tasks(store)
    found = await store.list_tasks(TaskFilter(state=TaskState.QUEUED))
    assert [t.id for t in found] == ["task_3", "task_1"]


async def test_list_tasks_filters_by_delegate(store: Store) -> None:
    await _three_tasks(store)
    assert [t.id for t in await store.list_tasks(TaskFilter(delegate_id="dlg_1"))] == ["task_2"]


async def test_list_tasks_filters_by_time_range(store: Store) -> None:
    await _three_tasks(store)
    found = await store.list_tasks(TaskFilter(since=2_000.0, until=3_000.0))
    assert [t.id for t in found] == ["task_2"]


async def test_list_tasks_honours_the_limit(store: Store) -> None:
    await _three_tasks(store)
    assert [t.id for t in await store.list_tasks(TaskFilter(limit=2))] == ["task_3", "task_2"]


async def test_tasks_in_states_returns_oldest_first(store: Store) -> None:
    await _three_tasks(store)
    await store.insert_task(
        task("task_4", created_at=4_000.0, state=TaskState.SUCCEEDED), idempotency_window=WINDOW
    )
    found = await store.tasks_in_states([TaskState.QUEUED, TaskState.RUNNING])
    assert [t.id for t in found] == ["task_1", "task_2", "task_3"]


# -- leases ----------------------------------------------------------------------------------


async def test_renew_leases_extends_only_what_the_listed_holder_holds(store: Store) -> None:
    await acquired(store, "task_1")
    await acquired(store, "task_2")
    held = [("task_1", "dlg_1", 3600.0), ("task_2", "dlg_other", 3600.0)]
    assert await store.renew_leases(held) == {"task_1"}
    one, two = await store.get_task("task_1"), await store.get_task("task_2")
    assert one is not None
    assert two is not None
    assert one.lease_until is not None
    assert two.lease_until is None


async def test_renew_leases_of_nothing_writes_nothing(store: Store) -> None:
    assert await store.renew_leases([]) == set()


async def test_expired_leases_are_the_running_tasks_past_their_lease(store: Store) -> None:
    await acquired(store, "task_1")
    await acquired(store, "task_2")
    await acquired(store, "task_3")
    # Durations from the store's own now: negative ones ran out already.
    await store.renew_leases([("task_1", "dlg_1", -20.0), ("task_2", "dlg_1", -10.0)])
    await store.renew_leases([("task_3", "dlg_1", 3600.0)])
    assert [t.id for t in await store.expired_leases()] == ["task_1", "task_2"]
    await store.renew_leases([("task_1", "dlg_1", 3600.0)])
    assert [t.id for t in await store.expired_leases()] == ["task_2"]


async def test_extend_leases_gives_every_running_task_at_least_that_long(store: Store) -> None:
    await acquired(store, "task_1")
    await acquired(store, "task_2")
    await store.renew_leases([("task_1", "dlg_1", -5.0), ("task_2", "dlg_1", 9_000.0)])
    assert await store.extend_leases(60.0) == 1
    assert await store.expired_leases() == []
    one, two = await store.get_task("task_1"), await store.get_task("task_2")
    assert one is not None
    assert one.lease_until is not None
    assert two is not None
    assert two.lease_until is not None
    # The longer lease is kept; the lapsed one now runs about a minute.
    assert two.lease_until - one.lease_until == pytest.approx(9_000.0 - 60.0, abs=5.0)


async def test_a_lease_from_an_acquire_runs_on_the_store_clock(store: Store) -> None:
    await store.insert_task(task("task_1"), idempotency_window=WINDOW)
    changes = {**ACQUIRE, "lease_until": LeaseFor(-1.0), "acquire_key": "key-0001"}
    running = await store.update_task(
        "task_1", expect_state=TaskState.QUEUED, expect_attempt=0, changes=changes
    )
    assert running is not None
    assert running.acquire_key == "key-0001"
    assert [t.id for t in await store.expired_leases()] == ["task_1"]


def _claim(task_id: str, lease_for: float) -> Claimed:
    return Claimed(AttemptRecord(task_id, 1, "dlg_1", 1_010.0), lease_for)


async def test_a_task_inserted_claimed_has_its_attempt_and_a_lease_on_the_store_clock(
    store: Store,
) -> None:
    claimed = task("task_1", **ACQUIRE, acquire_key="key-0001")
    await store.insert_task(claimed, idempotency_window=WINDOW, claim=_claim("task_1", -1.0))
    await store.insert_task(
        task("task_2", **ACQUIRE), idempotency_window=WINDOW, claim=_claim("task_2", 3600.0)
    )
    await store.insert_task(task("task_3"), idempotency_window=WINDOW)  # queued: no lease
    got = await store.get_task("task_1")
    assert got is not None
    assert (got.state, got.attempt, got.delegate_id, got.acquire_key) == (
        TaskState.RUNNING,
        1,
        "dlg_1",
        "key-0001",
    )
    assert [(a.attempt, a.delegate_id, a.started_at) for a in await store.attempts("task_1")] == [
        (1, "dlg_1", 1_010.0)
    ]
    # A lease of -1 s from the insert ran out already; one of an hour did not.
    assert [t.id for t in await store.expired_leases()] == ["task_1"]
    queued = await store.get_task("task_3")
    assert queued is not None
    assert queued.lease_until is None
    assert await store.attempts("task_3") == []


async def test_an_idempotent_repeat_inserted_claimed_writes_no_attempt(store: Store) -> None:
    first = task("task_1", idempotency_key="k1")
    await store.insert_task(first, idempotency_window=WINDOW)
    again = task("task_2", idempotency_key="k1", **ACQUIRE)
    stored, created = await store.insert_task(
        again, idempotency_window=WINDOW, claim=_claim("task_2", 60.0)
    )
    assert (stored.id, created) == ("task_1", False)
    assert await store.get_task("task_2") is None
    assert await store.attempts("task_2") == []
    # With a new key, the claim is written with it (the transaction of the key's look-up).
    fresh = task("task_3", idempotency_key="k2", **ACQUIRE)
    _, created = await store.insert_task(
        fresh, idempotency_window=WINDOW, claim=_claim("task_3", 60.0)
    )
    assert created
    assert [a.attempt for a in await store.attempts("task_3")] == [1]


async def test_postgres_counts_leases_on_the_database_clock(pg: StoreMaker) -> None:
    store = pg()
    await store.open()
    try:
        await acquired(store, "task_1")
        await store.renew_leases([("task_1", "dlg_1", 100.0)])
        current = await store.get_task("task_1")
        assert current is not None
        assert current.lease_until is not None
        (row,) = await pg.fetch("SELECT extract(epoch FROM clock_timestamp())::float8 AS now")
        assert current.lease_until - row["now"] == pytest.approx(100.0, abs=5.0)
    finally:
        await store.close()


async def test_sqlite_counts_leases_on_its_lease_clock_not_the_wall_clock(
    tmp_path: Path,
) -> None:
    now = [5_000.0]
    store = SqliteStore(tmp_path / "t.db", lease_now=lambda: now[0])
    await store.open()
    try:
        await acquired(store, "task_1")
        await store.renew_leases([("task_1", "dlg_1", 30.0)])
        current = await store.get_task("task_1")
        assert current is not None
        assert current.lease_until == 5_030.0
        now[0] += 30.0
        assert await store.expired_leases() == []
        now[0] += 0.5
        assert [t.id for t in await store.expired_leases()] == ["task_1"]
    finally:
        await store.close()


def test_the_sqlite_lease_clock_reads_as_epoch_seconds_and_moves_with_the_monotonic_clock() -> None:
    clock = lease_clock()
    first = clock()
    assert abs(first - time.time()) < 5.0
    assert clock() >= first


# -- replica presence --------------------------------------------------------------------------

A1 = Presence("dlg_1", "rep_a", "stream", 1_000.0)
A2 = Presence("dlg_2", "rep_a", "polling", 990.0)
B1 = Presence("dlg_1", "rep_b", "polling", 1_010.0)


async def test_presence_lists_delegates_heard_by_live_replicas(store: Store) -> None:
    seen = [
        A1,
        A2,
    ]
    await store.record_presence("rep_a", 900.0, 1_000.0, seen)
    live = await store.presence(995.0)
    assert set(live) == {"dlg_1"}
    assert live["dlg_1"].mode == "stream"


async def test_delegates_of_a_silent_replica_drop_out(store: Store) -> None:
    await store.record_presence("rep_a", 900.0, 1_000.0, [A1])
    await store.record_presence("rep_b", 900.0, 1_100.0, [])
    assert await store.presence(1_050.0) == {}


async def test_a_delegate_moving_to_another_replica_is_listed_there(store: Store) -> None:
    await store.record_presence("rep_a", 900.0, 1_000.0, [A1])
    await store.record_presence("rep_b", 900.0, 1_010.0, [B1])
    # A late write from the old replica does not move it back.
    await store.record_presence("rep_a", 900.0, 1_011.0, [A1])
    assert (await store.presence(1_005.0))["dlg_1"].replica_id == "rep_b"


# -- rendering ---------------------------------------------------------------------------------


async def test_values_are_bound_never_spliced_into_the_sql(store: Store) -> None:
    await store.insert_task(task("task_1"), idempotency_window=WINDOW)
    hostile = "x' OR '1'='1"
    assert await store.list_tasks(TaskFilter(delegate_id=hostile)) == []
    assert await store.list_tasks(TaskFilter(service=hostile)) == []
    assert await store.secrets_by_name([hostile, "a'); DROP TABLE secrets; --"]) == {}
    assert await store.revoked_token_ids([hostile]) == set()
    with pytest.raises(ValueError, match="not updatable"):
        await store.update_task(
            "task_1", expect_state=TaskState.QUEUED, expect_attempt=0, changes={"id": "task_2"}
        )
    assert await store.get_task("task_1") == task("task_1")
    assert await store.list_secrets() == []
