"""Runbooks through the REST API: definitions and their versions, runs and who may start,
approve or cancel them, standards refusing a production run, and what is sealed at rest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manager.access.directory import Directory, GroupBody, SessionBody, UserBody
from manager.access.principal import Principal, SessionTokens
from manager.api.context import CTX
from manager.core.audit_chain import AuditQuery
from manager.core.identity import Actor
from manager.core.rbac import FULL, Grants
from manager.errors import Forbidden, Invalid
from manager.runbooks.service import start_run
from manager.schemas.grants import AppGrant
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.rbac_support import place

EXEC = AppGrant(actions=("read", "execute"))
READ = AppGrant(actions=("read",))


async def person(store: Store, email: str, group: str, *apps: AppGrant) -> str:
    """A session for a new user in ``group`` (made if missing, holding ``apps``)."""
    d = Directory(store)
    found = await d.groups.by_key(group) or await d.groups.insert(
        GroupBody(name=group, app_permissions=list(apps))
    )
    user = await d.users.insert(UserBody(email=email, status="active", groups=[found.id]))
    token = await SessionTokens(store).new()
    await d.sessions.insert(
        SessionBody(token_hash=hash_secret(token), user_id=user.id, expires_at=4e9)
    )
    return token


def restart_api(**extra: Any) -> dict[str, Any]:
    return {
        "name": "restart-api",
        "app": "shop",
        "env": "prod",
        "tags": ["ops"],
        "inputs": [
            {"name": "reason", "type": "string"},
            {"name": "replicas", "type": "number", "default": 2},
        ],
        "steps": [
            {"name": "gate", "kind": "approval", "groups": ["sre"], "timeout_s": 600},
            {
                "name": "restart",
                "kind": "shell",
                "tags": ["security-scan"],
                "script": 'echo "restarting because $INPUT_REASON"',
            },
        ],
        **extra,
    }


@pytest.fixture
async def shop(store: Store) -> None:
    await place(store, "shop", "prod", "production")
    await place(store, "shop", "dev", "non_production")


async def test_apply_versions_get_and_delete(m: Manager, shop: None) -> None:
    status, view = await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api())
    assert status == 200, view
    assert view["version"] == 1
    # The same document again is no new version; a change is.
    assert (await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api()))[1]["version"] == 1
    changed = restart_api(description="v2")
    assert (await m.call("PUT", "/api/v1/runbooks/restart-api", changed))[1]["version"] == 2
    status, old = await m.call("GET", "/api/v1/runbooks/restart-api?version=1")
    assert status == 200
    assert old["definition"]["description"] == ""
    status, listed = await m.call("GET", "/api/v1/runbooks")
    assert [r["name"] for r in listed["runbooks"]] == ["restart-api"]
    events = await m.store.list_audit(AuditQuery(resource_type="runbook"))
    assert [e.action for e in events] == ["update", "create"]
    assert (await m.call("DELETE", "/api/v1/runbooks/restart-api"))[0] == 204
    assert (await m.call("GET", "/api/v1/runbooks/restart-api"))[0] == 404


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"steps": [{"name": "v", "kind": "verify", "spec": {"q": 1}}]}, "not available"),
        ({"steps": [{"name": "x", "kind": "teleport"}]}, "unknown step kind"),
        ({"steps": [{"name": "s", "kind": "shell"}]}, "needs a script"),
        (
            {"steps": [{"name": "s", "kind": "shell", "script": "x", "when": "inputs.nope"}]},
            "no input 'nope'",
        ),
        (
            {
                "steps": [
                    {"name": "a", "kind": "shell", "script": "x", "when": "steps.b.status"},
                    {"name": "b", "kind": "shell", "script": "x"},
                ]
            },
            "not an earlier step",
        ),
        ({"steps": [{"name": "h", "kind": "http", "url": "https://x/${{ 1 + }}"}]}, "unexpected"),
    ],
)
async def test_a_bad_definition_is_a_400_and_changes_nothing(
    m: Manager, shop: None, change: dict[str, Any], words: str
) -> None:
    status, body = await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api(**change))
    assert status == 400, body
    assert words in body["error"]["message"]
    assert (await m.call("GET", "/api/v1/runbooks/restart-api"))[0] == 404


async def test_approval_by_another_member_then_the_step_is_a_task(
    m: Manager, store: Store, shop: None
) -> None:
    await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api())
    alice = await person(store, "alice@example.com", "ops", EXEC)
    bob = await person(store, "bob@example.com", "sre", EXEC)
    status, run = await m.call(
        "POST", "/api/v1/runbooks/restart-api/runs", {"inputs": {"reason": "leak"}}, key=alice
    )
    assert status == 201, run
    assert run["state"] == "waiting_for_approval"
    assert run["inputs"] == ["reason", "replicas"]
    path = f"/api/v1/runbook-runs/{run['id']}"
    # Alice is not in sre, and started it anyway.
    status, body = await m.call("POST", f"{path}/approve", {}, key=alice)
    assert status == 403
    assert "another person" in body["error"]["message"]
    status, done = await m.call("POST", f"{path}/approve", {"reason": "go"}, key=bob)
    assert status == 200, done
    assert done["steps"][0]["status"] == "succeeded"
    assert done["steps"][0]["approvals"][0]["user"] == "bob@example.com"
    task_id = done["steps"][1]["task_id"]
    task = await store.get_task(task_id)
    assert task is not None
    # The script is the runbook's own; the input reaches it only as its environment.
    assert task.payload["script"] == 'echo "restarting because $INPUT_REASON"'
    assert task.payload["env"] == {"INPUT_REASON": "leak", "INPUT_REPLICAS": "2"}
    # Sealed at rest: the run's row holds no input value.
    rows = await store.list_entities("runbook_run")
    assert "leak" not in json.dumps([r.body for r in rows])
    # Cancelling cancels the step's task.
    status, cancelled = await m.call("POST", f"{path}/cancel", key=alice)
    assert status == 200
    assert cancelled["state"] == "cancelled"
    assert (await store.get_task(task_id)).state.value == "cancelled"  # type: ignore[union-attr]
    actions = [e.action for e in await store.list_audit(AuditQuery(resource_type="runbook_run"))]
    assert actions == ["cancel", "approve", "create"]


async def test_rejection_fails_the_run_and_self_approval_when_allowed(
    m: Manager, store: Store, shop: None
) -> None:
    await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api(allow_self_approval=True))
    carol = await person(store, "carol@example.com", "sre", EXEC)
    _, run = await m.call(
        "POST", "/api/v1/runbooks/restart-api/runs", {"inputs": {"reason": "x"}}, key=carol
    )
    status, body = await m.call(
        "POST", f"/api/v1/runbook-runs/{run['id']}/reject", {"reason": "not now"}, key=carol
    )
    assert status == 200, body
    assert body["state"] == "failed"
    assert "rejected by carol@example.com: not now" in body["reason"]
    # Ended: no second decision.
    status, body = await m.call("POST", f"/api/v1/runbook-runs/{run['id']}/approve", {}, key=carol)
    assert status == 409


async def test_running_needs_execute_and_bad_inputs_are_400(
    m: Manager, store: Store, shop: None
) -> None:
    await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api())
    reader = await person(store, "r@example.com", "readers", AppGrant(actions=("read",)))
    status, body = await m.call(
        "POST", "/api/v1/runbooks/restart-api/runs", {"inputs": {"reason": "x"}}, key=reader
    )
    assert status == 403
    assert body["error"]["message"] == "you may not execute in shop/prod"
    for inputs, words in (
        ({}, "input 'reason': is required"),
        ({"reason": "x", "replicas": "many"}, "input 'replicas': is not a number"),
        ({"reason": "x", "other": "1"}, "input 'other': the runbook has no such input"),
    ):
        status, body = await m.call("POST", "/api/v1/runbooks/restart-api/runs", {"inputs": inputs})
        assert status == 400, body
        assert body["error"]["message"] == words
    assert await store.list_entities("runbook_run") == []
    # Nobody outside read sees the run.
    _, run = await m.call("POST", "/api/v1/runbooks/restart-api/runs", {"inputs": {"reason": "x"}})
    stranger = await person(store, "s@example.com", "nobody")
    assert (await m.call("GET", f"/api/v1/runbook-runs/{run['id']}", key=stranger))[0] == 404
    assert (await m.call("GET", "/api/v1/runbook-runs", key=stranger))[1]["runs"] == []


async def test_an_enforced_standard_refuses_a_production_run_below_its_minimum(
    m: Manager, store: Store, shop: None
) -> None:
    standard = {
        "name": "prod-readiness",
        "rules": [
            {"rule": "has_step_kind", "value": "approval", "weight": 5},
            {"rule": "has_step_tagged", "value": "security-scan", "weight": 3},
            {"rule": "has_rollback", "weight": 2},
        ],
        "enforce_env_types": ["production"],
        "minimum": 90,
    }
    status, body = await m.call("PUT", "/api/v1/standards/prod-readiness", standard)
    assert status == 200, body
    await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api())
    _, view = await m.call("GET", "/api/v1/runbooks/restart-api")
    assert view["scores"][0]["score"] == 80.0
    assert view["scores"][0]["unmet"] == ["has a rollback step (2)"]
    status, body = await m.call(
        "POST", "/api/v1/runbooks/restart-api/runs", {"inputs": {"reason": "x"}}
    )
    assert status == 409
    assert body["error"]["message"] == (
        "run refused: standard 'prod-readiness' scores 80 %, below the 90 % required here;"
        " unmet: has a rollback step (2)"
    )
    assert await store.list_entities("runbook_run") == []
    # The same runbook aimed at dev is not held to it.
    dev = restart_api(name="restart-dev", env="dev")
    await m.call("PUT", "/api/v1/runbooks/restart-dev", dev)
    status, run = await m.call(
        "POST", "/api/v1/runbooks/restart-dev/runs", {"inputs": {"reason": "x"}}
    )
    assert status == 201, run
    assert run["scores"][0]["score"] == 80.0
    assert run["scores"][0]["enforced"] is False
    # Standards are governance.
    plain = await person(store, "p@example.com", "plain", EXEC)
    assert (await m.call("PUT", "/api/v1/standards/x", {**standard, "name": "x"}, key=plain))[
        0
    ] == 403


async def test_the_webhook_entry_point_starts_a_run_and_audits_it_in_its_transaction(
    m: Manager, store: Store, shop: None
) -> None:
    await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api())
    ctx = m.client.app[CTX]
    hook = Principal(Actor("api_key", "hook_1", "alertmanager"), FULL)
    with pytest.raises(Invalid, match="input 'replicas': is not a number"):
        await start_run(ctx, "restart-api", {"reason": "x", "replicas": "x"}, hook, trigger="t")
    reader = Principal(Actor("api_key", "hook_2", "reader"), Grants(frozenset(), (READ,)))
    with pytest.raises(Forbidden):
        await start_run(ctx, "restart-api", {"reason": "x"}, reader, trigger="t")
    assert await store.list_entities("runbook_run") == []
    run_id = await start_run(
        ctx, "restart-api", {"reason": "disk"}, hook, trigger="hook:alertmanager", incident_id="i1"
    )
    status, run = await m.call("GET", f"/api/v1/runbook-runs/{run_id}")
    assert status == 200, run
    assert (run["trigger"], run["incident_id"], run["state"]) == (
        "hook:alertmanager",
        "i1",
        "waiting_for_approval",
    )
    [event] = await store.list_audit(AuditQuery(resource_type="runbook_run"))
    assert (event.method, event.path, event.actor_name) == (
        "TRIGGER",
        "hook:alertmanager",
        "alertmanager",
    )
    assert "disk" not in str(event)


async def test_a_retried_start_with_its_key_returns_the_same_run(m: Manager, shop: None) -> None:
    await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api())
    await m.call("PUT", "/api/v1/runbooks/other", restart_api(name="other"))
    body = {"inputs": {"reason": "x"}, "idempotency_key": "k1"}
    status, first = await m.call("POST", "/api/v1/runbooks/restart-api/runs", body)
    assert status == 201, first
    status, again = await m.call("POST", "/api/v1/runbooks/restart-api/runs", body)
    assert (status, again["id"]) == (200, first["id"])
    status, other = await m.call("POST", "/api/v1/runbooks/other/runs", body)
    assert status == 409, other
    assert f"was used for run {first['id']} of restart-api" in other["error"]["message"]
    assert len((await m.call("GET", "/api/v1/runbook-runs"))[1]["runs"]) == 1


async def test_env_as_an_input_and_a_secret_input_need_their_permissions(
    m: Manager, store: Store, shop: None
) -> None:
    anywhere = {
        "name": "anywhere",
        "app": "shop",
        "inputs": [
            {"name": "env", "type": "enum", "values": ["dev", "prod"]},
            {"name": "token", "type": "secret", "required": False},
        ],
        "steps": [{"name": "s", "kind": "shell", "script": "true"}],
    }
    updater = await person(store, "u@example.com", "updaters", AppGrant(actions=("update",)))
    status, body = await m.call("PUT", "/api/v1/runbooks/anywhere", anywhere, key=updater)
    assert status == 403
    assert "needs manage_applications" in body["error"]["message"]
    assert (await m.call("PUT", "/api/v1/runbooks/anywhere", anywhere))[0] == 200
    dev_only = AppGrant(envs="non_production", actions=("read", "execute"))
    dev = await person(store, "d@example.com", "devs", dev_only)
    path = "/api/v1/runbooks/anywhere/runs"
    status, run = await m.call("POST", path, {"inputs": {"env": "dev"}}, key=dev)
    assert status == 201, run
    assert (run["app"], run["env"]) == ("shop", "dev")
    status, body = await m.call("POST", path, {"inputs": {"env": "prod"}}, key=dev)
    assert (status, body["error"]["message"]) == (403, "you may not execute in shop/prod")
    # A secret input is a secret in use: create, read and update there, as for a task.
    status, body = await m.call("POST", path, {"inputs": {"env": "dev", "token": "t"}}, key=dev)
    assert status == 403
    assert body["error"]["message"] == (
        "running a runbook that uses secrets needs create, read and update in its"
        " environment (shop/dev)"
    )


async def test_a_freeze_window_refuses_a_run_unless_overridden_with_a_reason(
    m: Manager, store: Store, shop: None
) -> None:
    no_gate = restart_api(steps=[{"name": "restart", "kind": "shell", "script": "true"}])
    await m.call("PUT", "/api/v1/runbooks/restart-api", no_gate)
    now = m.clock()
    window = {"name": "release", "start": now - 60, "end": now + 3600, "env_types": ["production"]}
    assert (await m.call("POST", "/api/v1/freezes", window))[0] == 201
    start = {"inputs": {"reason": "x"}}

    status, body = await m.call("POST", "/api/v1/runbooks/restart-api/runs", start)
    assert status == 409
    assert body["error"]["code"] == "frozen"
    assert "freeze window 'release'" in body["error"]["message"]
    assert await store.list_entities("runbook_run") == []

    # Without override_freeze, a reason does not help.
    runner = await person(store, "runner@example.com", "runners", EXEC)
    status, _ = await m.call(
        "POST",
        "/api/v1/runbooks/restart-api/runs",
        {**start, "override_freeze": "hotfix"},
        key=runner,
    )
    assert status == 403
    assert await store.list_entities("runbook_run") == []

    # An administrator (every permission) proceeds, and the reason is in the run's event.
    status, run = await m.call(
        "POST", "/api/v1/runbooks/restart-api/runs", {**start, "override_freeze": "hotfix 42"}
    )
    assert status == 201, run
    events = await store.list_audit(AuditQuery(resource_type="runbook_run", action="create"))
    assert [e.resource_id for e in events] == [run["id"]]
    assert "hotfix 42" in json.dumps(events[0].diff)
