"""Incidents and runbook runs sealed under data keys of their own (``incident:<id>``,
``run:<id>``): what the rows hold, values sealed the older way (the master key directly)
still opening, a master-key rotation re-wrapping their keys, and the incident retention's
purge deleting an incident's key with it. On SQLite and PostgreSQL (the ``store`` fixture of
tests/manager/conftest.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.api.incident_services import INCIDENT_SERVICES
from manager.incidents.incidents import IncidentBody
from manager.incidents.sealing import seal_legacy
from manager.keys.data_keys import rewrap_data_keys
from manager.keys.masterkey import MasterKey
from manager.runbooks.sealing import seal_json_legacy
from manager.server.incident_wiring import purge_once
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager
from tests.manager.api.test_incidents import _alert, _deliver, _hook, ok
from tests.manager.rbac_support import place
from tests.manager.runbooks.test_api_runbooks import EXEC, person, restart_api

SECRET_REASON = "reason-7f3a-leak"


@pytest.fixture(name="m")
async def one_manager(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    async with manager(tmp_path, store, Clock()) as replica:
        yield replica


@pytest.fixture
async def shop(store: Store) -> None:
    await place(store, "shop", "prod", "production")


async def _incident(m: Manager) -> str:
    hook = await _hook(m, name="am", kind="alertmanager", auth="bearer")
    bearer = {"Authorization": f"Bearer {hook['secret']}"}
    status, fired = await _deliver(m, hook, _alert("firing"), bearer)
    assert status == 202, fired
    return str(fired["incident_id"])


async def _run(m: Manager, store: Store) -> tuple[str, str]:
    """A run waiting for approval, with its input sealed; (its id, a session that may
    approve it)."""
    await ok(m, "PUT", "/api/v1/runbooks/restart-api", restart_api(allow_self_approval=True))
    carol = await person(store, "carol@example.com", "sre", EXEC)
    status, run = await m.call(
        "POST",
        "/api/v1/runbooks/restart-api/runs",
        {"inputs": {"reason": SECRET_REASON}},
        key=carol,
    )
    assert status == 201, run
    return str(run["id"]), carol


async def _approved_env(m: Manager, run_id: str, session: str) -> dict[str, Any]:
    """Approve the run: its step's task gets the inputs, which must open to be given."""
    status, done = await m.call(
        "POST", f"/api/v1/runbook-runs/{run_id}/approve", {"reason": "go"}, key=session
    )
    assert status == 200, done
    _, task = await m.call("GET", f"/api/v1/tasks/{done['steps'][1]['task_id']}")
    return dict(task["payload"]["env"])


async def test_sealed_under_their_own_keys_and_readable_after_a_rotation(
    tmp_path: Path, store: Store, shop: None
) -> None:
    async with manager(tmp_path, store, Clock()) as m:
        incident_id = await _incident(m)
        run_id, carol = await _run(m, store)
    owners = [f"incident:{incident_id}", f"run:{run_id}"]
    incident = await store.get_entity("incident", incident_id)
    run = await store.get_entity("runbook_run", run_id)
    assert incident is not None
    assert run is not None
    assert incident.body["sealed"].startswith("dk1:")
    assert run.body["inputs_sealed"].startswith("dk1:")
    assert SECRET_REASON not in json.dumps(run.body)
    assert set(await store.data_keys_of(owners)) == set(owners)

    master = MasterKey.load_or_create(tmp_path / "master.key")
    new = master.rotate()
    report = await rewrap_data_keys(store, master)
    assert report.failed == []
    assert {MasterKey.wrapped_key_id(w) for w in (await store.data_keys_of(owners)).values()} == {
        new
    }
    # The rows were not touched, and a fresh replica (no key cached) opens both.
    assert await store.get_entity("incident", incident_id) == incident
    async with manager(tmp_path, store, Clock()) as fresh:
        got = await ok(fresh, "GET", f"/api/v1/incidents/{incident_id}")
        assert got["title"] == "db-1 load is high"
        assert (await _approved_env(fresh, run_id, carol))["INPUT_REASON"] == SECRET_REASON


async def test_values_sealed_with_the_master_key_still_open(
    tmp_path: Path, store: Store, shop: None
) -> None:
    master = MasterKey.load_or_create(tmp_path / "master.key")
    async with manager(tmp_path, store, Clock()) as m:
        incident_id = await _incident(m)
        run_id, carol = await _run(m, store)
        data = {"title": "old title", "severity": "low", "source": "am", "timeline": []}

        def legacy_incident(body: IncidentBody) -> IncidentBody:
            return body.model_copy(update={"sealed": seal_legacy(master, incident_id, data)})

        await m.client.app[INCIDENT_SERVICES].incidents.kind.update(incident_id, legacy_incident)
        run = await store.get_entity("runbook_run", run_id)
        assert run is not None
        inputs = {"reason": SECRET_REASON, "replicas": "2"}
        body = {**run.body, "inputs_sealed": seal_json_legacy(master, run_id, "inputs", inputs)}
        assert await store.update_entity(
            dataclasses.replace(run, body=body, version=run.version + 1), run.version
        )
    # As written before data keys: no key, the values under the master key.
    for owner in (f"incident:{incident_id}", f"run:{run_id}"):
        assert await store.delete_data_key(owner)

    async with manager(tmp_path, store, Clock()) as fresh:
        got = await ok(fresh, "GET", f"/api/v1/incidents/{incident_id}")
        assert (got["title"], got["severity"]) == ("old title", "low")
        listed = await ok(fresh, "GET", "/api/v1/incidents")
        assert [i["title"] for i in listed["incidents"]] == ["old title"]
        assert (await _approved_env(fresh, run_id, carol))["INPUT_REASON"] == SECRET_REASON
        # The next change seals the incident under a key of its own.
        await ok(fresh, "POST", f"/api/v1/incidents/{incident_id}/notes", {"text": "later"})
    row = await store.get_entity("incident", incident_id)
    assert row is not None
    assert row.body["sealed"].startswith("dk1:")
    assert f"incident:{incident_id}" in await store.data_keys_of([f"incident:{incident_id}"])
    async with manager(tmp_path, store, Clock()) as again:
        got = await ok(again, "GET", f"/api/v1/incidents/{incident_id}")
        assert [t["text"] for t in got["timeline"]] == ["later"]


async def test_the_retention_purge_deletes_the_incidents_data_keys(
    tmp_path: Path, store: Store
) -> None:
    clock = Clock()
    async with manager(tmp_path, store, clock) as m:
        incident_id = await _incident(m)
        row = await store.get_entity("incident", incident_id)
        assert row is not None
        await ok(m, "PUT", "/api/v1/incident-retention", {"days": 1})
        # The keys of other owners are not touched, incidents' or tasks'.
        await store.add_data_key("incident:inc_other", b"w", row.created_at)
        await store.add_data_key("task:t1", b"w", row.created_at)
        owners = [f"incident:{incident_id}", "incident:inc_other", "task:t1"]

        assert await purge_once(m.client.app, row.updated_at + 0.5 * 86400) == 0
        assert set(await store.data_keys_of(owners)) == set(owners)
        assert await purge_once(m.client.app, row.updated_at + 2 * 86400) == 1
        assert set(await store.data_keys_of(owners)) == {"incident:inc_other", "task:t1"}
        status, _ = await m.call("GET", f"/api/v1/incidents/{incident_id}")
        assert status == 404


async def test_a_retried_run_start_leaves_no_key_behind(
    m: Manager, store: Store, shop: None
) -> None:
    await ok(m, "PUT", "/api/v1/runbooks/restart-api", restart_api())
    start = {"inputs": {"reason": "x"}, "idempotency_key": "once"}
    status, first = await m.call("POST", "/api/v1/runbooks/restart-api/runs", start)
    assert status == 201, first
    status, again = await m.call("POST", "/api/v1/runbooks/restart-api/runs", start)
    assert (status, again["id"]) == (200, first["id"])
    runs = [o for o, _ in await store.data_keys_after("run:", 100) if o.startswith("run:")]
    assert runs == [f"run:{first['id']}"]
