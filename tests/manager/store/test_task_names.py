"""A task's name and labels (migration 17), and finding tasks by them, by the start of their
id and by their delegate's name: on SQLite and PostgreSQL."""

from __future__ import annotations

from manager.records import TaskFilter
from manager.store.base import Store
from tests.manager.store.test_store import WINDOW, delegate, task


async def _ids(store: Store, **filters: object) -> set[str]:
    return {t.id for t in await store.list_tasks(TaskFilter(**filters))}  # type: ignore[arg-type]


async def test_name_and_labels_round_trip_and_filter(store: Store) -> None:
    nightly = task("task_a1", name="nightly", labels={"team": "web", "tier": "1"})
    other = task("task_a2", created_at=1_001.0, name="other", labels={"team": "db"})
    plain = task("task_b1", created_at=1_002.0)
    for t in (nightly, other, plain):
        await store.insert_task(t, idempotency_window=WINDOW)

    assert await store.get_task("task_a1") == nightly
    assert (await store.get_task("task_b1")).labels == {}  # type: ignore[union-attr]
    assert await _ids(store, name="nightly") == {"task_a1"}
    assert await _ids(store, labels=(("team", "web"),)) == {"task_a1"}
    assert await _ids(store, labels=(("team", "web"), ("tier", "2"))) == set()
    assert await _ids(store, labels=(("team", "db"),)) == {"task_a2"}


async def test_id_prefix_matches_the_start_only_and_underscore_literally(store: Store) -> None:
    for n, tid in enumerate(("task_a1", "task_a2", "taskxb1")):
        await store.insert_task(task(tid, created_at=1_000.0 + n), idempotency_window=WINDOW)

    assert await _ids(store, id_prefix="task_a") == {"task_a1", "task_a2"}
    # "_" is not LIKE's any-character here.
    assert await _ids(store, id_prefix="task_") == {"task_a1", "task_a2"}
    assert await _ids(store, id_prefix="ask") == set()


async def test_the_delegate_filter_takes_a_name_or_an_id(store: Store) -> None:
    await store.upsert_delegate(delegate(id="dlg_1", public_key="a" * 44, name="build-01"))
    await store.upsert_delegate(delegate(id="dlg_2", public_key="b" * 44, name="build-02"))
    await store.insert_task(task("task_1", delegate_id="dlg_1"), idempotency_window=WINDOW)
    await store.insert_task(
        task("task_2", created_at=1_001.0, delegate_id="dlg_2"), idempotency_window=WINDOW
    )

    assert await _ids(store, delegate_id="build-01") == {"task_1"}
    assert await _ids(store, delegate_id="dlg_2") == {"task_2"}
    assert await _ids(store, delegate_id="nobody") == set()
