"""The audit API in process: listing with filters and pages, saved filters, export, verify."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.access.tokens import ADMIN_BURST, ADMIN_MAX_QPS, create_api_key
from manager.core.audit_chain import EVENT_FIELDS, AuditEvent, AuditQuery, verify
from manager.keys.audit_key import AuditKeys
from manager.keys.masterkey import MasterKey
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, build_app, open_store
from manager.store.base import Store
from tests.manager.trail import make_trail_unwritable


class Api:
    def __init__(self, client: TestClient[Any, Any], key: str, store: Store, path: Path) -> None:
        self.client = client
        self.key = key
        self.store = store
        self.db = path / "tether.db"

    async def call(
        self, method: str, path: str, body: Any = None, **params: Any
    ) -> tuple[int, Any]:
        resp = await self.client.request(
            method,
            path,
            json=body,
            params={k: str(v) for k, v in params.items()},
            headers={"Authorization": f"Bearer {self.key}"},
        )
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, json.loads(text)
        return resp.status, text


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = open_store(tmp_path)
    await store.open()
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path), store)
    # The admin key's limit, not the account default: these tests send bursts of requests.
    _, key = await create_api_key(
        store, "test", groups=(ADMIN_GROUP,), max_qps=ADMIN_MAX_QPS, burst=ADMIN_BURST
    )
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key, store, tmp_path)
    await store.close()


async def changes(api: Api) -> None:
    """Five events: tokens a, b and c made, b revoked, profile p set."""
    for name in ("a", "b", "c"):
        assert (await api.call("POST", "/api/v1/tokens", {"name": name}))[0] == 201
    assert (await api.call("DELETE", "/api/v1/tokens/b"))[0] == 200
    assert (await api.call("PUT", "/api/v1/profiles/p", {"script": "echo Deployed"}))[0] == 200


async def test_listing_filters_and_pages_back(api: Api) -> None:
    await changes(api)
    status, body = await api.call("GET", "/api/v1/audit")
    assert status == 200
    assert [e["seq"] for e in body["events"]] == [5, 4, 3, 2, 1]
    assert body["next"] is None
    _, body = await api.call("GET", "/api/v1/audit", type="token", action="revoke")
    assert [e["resource_name"] for e in body["events"]] == ["b"]
    _, body = await api.call("GET", "/api/v1/audit", text="deployed")
    assert [e["resource_type"] for e in body["events"]] == ["profile"]
    _, body = await api.call("GET", "/api/v1/audit", actor="test", limit=2)
    assert [e["seq"] for e in body["events"]] == [5, 4]
    _, body = await api.call("GET", "/api/v1/audit", actor="test", limit=2, before=body["next"])
    assert [e["seq"] for e in body["events"]] == [3, 2]
    _, body = await api.call("GET", "/api/v1/audit", since=body["events"][0]["ts"] + 1e6)
    assert body["events"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"before": "-1"}, "before"),
        ({"before": "²"}, "before"),
        ({"before": str(2**70)}, "before"),
        ({"actor": "x" * 300}, "actor"),
        ({"text": "a\x00b"}, "text"),
    ],
)
async def test_a_bad_filter_is_a_400_that_names_it(
    api: Api, params: dict[str, str], field: str
) -> None:
    status, body = await api.call("GET", "/api/v1/audit", **params)
    assert status == 400
    assert body["error"]["field"] == field


async def test_an_unknown_export_format_is_a_400(api: Api) -> None:
    status, body = await api.call("GET", "/api/v1/audit/export", format="xml")
    assert (status, body["error"]["field"]) == (400, "format")


async def test_saved_filters_apply_and_given_filters_narrow_them(api: Api) -> None:
    await changes(api)
    status, saved = await api.call(
        "POST", "/api/v1/audit/filters", {"name": "tokens", "query": {"type": "token"}}
    )
    assert status == 201
    assert saved["query"] == {
        "type": "token",
        "since": None,
        "until": None,
        "actor": None,
        "app": None,
        "action": None,
        "text": None,
        "limit": None,
    }
    status, _ = await api.call(
        "POST", "/api/v1/audit/filters", {"name": "tokens", "query": {"action": "x"}}
    )
    assert status == 409
    _, body = await api.call("GET", "/api/v1/audit", filter="tokens")
    # Saving the filter is itself a change, of another type.
    assert [e["seq"] for e in body["events"]] == [4, 3, 2, 1]
    _, body = await api.call("GET", "/api/v1/audit", filter="tokens", action="revoke")
    assert [e["seq"] for e in body["events"]] == [4]
    status, body = await api.call("GET", "/api/v1/audit", filter="nope")
    assert (status, body["error"]["field"]) == (404, "filter")
    _, listing = await api.call("GET", "/api/v1/audit/filters")
    assert [f["name"] for f in listing["filters"]] == ["tokens"]
    assert (await api.call("DELETE", "/api/v1/audit/filters/tokens"))[0] == 204
    assert (await api.call("DELETE", "/api/v1/audit/filters/tokens"))[0] == 404
    _, body = await api.call("GET", "/api/v1/audit", type="audit_filter")
    assert [e["action"] for e in body["events"]] == ["delete", "create"]


async def test_export_as_json_lines_holds_the_whole_verifiable_chain(api: Api) -> None:
    await changes(api)
    status, text = await api.call("GET", "/api/v1/audit/export", format="jsonl")
    assert status == 200
    events = [AuditEvent(**json.loads(line)) for line in text.splitlines()]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    # Checked with the manager's chain keys (kept in its data dir, not in the export).
    keys = AuditKeys(MasterKey.load(api.db.parent / "master.key"))
    assert verify(events, await api.store.audit_head(), keys.lookup) is None
    assert verify(events, await api.store.audit_head()) is not None
    # With a filter, only what matches, still oldest first.
    _, text = await api.call("GET", "/api/v1/audit/export", type="token", action="create")
    assert [json.loads(ln)["resource_name"] for ln in text.splitlines()] == ["a", "b", "c"]


async def test_export_as_csv_has_a_header_and_a_row_per_event(api: Api) -> None:
    await changes(api)
    resp = await api.client.get(
        "/api/v1/audit/export",
        params={"format": "csv"},
        headers={"Authorization": f"Bearer {api.key}"},
    )
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert list(rows[0]) == list(EVENT_FIELDS)
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4", "5"]
    # The multi-line diff (the revocation's before and after) survives the CSV quoting.
    assert rows[3]["action"] == "revoke"
    assert rows[3]["diff"].startswith("before:\n")
    assert "\nafter:\n" in rows[3]["diff"]


async def test_verify_reports_an_intact_trail(api: Api) -> None:
    status, report = await api.call("GET", "/api/v1/audit/verify")
    assert (status, report) == (200, {"ok": True, "checked": 0, "head_seq": 0, "broken": None})
    await changes(api)
    _, report = await api.call("GET", "/api/v1/audit/verify")
    assert report == {"ok": True, "checked": 5, "head_seq": 5, "broken": None}


async def test_verify_names_the_first_broken_link_after_tampering(api: Api) -> None:
    await changes(api)
    conn = sqlite3.connect(api.db)
    with conn:
        conn.execute("UPDATE audit_events SET actor_name = 'nobody' WHERE seq = 2")
    conn.close()
    _, report = await api.call("GET", "/api/v1/audit/verify")
    assert report["ok"] is False
    assert report["checked"] == 1
    assert report["broken"]["seq"] == 2
    assert report["broken"]["reason"].startswith("hash mismatch")


async def test_verify_reports_an_event_written_past_the_head(api: Api) -> None:
    # A red-team finding: a row inserted after the newest real event was listed as genuine
    # while verify, stopping at the head, said "intact".
    await changes(api)
    conn = sqlite3.connect(api.db)
    with conn:
        conn.execute(
            "INSERT INTO audit_events SELECT seq + 1, 'evt_forged', ts + 1, actor_kind, actor_id,"
            " 'ceo@example.com', method, path, client_ip, resource_type, resource_id,"
            " resource_name, app, 'delete', 'FORGED', diff, hash, 'deadbeef', key_id"
            " FROM audit_events WHERE seq = 5"
        )
    conn.close()
    _, listed = await api.call("GET", "/api/v1/audit")
    assert listed["events"][0]["summary"] == "FORGED"  # still listed: verify must say so
    _, report = await api.call("GET", "/api/v1/audit/verify")
    assert report["ok"] is False
    assert report["broken"]["seq"] == 6


async def test_a_change_whose_event_cannot_be_written_is_not_made(api: Api) -> None:
    """The task path, API keys and the allowlist chain their event in the change's own
    transaction: with the trail unwritable each such change is refused whole (a 503, not a
    Conflict of its own), where it used to stand with its event lost."""
    shell = {"payload": {"type": "shell", "script": "echo hi"}}
    status, queued = await api.call("POST", "/api/v1/tasks", shell)
    assert status == 201
    head = await api.store.audit_head()
    make_trail_unwritable(api.db)
    refused = [
        await api.call("POST", "/api/v1/tasks", shell),
        await api.call("POST", f"/api/v1/tasks/{queued['id']}/cancel"),
        await api.call("POST", "/api/v1/api-keys", {"name": "ops", "service_account": True}),
        await api.call("DELETE", "/api/v1/api-keys/test"),
        await api.call("PUT", "/api/v1/api-key-defaults", {"max_qps": 3.0}),
        await api.call("POST", "/api/v1/allowlist/entries", {"cidr": "10.0.0.0/8"}),
        await api.call("PUT", "/api/v1/allowlist/trusted-proxies", {"proxies": ["10.1.0.0/16"]}),
    ]
    assert [(status, body["error"]["code"]) for status, body in refused] == [
        (503, "unavailable")
    ] * len(refused)
    assert await api.store.audit_head() == head
    _, tasks = await api.call("GET", "/api/v1/tasks")
    assert [(t["id"], t["state"]) for t in tasks["tasks"]] == [(queued["id"], "queued")]
    _, keys = await api.call("GET", "/api/v1/api-keys")
    assert [(k["name"], k["status"]) for k in keys["api_keys"]] == [("test", "active")]
    _, allowlist = await api.call("GET", "/api/v1/allowlist")
    assert (allowlist["entries"], allowlist["trusted_proxies"]) == ([], [])


def _digest(value: dict[str, Any], *keep: str) -> dict[str, Any]:
    text = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return {**{k: value[k] for k in keep}, "sha256": hashlib.sha256(text).hexdigest()}


@pytest.mark.parametrize(
    "body",
    [
        {"payload": {"type": "shell", "script": "echo plain"}},
        {
            "payload": {"type": "shell", "script": "deploy.sh", "env": {"REGION": "eu"}},
            "selectors": ["linux", "eu"],
            "timeout_s": 90,
            "queue_timeout_s": 12.5,
            "max_attempts": 3,
            "idempotency_key": "deploy-42",
            "secret_env": {"TOKEN": "s3cret-value-never-shown"},
            "deployment": {"service": "web", "environment": "prod", "version": "1.2.3"},
            "name": "deploy web",
            "labels": {"team": "platform"},
        },
    ],
)
async def test_a_submission_event_tells_what_the_answer_tells(
    api: Api, body: dict[str, Any]
) -> None:
    """The event of a submission holds the task as its answer shows it (the answer's own
    figures and names), the payload and deployment by digest: never their text."""
    status, view = await api.call("POST", "/api/v1/tasks", body)
    assert status == 201, view
    events = await api.store.list_audit(AuditQuery(resource_type="task"))
    (event,) = [e for e in events if e.resource_id == view["id"]]
    assert event.action == "create"
    created = json.loads(event.diff)["created"]
    plain = [
        "id",
        "type",
        "state",
        "selectors",
        "secret_env_names",
        "timeout_s",
        "queue_timeout_s",
        "max_attempts",
        "idempotency_key",
        "app_id",
        "env_id",
    ]
    assert created == {
        **{k: view[k] for k in plain},
        "payload": _digest(view["payload"], "type"),
        "deployment": None
        if view["deployment"] is None
        else _digest(view["deployment"], "service", "environment"),
    }
    assert "s3cret-value-never-shown" not in event.diff
    assert "deploy.sh" not in event.diff
