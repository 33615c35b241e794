"""Migration 12 over a database that holds idempotency keys from before they were scoped: each
key now belongs to its task's submitter and place, so that submitter's replay still finds the
task and nobody else's does. (API keys gain a created_by column, empty for existing keys.)"""

from __future__ import annotations

import dataclasses

import pytest

from manager.store import migrations
from manager.tasks.idempotency import scoped, shown
from shared.protocol import TaskState
from tests.manager.conftest import StoreMaker
from tests.manager.store.test_access import _raw

NOW = 1_700_000_000.0


def _row(task_id: str, key: str, submitter: str | None, app: str | None, env: str | None) -> str:
    def lit(v: str | None) -> str:
        return "NULL" if v is None else f"'{v}'"

    return (
        "INSERT INTO tasks(id, type, state, payload, selectors, timeout_s, queue_timeout_s,"
        " max_attempts, created_at, idempotency_key, submitted_by, app_id, env_id) VALUES"
        f" ('{task_id}', 'shell', 'succeeded', '{{\"type\": \"shell\", \"script\": \"x\"}}',"
        f" '[]', 60, 60, 1, {NOW}, '{key}', {lit(submitter)}, {lit(app)}, {lit(env)})"
    )


async def test_migration_12_scopes_existing_keys_to_their_submitter_and_place(
    new_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    every = new_store.migrations
    monkeypatch.setattr(migrations, "MIGRATIONS", [m for m in every if m[0] < 12])
    old = new_store()
    await old.open()
    await old.close()
    await _raw(new_store, _row("task_prod", "deploy-1", "usr_admin", "app_c", "env_prod"))
    await _raw(new_store, _row("task_loose", "nightly", None, None, None))

    monkeypatch.setattr(migrations, "MIGRATIONS", every)
    s = new_store()
    await s.open()
    try:
        assert 12 in await new_store.schema_versions()
        prod = await s.get_task("task_prod")
        assert prod is not None
        assert prod.idempotency_key == scoped("deploy-1", "usr_admin", "app_c", "env_prod")
        assert shown(prod.idempotency_key) == "deploy-1"
        loose = await s.get_task("task_loose")
        assert loose is not None
        assert shown(loose.idempotency_key) == "nightly"

        fresh = dataclasses.replace(prod, id="task_new", state=TaskState.QUEUED, created_at=NOW)
        # The same submitter in the same place finds its task ...
        found, created = await s.insert_task(fresh, idempotency_window=3600)
        assert (found.id, created) == ("task_prod", False)
        # ... another submitter, or the same one elsewhere, gets a task of its own.
        for who, env in (("usr_staging", "env_prod"), ("usr_admin", "env_staging")):
            other = dataclasses.replace(
                fresh,
                id=f"task_{who}_{env}",
                idempotency_key=scoped("deploy-1", who, "app_c", env),
            )
            made, created = await s.insert_task(other, idempotency_window=3600)
            assert (made.id, created) == (other.id, True)
        keys = {k.id: k for k in await s.list_api_keys()}
        assert all(k.created_by is None for k in keys.values())
    finally:
        await s.close()


def test_the_shown_key_is_the_one_given_whatever_it_holds() -> None:
    for key in ("plain", "with\x1fseparator", "a/b:c", " "):
        assert shown(scoped(key, "usr_1", "app_1", "env_1")) == key
        assert shown(scoped(key, None, None, None)) == key
    # Scopes that differ in any part never store the same key.
    parts = [("usr_1", "app_1", "env_1"), ("usr_2", "app_1", "env_1"), ("usr_1", "app_1", "env_2")]
    assert len({scoped("k", *p) for p in parts}) == 3
    # A separator smuggled into a part cannot make two scopes collide.
    assert scoped("k", "usr_1\x1fapp_1", None, None) != scoped("k", "usr_1", "app_1", None)
