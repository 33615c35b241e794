"""Retention on each store: nothing goes by default, the rules per application and
environment type, tasks that are not finished are never touched, the audit trail stays
verifiable across the cut (and breaks when the cut is tampered with), and every batch is a
bounded store call."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from manager.access.directory import AppBody, Directory, EnvBody
from manager.audit.trail import AuditTrail
from manager.core.audit_chain import ChainKey
from manager.core.retention import DAY_S
from manager.records import AttemptRecord, LogRecord
from manager.retention.purge import Purger
from manager.schemas.retention import RetentionRule, RetentionSettings
from manager.store.base import Store
from shared.protocol import TaskState
from tests.manager.core.test_audit_chain import event_draft
from tests.manager.store.test_store import WINDOW, task

NOW = 1_800_000_000.0
KEY = ChainKey("k1", b"k" * 32)


def keys(key_id: str) -> bytes | None:
    return KEY.secret if key_id == KEY.id else None


class Recorded:
    def __init__(self) -> None:
        self.events: list[dict[str, int]] = []

    async def __call__(self, counts: dict[str, int]) -> None:
        self.events.append(counts)


def purger(store: Store, recorded: Recorded, batch: int = 500) -> Purger:
    return Purger(store, lambda: KEY, recorded, clock=lambda: NOW, batch=batch)


async def finished(
    store: Store,
    task_id: str,
    *,
    days_ago: float,
    place: tuple[str, str] | None = None,
    lines: int = 3,
    state: TaskState = TaskState.SUCCEEDED,
) -> None:
    """A task made and ended ``days_ago`` (or left running when ``state`` is RUNNING)."""
    at = NOW - days_ago * DAY_S
    app_id, env_id = place if place is not None else (None, None)
    await store.insert_task(
        task(task_id, created_at=at - 10, app_id=app_id, env_id=env_id),
        idempotency_window=WINDOW,
    )
    running = await store.update_task(
        task_id,
        expect_state=TaskState.QUEUED,
        expect_attempt=0,
        changes={"state": TaskState.RUNNING, "attempt": 1, "delegate_id": "dlg_1"},
        start_attempt=AttemptRecord(task_id, 1, "dlg_1", at - 5),
    )
    assert running is not None
    for start in range(0, lines, 1000):
        batch = [
            LogRecord(attempt=1, seq=i, stream="stdout", ts=at, text=f"line {i}")
            for i in range(start, min(lines, start + 1000))
        ]
        assert await store.append_logs(task_id, 1, "dlg_1", batch) == len(batch)
    if state is TaskState.RUNNING:
        return
    done = await store.update_task(
        task_id,
        expect_state=TaskState.RUNNING,
        expect_attempt=1,
        changes={"state": state, "finished_at": at},
        end_attempt_status=state.value,
        end_attempt_at=at,
    )
    assert done is not None


async def lines_of(store: Store, task_id: str) -> int:
    rows = await store._fetch(  # type: ignore[attr-defined]
        "SELECT COUNT(*) AS n FROM task_logs WHERE task_id = :t", {"t": task_id}
    )
    return int(rows[0]["n"])


async def places(store: Store) -> dict[str, tuple[str, str]]:
    d = Directory(store)
    checkout = await d.apps.insert(AppBody(name="checkout"))
    billing = await d.apps.insert(AppBody(name="billing"))
    out = {}
    for app, name, kind in (
        (checkout, "prod", "production"),
        (checkout, "staging", "non_production"),
        (billing, "prod", "production"),
    ):
        env = await d.envs.insert(EnvBody(app_id=app.id, name=name, type=kind))
        out[f"{app.body.name}/{name}"] = (app.id, env.id)
    return out


async def test_nothing_goes_unless_a_retention_is_set(store: Store) -> None:
    where = await places(store)
    await finished(store, "t_old", days_ago=3000, place=where["checkout/prod"])
    await finished(store, "t_loose", days_ago=3000)
    for n in range(1, 4):
        await store.append_audit(event_draft(n, ts=NOW - 3000 * DAY_S), KEY)
    recorded = Recorded()
    run = await purger(store, recorded).run()
    assert set(run.counts.values()) == {0}
    assert recorded.events == []
    assert await store.get_task("t_old") is not None
    assert await lines_of(store, "t_loose") == 3
    assert (await store.audit_first_seq(), await store.audit_checkpoints()) == (1, [])


async def test_rules_per_app_and_env_type_and_unfinished_tasks_stay(store: Store) -> None:
    where = await places(store)
    prod, staging, billing = (
        where["checkout/prod"],
        where["checkout/staging"],
        where["billing/prod"],
    )
    await finished(store, "t_prod_recent", days_ago=5, place=prod)
    await finished(store, "t_prod_old", days_ago=20, place=prod)
    await finished(store, "t_prod_failed", days_ago=20, place=prod, state=TaskState.FAILED)
    await finished(store, "t_prod_running", days_ago=400, place=prod, state=TaskState.RUNNING)
    await finished(store, "t_staging", days_ago=2, place=staging)
    await finished(store, "t_billing", days_ago=20, place=billing)
    await finished(store, "t_loose", days_ago=400)
    for owner in ("task:t_prod_old", "task:t_staging", "task:t_billing", "task:t_prod_running"):
        await store.add_data_key(owner, b"wrapped", NOW)
    settings = RetentionSettings(
        rules=[
            RetentionRule(app="checkout", env_type="production", logs_days=1, tasks_days=10),
            RetentionRule(env_type="non_production", tasks_days=1),
        ]
    )
    recorded = Recorded()
    p = purger(store, recorded)
    await p.settings.put(settings)
    assert await p.settings.get() == settings

    dry = await p.run(dry_run=True)
    assert dry.counts == {"tasks": 3, "logs": 1, "audit": 0}
    assert await store.get_task("t_prod_old") is not None  # a dry run deletes nothing
    assert recorded.events == []

    run = await p.run()
    assert run.counts == {"tasks": 3, "logs": 1, "audit": 0}
    assert recorded.events == [{"tasks": 3, "logs": 1, "audit": 0}]
    for gone in ("t_prod_old", "t_prod_failed", "t_staging"):
        assert await store.get_task(gone) is None, gone
        assert await lines_of(store, gone) == 0
    # Kept: the record with its logs gone; a running task, however old; what no rule covers.
    assert await store.get_task("t_prod_recent") is not None
    assert await lines_of(store, "t_prod_recent") == 0
    running = await store.get_task("t_prod_running")
    assert running is not None
    assert running.state is TaskState.RUNNING
    assert await lines_of(store, "t_prod_running") == 3
    for kept in ("t_billing", "t_loose"):
        assert await lines_of(store, kept) == 3
    # A purged task's data key goes with it; the keys of tasks kept stay.
    assert await store.data_keys_of(["task:t_prod_old", "task:t_staging"]) == {}
    assert set(await store.data_keys_of(["task:t_billing", "task:t_prod_running"])) == {
        "task:t_billing",
        "task:t_prod_running",
    }
    # Nothing left to do: a second purge deletes nothing and records nothing.
    again = await p.run()
    assert set(again.counts.values()) == {0}
    assert len(recorded.events) == 1


async def _trail(store: Store, n: int, old: int) -> None:
    for i in range(1, n + 1):
        ts = NOW - (10 * DAY_S if i <= old else 0)
        await store.append_audit(event_draft(i, ts=ts), KEY)


async def test_the_audit_trail_stays_verifiable_across_the_cut(store: Store) -> None:
    await _trail(store, 30, old=20)
    recorded = Recorded()
    p = purger(store, recorded)
    await p.settings.put(RetentionSettings(audit_days=5))
    assert (await p.run(dry_run=True)).counts["audit"] == 20
    assert (await p.run()).counts["audit"] == 20
    assert await store.audit_first_seq() == 21
    [cp] = await store.audit_checkpoints()
    assert cp.seq == 20
    trail = AuditTrail(store)
    verified = await trail.verify(keys)
    assert (verified.broken, verified.checked, verified.head_seq) == (None, 10, 30)
    # Without the key the checkpoint is refused.
    broken = (await trail.verify(lambda _k: b"x" * 32)).broken
    assert broken is not None
    assert "bad signature" in broken.reason


async def _sql(store: Store, sql: str) -> None:
    await store._fetch(sql)  # type: ignore[attr-defined]


@pytest.mark.parametrize("tampering", ["drop_checkpoint", "forge", "delete_past_cut"])
async def test_tampering_with_the_cut_breaks_verification(store: Store, tampering: str) -> None:
    await _trail(store, 12, old=6)
    p = purger(store, Recorded())
    await p.settings.put(RetentionSettings(audit_days=5))
    await p.run()
    if tampering == "drop_checkpoint":
        await _sql(store, "DELETE FROM audit_checkpoints")
    elif tampering == "forge":
        # A later checkpoint, signed with a guessed key, to hide deleted events.
        await _sql(store, "DELETE FROM audit_events WHERE seq <= 8")
        [cp] = await store.audit_checkpoints()
        forged = dataclasses.replace(cp, seq=8, signature="0" * 64)
        await store.add_audit_checkpoint(forged)
    else:
        await _sql(store, "DELETE FROM audit_events WHERE seq = 7")
    broken = (await AuditTrail(store).verify(keys)).broken
    assert broken is not None, tampering


async def test_every_batch_is_a_bounded_store_call(store: Store) -> None:
    where = await places(store)
    await finished(store, "t_big", days_ago=30, place=where["checkout/prod"], lines=2_500)
    await finished(store, "t_logs", days_ago=30, place=where["checkout/staging"], lines=1_200)
    await _trail(store, 700, old=650)
    p = purger(store, Recorded(), batch=300)
    await p.settings.put(
        RetentionSettings(
            rules=[
                RetentionRule(env_type="production", tasks_days=7),
                RetentionRule(env_type="non_production", logs_days=7, tasks_days=90),
            ],
            audit_days=5,
        )
    )
    run = await p.run()
    assert run.counts == {"tasks": 1, "logs": 1, "audit": 650}
    by_kind: dict[str, list[Any]] = {}
    for b in run.batches:
        assert b.rows <= 300, b
        by_kind.setdefault(b.kind, []).append(b)
    # 2,500 + 1,200 lines in batches of 300: 9 + 5 calls (each last one short: it ends it).
    assert len(by_kind["logs"]) == 9 + 5
    assert len(by_kind["audit"]) == 3  # 300, 300, 50, then nothing left
    assert sum(b.rows for b in by_kind["logs"]) == 3_700
    assert await lines_of(store, "t_logs") == 0
    assert (await AuditTrail(store).verify(keys)).broken is None
    slowest = max(run.batches, key=lambda b: b.seconds)
    # Measured, not judged (the machine may be loaded): docs/operations.md quotes it.
    print(f"slowest batch: {slowest.kind} {slowest.rows} rows in {slowest.seconds * 1000:.1f} ms")
