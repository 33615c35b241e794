"""Delegates disconnected longer than the set time are pruned by the sweep, each with its
own audit event; those heard within it (here or by another replica) are kept. The wall
clock is injected: no test waits for days."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.cli import main
from manager.core.audit_chain import AuditQuery
from manager.records import DelegateRecord, Presence
from manager.server.app import ManagerConfig, build_app
from manager.server.housekeeping import PRUNER
from manager.store.base import Store

DAY = 86400.0
NOW = 1_800_000_000.0


def _delegate(n: int, last_seen: float) -> DelegateRecord:
    return DelegateRecord(
        id=f"dlg_{n}",
        name=f"host-{n}",
        token_id="tok_1",
        hostname=f"host-{n}.internal",
        version="0.1.0",
        protocol_version=1,
        selectors=("linux",),
        task_types=("shell",),
        capacity=1,
        public_key=f"{n:02d}" * 22,
        created_at=last_seen,
        last_seen=last_seen,
    )


async def test_the_sweep_prunes_long_disconnected_delegates_with_an_event_each(
    store: Store, tmp_path: Path
) -> None:
    clock = [NOW]
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path, clock=lambda: clock[0]), store)
    for n, age in ((1, 8 * DAY), (2, 30 * DAY), (3, 6 * DAY), (4, 9 * DAY)):
        assert await store.upsert_delegate(_delegate(n, NOW - age)) is not None
    # host-4 registered 9 days ago, but another replica heard it an hour ago: kept.
    await store.record_presence(
        "replica-b", NOW - DAY, NOW, [Presence("dlg_4", "replica-b", "stream", NOW - 3600)]
    )
    pruner = app[PRUNER]
    assert pruner.after == 7 * DAY

    pruned = await pruner.prune_once()

    assert sorted(d.name for d in pruned) == ["host-1", "host-2"]
    assert sorted(d.name for d in await store.list_delegates()) == ["host-3", "host-4"]
    events = await store.list_audit(AuditQuery(resource_type="delegate", action="prune"))
    assert sorted(e.resource_name for e in events) == ["host-1", "host-2"]
    for e in events:
        assert (e.actor_kind, e.method) == ("system", "SWEEP")
        assert e.ts == NOW
        assert "longer than 7 day(s)" in e.summary
    # A day and a half on, host-3 (then 7.5 days) goes too; nothing is pruned twice.
    clock[0] = NOW + 1.5 * DAY
    assert [d.name for d in await pruner.prune_once()] == ["host-3"]
    assert await pruner.prune_once() == []
    events = await store.list_audit(AuditQuery(resource_type="delegate", action="prune"))
    assert len(events) == 3


async def test_zero_turns_pruning_off(store: Store, tmp_path: Path) -> None:
    app, _ = await build_app(
        ManagerConfig(data_dir=tmp_path, clock=lambda: NOW, prune_delegates_after=0), store
    )
    await store.upsert_delegate(_delegate(1, NOW - 400 * DAY))
    assert await app[PRUNER].prune_once() == []
    assert len(await store.list_delegates()) == 1


@pytest.mark.parametrize("bad", ["-1", "inf"])
def test_a_bad_prune_setting_is_a_usage_error(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), "--prune-delegates-after", bad]) == 2
    assert capsys.readouterr().err == (
        "error: --prune-delegates-after takes days, 0 (never) or more\n"
    )
