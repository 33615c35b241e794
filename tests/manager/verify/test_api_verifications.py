"""The verification routes in process: versioned specs with their audit events, and runs
submitted as verify tasks with the windows of the deployment they judge."""

from __future__ import annotations

import json

from manager.core.audit_chain import AuditQuery
from manager.store.base import Store
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.verify.support import finished_deployment, spec

BASE = "/api/v1/verifications"


async def test_a_changed_spec_is_a_new_version_and_an_unchanged_one_is_not(
    m: Manager, store: Store
) -> None:
    status, v1 = await m.call("PUT", f"{BASE}/checkout", {"spec": spec()})
    assert (status, v1["version"]) == (201, 1)
    status, again = await m.call("PUT", f"{BASE}/checkout", {"spec": spec()})
    assert (status, again["version"]) == (200, 1)
    status, v2 = await m.call(
        "PUT", f"{BASE}/checkout", {"spec": spec(auth={"bearer_token_secret": "prom-token"})}
    )
    assert (status, v2["version"]) == (201, 2)
    _, latest = await m.call("GET", f"{BASE}/checkout")
    assert latest["version"] == 2
    assert latest["spec"]["provider"]["auth"]["bearer_token_secret"] == "prom-token"
    _, first = await m.call("GET", f"{BASE}/checkout?version=1")
    assert first["spec"]["provider"]["auth"] == {
        k: None for k in latest["spec"]["provider"]["auth"]
    } | {"basic_username": None}
    _, listed = await m.call("GET", BASE)
    assert [(v["name"], v["version"]) for v in listed["verifications"]] == [("checkout", 2)]
    events = await store.list_audit(AuditQuery(resource_type="verification"))
    assert sorted(e.action for e in events) == ["create", "update"]  # none for the repeat
    update = next(e for e in events if e.action == "update")
    assert "prom-token" in update.diff  # a secret's name, never a value


async def test_delete_removes_every_version_with_one_event(m: Manager, store: Store) -> None:
    await m.call("PUT", f"{BASE}/gone", {"spec": spec()})
    await m.call("PUT", f"{BASE}/gone", {"spec": spec(query_timeout_s=3)})
    status, _ = await m.call("DELETE", f"{BASE}/gone")
    assert status == 204
    assert (await m.call("GET", f"{BASE}/gone"))[0] == 404
    assert (await m.call("GET", f"{BASE}/gone?version=1"))[0] == 404
    assert (await m.call("DELETE", f"{BASE}/gone"))[0] == 404
    events = await store.list_audit(AuditQuery(resource_type="verification", action="delete"))
    assert len(events) == 1
    assert "version: 2" in events[0].diff


async def test_bad_specs_are_one_line_400s_that_change_nothing(m: Manager) -> None:
    bad = [
        ({"spec": {**spec(), "queries": []}}, "queries"),
        ({"spec": {**spec(), "window": {"analysis": "soon"}}}, "duration"),
        ({"spec": spec(auth={"basic_username": "u"})}, "go together"),
        ({"spec": spec(url="ftp://x")}, "url"),
        (
            {"spec": {**spec(), "queries": [{**spec()["queries"][0], "threshold": {}}]}},
            "exactly one of absolute, delta or ratio",
        ),
    ]
    for body, words in bad:
        status, answer = await m.call("PUT", f"{BASE}/bad", body)
        assert status == 400, answer
        assert words in answer["error"]["message"], answer
        assert "\n" not in answer["error"]["message"]
    assert (await m.call("PUT", f"{BASE}/bad name", {"spec": spec()}))[0] == 400
    assert (await m.call("GET", f"{BASE}/bad"))[0] == 404


async def test_a_run_is_a_verify_task_with_the_deployments_windows(
    m: Manager, store: Store
) -> None:
    deployment = await finished_deployment(store, started_at=5000.0, finished_at=5060.0)
    body = {
        "deployment": deployment,
        "spec": spec(auth={"bearer_token_secret": "prom-token"}),
        "selectors": ["dc-1"],
    }
    status, task = await m.call("POST", "/api/v1/verification-runs", body)
    assert status == 201, task
    assert task["type"] == "verify"
    assert task["selectors"] == ["dc-1"]
    payload = task["payload"]
    assert payload["window"] == {
        "baseline_start": 5000.0 - 600,
        "baseline_end": 5000.0,
        "analysis_start": 5060.0,
        "analysis_end": 5060.0 + 600,
    }
    # The secret by reference, resolved on the delegate like any task's.
    assert payload["credentials"] == {"bearer_token": '${secrets.getValue("prom-token")}'}
    events = await store.list_audit(AuditQuery(resource_type="task"))
    assert [e.action for e in events] == ["create"]


async def test_a_run_of_a_named_verification_uses_the_version_asked_for(
    m: Manager, store: Store
) -> None:
    await m.call("PUT", f"{BASE}/checkout", {"spec": spec()})
    await m.call("PUT", f"{BASE}/checkout", {"spec": {**spec(), "sensitivity": 2}})
    deployment = await finished_deployment(store)
    for version, sensitivity in ((None, 2), (1, 1)):
        body = {"deployment": deployment, "verification": "checkout", "version": version}
        status, task = await m.call("POST", "/api/v1/verification-runs", body)
        assert status == 201, task
        assert task["payload"]["spec"]["sensitivity"] == sensitivity


async def test_runs_that_cannot_be_made_are_refused_by_name(m: Manager, store: Store) -> None:
    runs = "/api/v1/verification-runs"
    not_deployed = await finished_deployment(store, deployed=False)
    _, queued = await m.call(
        "POST",
        "/api/v1/tasks",
        {
            "payload": {"type": "shell", "script": "deploy"},
            "deployment": {"service": "shop", "environment": "prod"},
        },
    )
    deployment = await finished_deployment(store)
    cases = [
        ({"deployment": "task_nope", "spec": spec()}, 404, "no task task_nope"),
        ({"deployment": not_deployed, "spec": spec()}, 409, "is not a deployment"),
        ({"deployment": queued["id"], "spec": spec()}, 409, "has not finished"),
        ({"deployment": deployment, "verification": "nope"}, 404, "no verification nope"),
        ({"deployment": deployment}, 400, "give a spec or the name"),
        (
            {"deployment": deployment, "spec": spec(), "verification": "x"},
            400,
            "give a spec or the name",
        ),
    ]
    for body, status, words in cases:
        got, answer = await m.call("POST", runs, body)
        assert (got, words in json.dumps(answer)) == (status, True), answer
