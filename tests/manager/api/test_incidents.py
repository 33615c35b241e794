"""Freeze windows against task submission, incoming webhooks (signed, GitHub-style, bearer;
tampered, stale, replayed, oversized: all refused and counted), and incidents opened and
resolved by Alertmanager deliveries, sealed at rest and purged per retention. On SQLite and
PostgreSQL (the ``store`` fixture of tests/manager/conftest.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from manager.api.incident_services import INCIDENT_SERVICES
from manager.core.hooksig import github_signature, sign
from manager.records import AllowlistEntry
from manager.server.incident_wiring import purge_once
from manager.store.base import Store
from tests.manager.access_support import Clock, Manager, manager
from tests.manager.rbac_support import member

HOUR = 3600.0


@pytest.fixture(name="m")
async def one_manager(tmp_path: Path, store: Store) -> AsyncIterator[Manager]:
    async with manager(tmp_path, store, Clock()) as replica:
        yield replica


async def ok(m: Manager, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, answer = await m.call(method, path, body)
    assert got == status, answer
    return answer


async def audit_text(m: Manager) -> str:
    return json.dumps(await ok(m, "GET", "/api/v1/audit", None))


SHELL = {"payload": {"type": "shell", "script": "true"}, "app": "shop", "env": "prod"}


async def test_a_freeze_refuses_tasks_in_its_places_until_it_ends_or_is_overridden(
    m: Manager, store: Store
) -> None:
    await ok(m, "POST", "/api/v1/apps", {"name": "shop"}, 201)
    await ok(m, "POST", "/api/v1/apps/shop/envs", {"name": "prod", "type": "production"}, 201)
    await ok(m, "POST", "/api/v1/apps/shop/envs", {"name": "qa", "type": "non_production"}, 201)
    now = m.clock()
    made = await ok(
        m,
        "POST",
        "/api/v1/freezes",
        {"name": "release", "start": now - 60, "end": now + HOUR, "env_types": ["production"]},
        201,
    )
    assert made["active_until"] == now + HOUR

    status, err = await m.call("POST", "/api/v1/tasks", SHELL)
    assert status == 409
    assert err["error"]["code"] == "frozen"
    assert "freeze window 'release'" in err["error"]["message"]
    assert "until 2" in err["error"]["message"]  # names when it ends
    # non-production is not frozen
    await ok(m, "POST", "/api/v1/tasks", {**SHELL, "env": "qa"}, 201)

    # a reason without the permission is refused; with it, the task goes and the reason is
    # in the submission's audit event
    runner = await member(
        store,
        "runner@example.com",
        apps=[{"apps": "all", "envs": "all", "actions": ["execute"]}],  # type: ignore[list-item]
    )
    status, err = await m.call(
        "POST", "/api/v1/tasks", {**SHELL, "override_freeze": "hotfix"}, key=runner
    )
    assert (status, err["error"]["code"]) == (403, "forbidden")
    task = await ok(m, "POST", "/api/v1/tasks", {**SHELL, "override_freeze": "hotfix INC-42"}, 201)
    events = (await ok(m, "GET", "/api/v1/audit?type=task"))["events"]
    submitted = next(e for e in events if e["resource_id"] == task["id"])
    assert "hotfix INC-42" in json.dumps(submitted)
    assert "release" in json.dumps(submitted)

    # the freeze ends: tasks go again, no reason needed
    m.clock.advance(HOUR + 1)
    await ok(m, "POST", "/api/v1/tasks", SHELL, 201)
    listed = await ok(m, "GET", "/api/v1/freezes")
    assert [(f["name"], f["active_until"]) for f in listed["freezes"]] == [("release", None)]
    await ok(m, "DELETE", "/api/v1/freezes/release", None, 204)
    text = await audit_text(m)
    assert "created freeze window release" in text
    assert "deleted freeze window release" in text


async def test_a_bad_freeze_is_a_400_that_says_why(m: Manager) -> None:
    for body, why in (
        ({"name": "x", "cron": "0 22 * * *", "duration_s": 60, "timezone": "Nowhere/X"}, "zone"),
        ({"name": "x", "cron": "not cron", "duration_s": 60}, "not a cron expression"),
        ({"name": "x", "start": 10, "end": 5}, "end must be after start"),
        ({"name": "x", "start": 1, "end": 5, "apps": ["nope"]}, "no application 'nope'"),
    ):
        status, err = await m.call("POST", "/api/v1/freezes", body)
        assert status == 400, err
        assert why in err["error"]["message"]
    assert (await ok(m, "GET", "/api/v1/freezes"))["freezes"] == []


async def _hook(m: Manager, **body: Any) -> dict[str, Any]:
    return await ok(m, "POST", "/api/v1/webhooks", body, 201)  # type: ignore[no-any-return]


async def _deliver(
    m: Manager, hook: dict[str, Any], body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    resp = await m.client.post(hook["path"], data=body, headers=headers)
    try:
        return resp.status, await resp.json()
    finally:
        resp.close()


async def test_signed_deliveries_and_every_refusal(m: Manager) -> None:
    hook = await _hook(m, name="ci")
    secret = hook["secret"].encode()
    assert hook["secret"] not in json.dumps(await ok(m, "GET", "/api/v1/webhooks/ci"))
    body = b'{"ref": "main"}'

    def signed(ts: float, delivery: str, payload: bytes = body) -> dict[str, str]:
        stamp = str(int(ts))
        return {
            "X-Tether-Timestamp": stamp,
            "X-Tether-Signature": sign(secret, stamp, payload),
            "X-Tether-Delivery": delivery,
        }

    now = m.clock()
    status, answer = await _deliver(m, hook, body, signed(now, "d1"))
    assert (status, answer["delivery_id"], answer["webhook"]) == (202, "d1", "ci")
    # a replay of the same delivery, a tampered body, a stale one, a wrong secret
    status, err = await _deliver(m, hook, body, signed(now, "d1"))
    assert (status, err["error"]["code"]) == (409, "replay")
    status, err = await _deliver(m, hook, b'{"ref": "evil"}', signed(now, "d2"))
    assert (status, err["error"]["message"]) == (401, "delivery refused: bad signature")
    status, err = await _deliver(m, hook, body, signed(now - 301, "d3"))
    assert status == 401
    assert "5-minute window" in err["error"]["message"]
    status, _ = await _deliver(m, hook, b"[", signed(now, "d4", b"["))
    assert status == 400
    status, _ = await _deliver(m, hook, b"x" * (256 * 1024 + 1), signed(now, "d5"))
    assert status == 413
    seen = await ok(m, "GET", "/api/v1/webhooks/ci")
    assert seen["accepted"] == 1
    assert seen["rejected"] == {
        "replay": 1,
        "bad signature": 1,
        "timestamp outside the 5-minute window": 1,
        "not JSON": 1,
        "too large": 1,
    }
    # an unknown webhook is a 404, and nothing anywhere shows the secret
    resp = await m.client.post("/hooks/whk_nothing", data=body, headers=signed(now, "d6"))
    assert resp.status == 404
    resp.close()
    text = await audit_text(m)
    assert "created webhook ci" in text
    assert hook["secret"] not in text

    rotated = await ok(m, "POST", "/api/v1/webhooks/ci/rotate-secret")
    assert rotated["secret"] != hook["secret"]
    status, _ = await _deliver(m, hook, body, signed(now, "d7"))
    assert status == 401  # the old secret no longer signs
    await ok(m, "DELETE", "/api/v1/webhooks/ci", None, 204)
    status, _ = await _deliver(m, hook, body, signed(now, "d8"))
    assert status == 404
    status, _ = await m.call("GET", f"/api/v1/secrets/{hook['secret_name']}")
    assert status == 404


async def test_github_signature_from_githubs_documentation(m: Manager) -> None:
    """The webhook's builtin secret set to the documentation's; its example delivery passes
    the signature (and is then refused only as not JSON), tampered it is refused."""
    hook = await _hook(m, name="gh", auth="github")
    doc_secret, doc_body = "It's a Secret to Everybody", b"Hello, World!"
    doc_signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    await ok(m, "PATCH", f"/api/v1/secrets/{hook['secret_name']}", {"value": doc_secret})
    headers = {"X-Hub-Signature-256": doc_signature, "X-GitHub-Delivery": "g1"}
    status, err = await _deliver(m, hook, doc_body, headers)
    assert (status, err["error"]["message"]) == (400, "delivery refused: the body is not JSON")
    status, _ = await _deliver(m, hook, b"Hello, World?", {**headers, "X-GitHub-Delivery": "g2"})
    assert status == 401
    good = b'{"action": "opened"}'
    sig = github_signature(doc_secret.encode(), good)
    headers = {"X-Hub-Signature-256": sig, "X-GitHub-Delivery": "g3"}
    assert (await _deliver(m, hook, good, headers))[0] == 202
    assert (await _deliver(m, hook, good, headers))[0] == 409  # replayed
    seen = await ok(m, "GET", "/api/v1/webhooks/gh")
    assert seen["rejected"] == {"not JSON": 1, "bad signature": 1, "replay": 1}


def _alert(status: str) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="HighLoad"}',
            "status": status,
            "receiver": "tether",
            "commonLabels": {"alertname": "HighLoad", "severity": "critical"},
            "commonAnnotations": {"summary": "db-1 load is high"},
            "alerts": [{"status": status, "labels": {"alertname": "HighLoad"}}],
        }
    ).encode()


async def test_alertmanager_firing_then_resolved_is_one_incident_sealed_at_rest(
    m: Manager, store: Store
) -> None:
    hook = await _hook(m, name="am", kind="alertmanager", auth="bearer")
    bearer = {"Authorization": f"Bearer {hook['secret']}"}
    status, _ = await _deliver(m, hook, _alert("firing"), {"Authorization": "Bearer wrong"})
    assert status == 401
    status, fired = await _deliver(m, hook, _alert("firing"), bearer)
    assert status == 202
    incident_id = fired["incident_id"]
    got = await ok(m, "GET", f"/api/v1/incidents/{incident_id}")
    assert (got["title"], got["severity"], got["source"], got["status"]) == (
        "db-1 load is high",
        "critical",
        "am",
        "open",
    )
    await ok(m, "POST", f"/api/v1/incidents/{incident_id}/ack")
    await ok(m, "POST", f"/api/v1/incidents/{incident_id}/notes", {"text": "looking at db-1"})
    status, resolved = await _deliver(m, hook, _alert("resolved"), bearer)
    assert (status, resolved["incident_id"]) == (202, incident_id)
    got = await ok(m, "GET", f"/api/v1/incidents/{incident_id}")
    assert got["status"] == "resolved"
    assert [(t["kind"], t["text"].split(":")[0]) for t in got["timeline"]] == [
        ("delivery", "firing"),
        ("status", "acknowledged"),
        ("note", "looking at db-1"),
        ("delivery", "resolved"),
        ("status", "resolved"),
    ]
    listed = await ok(m, "GET", "/api/v1/incidents?status=resolved")
    assert [i["id"] for i in listed["incidents"]] == [incident_id]
    # firing again reopens the same incident
    _, again = await _deliver(m, hook, _alert("firing"), bearer)
    assert again["incident_id"] == incident_id
    assert (await ok(m, "GET", f"/api/v1/incidents/{incident_id}"))["status"] == "open"

    # at rest: the row holds ciphertext, not the title, the note or the severity
    row = await store.get_entity("incident", incident_id)
    assert row is not None
    raw = json.dumps(row.body)
    for word in ("db-1", "critical", "looking", "HighLoad"):
        assert word not in raw
    # nor does the audit trail, which names the incident and its status only
    text = await audit_text(m)
    assert "looking at db-1" not in text
    assert hook["secret"] not in text

    # retention: a pass a day past it purges the incident, with an audit event
    await ok(m, "PUT", "/api/v1/incident-retention", {"days": 1})
    app = m.client.app
    assert await purge_once(app, row.updated_at + 0.5 * 86400) == 0
    assert await purge_once(app, row.updated_at + 2 * 86400) == 1
    status, _ = await m.call("GET", f"/api/v1/incidents/{incident_id}")
    assert status == 404
    assert "purged 1 incident(s) not updated for 1 days" in await audit_text(m)
    assert app[INCIDENT_SERVICES].incidents is not None


async def test_a_webhook_cannot_act_with_groups_its_creator_lacks(m: Manager, store: Store) -> None:
    hooks_admin = await member(store, "hooks@example.com", account=["manage_webhooks"])
    status, err = await m.call(
        "POST",
        "/api/v1/webhooks",
        {"name": "x", "groups": ["Account Administrators"]},
        key=hooks_admin,
    )
    assert status == 403, err
    status, err = await m.call("POST", "/api/v1/webhooks", {"name": "x", "groups": ["nope"]})
    assert (status, err["error"]["message"]) == (400, "no group 'nope'")
    status, err = await m.call("POST", "/api/v1/webhooks", {"name": "x", "runbook": "restart"})
    assert status == 400
    assert err["error"]["message"] == "no runbook 'restart'"
    assert (await ok(m, "GET", "/api/v1/webhooks"))["webhooks"] == []


async def test_no_task_may_use_a_webhooks_secret(m: Manager) -> None:
    """The builtin secret is scoped to no place: even the administrator's task is refused
    before anything runs, so task code never reads a webhook's signing key."""
    hook = await _hook(m, name="locked")
    script = f'echo ${{secrets.getValue("{hook["secret_name"]}")}}'
    status, err = await m.call(
        "POST", "/api/v1/tasks", {"payload": {"type": "shell", "script": script}}
    )
    assert status == 403, err
    assert hook["secret_name"] in err["error"]["message"]


async def test_the_ip_allowlist_judges_deliveries(m: Manager, store: Store) -> None:
    """A delivery from outside the allowlist is refused before its signature is read, and
    counted nowhere (it never reached the webhook)."""
    hook = await _hook(m, name="am", kind="alertmanager", auth="bearer")
    await store.add_allowlist_entry(
        AllowlistEntry(
            id="ipa_office", cidr="10.0.0.0/8", description="", enabled=True, created_at=1.0
        )
    )
    await store.update_access_settings(m.clock(), allowlist_enabled=True)
    m.clock.advance(60)  # past the allowlist's cache
    status, err = await _deliver(
        m, hook, _alert("firing"), {"Authorization": f"Bearer {hook['secret']}"}
    )
    assert status == 403, err
    assert err["error"]["code"] != "unauthenticated"  # the allowlist, not the signature
    assert await store.get_entity("webhook_stats", f"{hook['id']}.stats") is None
    assert await store.list_entities("incident") == []
