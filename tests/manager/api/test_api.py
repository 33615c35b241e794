"""The HTTP layer in process: routes and the OpenAPI document agree, guards, bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from manager.access.tokens import create_api_key, create_token
from manager.console.security import is_console_path
from manager.core.eligibility import DelegateScope
from manager.schemas.grants import ADMIN_GROUP
from manager.server.app import ManagerConfig, build_app, open_store
from manager.store.base import Store
from shared import __version__
from shared.limits import MAX_API_BODY_BYTES
from shared.protocol import PROTOCOL_VERSION, CloseCode

SECRET = "pa55-Word/that+must=never-show"


class Api:
    def __init__(self, client: TestClient[Any, Any], key: str, store: Store) -> None:
        self.client = client
        self.key = key
        self.store = store

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = open_store(tmp_path)
    await store.open()
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path), store)
    _, key = await create_api_key(store, "test", groups=(ADMIN_GROUP,))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key, store)
    await store.close()


SHELL = {"payload": {"type": "shell", "script": "echo hi"}}


async def test_openapi_document_lists_exactly_the_served_routes(api: Api) -> None:
    resp = await api.client.get("/api/v1/openapi.json", headers=api.auth())
    doc = await resp.json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {
        (r.method, r.resource.canonical)
        for r in api.client.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    # The web console's pages are HTML, not API: tests/manager/console judges them.
    console = {(m, p) for m, p in served if is_console_path(p)}
    assert console
    assert documented == served - console


async def test_openapi_schemas_resolve(api: Api) -> None:
    doc = await (await api.client.get("/api/v1/openapi.json", headers=api.auth())).json()
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', str(doc).replace("'", '"')))
    assert refs
    assert refs <= set(doc["components"]["schemas"])


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_routes_answer_without_credentials(api: Api, path: str) -> None:
    assert (await api.client.get(path)).status == 200


async def test_every_user_route_refuses_requests_without_an_api_key(api: Api) -> None:
    doc = await (await api.client.get("/api/v1/openapi.json", headers=api.auth())).json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if not op["security"] or path.startswith("/api/v1/delegate/"):
                continue
            url = re.sub(r"{\w+}", "x", path)
            if path.startswith("/scim/"):
                # A SCIM token's routes refuse in SCIM's error format (test_scim.py).
                resp = await api.client.request(method.upper(), url)
                assert resp.status == 401, (method, path)
                continue
            resp = await api.client.request(method.upper(), url)
            assert resp.status == 401, (method, path)
            body = await resp.json()
            assert body["error"]["code"] == "unauthenticated"


async def test_a_wrong_api_key_is_refused(api: Api) -> None:
    resp = await api.client.get("/api/v1/tasks", headers={"Authorization": "Bearer tak_nope"})
    assert resp.status == 401


async def test_bad_json_is_a_400_and_stores_nothing(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks",
        data=b"{not json",
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "bad_json"
    assert (await (await api.client.get("/api/v1/tasks", headers=api.auth())).json())["tasks"] == []


async def test_unknown_field_is_a_400_that_names_it(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks", json={**SHELL, "colour": "red"}, headers=api.auth()
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "colour"


async def test_wrong_type_is_a_400_that_points_at_the_field(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks", json={**SHELL, "max_attempts": "many"}, headers=api.auth()
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "max_attempts"


async def test_unknown_payload_type_error_does_not_echo_the_value(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks", json={"payload": {"type": SECRET}}, headers=api.auth()
    )
    assert resp.status == 400
    body = await resp.text()
    assert SECRET not in body
    assert '"field":"payload.type"' in body.replace(" ", "")


async def test_oversized_body_is_a_413(api: Api) -> None:
    big = json.dumps({"payload": {"type": "shell", "script": "x" * (MAX_API_BODY_BYTES + 10)}})
    resp = await api.client.post(
        "/api/v1/tasks",
        data=io.BytesIO(big.encode()),
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert resp.status == 413


async def test_non_json_content_type_is_a_415(api: Api) -> None:
    resp = await api.client.post("/api/v1/tasks", data="x", headers=api.auth())
    assert resp.status == 415


async def test_same_idempotency_key_returns_the_same_task(api: Api) -> None:
    body = {**SHELL, "idempotency_key": "deploy-42"}
    first = await api.client.post("/api/v1/tasks", json=body, headers=api.auth())
    second = await api.client.post("/api/v1/tasks", json=body, headers=api.auth())
    assert (first.status, second.status) == (201, 200)
    assert (await first.json())["id"] == (await second.json())["id"]


async def test_secret_env_values_never_come_back_from_the_api(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/tasks", json={**SHELL, "secret_env": {"DB_PASSWORD": SECRET}}, headers=api.auth()
    )
    created = await resp.text()
    task_id = (await resp.json())["id"]
    got = await (await api.client.get(f"/api/v1/tasks/{task_id}", headers=api.auth())).text()
    listed = await (await api.client.get("/api/v1/tasks", headers=api.auth())).text()
    for text in (created, got, listed):
        assert SECRET not in text
        assert "DB_PASSWORD" in text


async def test_secret_env_is_not_stored_in_plaintext(api: Api, tmp_path: Path) -> None:
    await api.client.post(
        "/api/v1/tasks", json={**SHELL, "secret_env": {"DB_PASSWORD": SECRET}}, headers=api.auth()
    )
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("tether.db*"))
    assert SECRET.encode() not in raw


async def test_bad_log_cursor_is_a_400(api: Api) -> None:
    task_id = (
        await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    )["id"]
    resp = await api.client.get(f"/api/v1/tasks/{task_id}/logs?after=nope", headers=api.auth())
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "after"


async def test_unknown_task_is_a_404(api: Api) -> None:
    assert (await api.client.get("/api/v1/tasks/task_nope", headers=api.auth())).status == 404


async def test_cancel_of_a_queued_task_cancels_it(api: Api) -> None:
    task_id = (
        await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    )["id"]
    resp = await api.client.post(f"/api/v1/tasks/{task_id}/cancel", headers=api.auth())
    assert (await resp.json())["state"] == "cancelled"


# -- the delegate plane ------------------------------------------------------------------------


def registration(**over: Any) -> dict[str, Any]:
    return {
        "name": "d1",
        "hostname": "h",
        "version": "0.1.0",
        "protocol_version": PROTOCOL_VERSION,
        "selectors": [],
        "capacity": 2,
        "task_types": ["shell"],
        "public_key": base64.b64encode(b"k" * 32).decode(),
        **over,
    }


async def test_register_with_an_unknown_token_is_refused(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/delegate/register", json=registration(), headers={"Authorization": "Bearer tdt_x"}
    )
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_token"


async def test_register_with_an_unsupported_protocol_gets_a_clear_426(api: Api) -> None:
    _, token = await create_token(api.store, "t")
    resp = await api.client.post(
        "/api/v1/delegate/register",
        json=registration(protocol_version=99),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 426
    assert "upgrade the delegate" in (await resp.json())["error"]["message"].lower()


async def test_register_with_a_malformed_key_is_a_400(api: Api) -> None:
    _, token = await create_token(api.store, "t")
    resp = await api.client.post(
        "/api/v1/delegate/register",
        json=registration(public_key="A" * 44),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 400


async def test_delegate_routes_refuse_an_api_key(api: Api) -> None:
    resp = await api.client.post(
        "/api/v1/delegate/heartbeat", json={"seq": 1, "free_slots": 1}, headers=api.auth()
    )
    assert resp.status == 401


# -- the stream and the fencing of stale attempts ---------------------------------------------


async def _registered(api: Api, name: str = "d1") -> str:
    _, token = await create_token(api.store, f"tok-{name}")
    key = base64.b64encode(name.encode().ljust(32, b"k")).decode()
    resp = await api.client.post(
        "/api/v1/delegate/register",
        json=registration(name=name, public_key=key),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["session_token"])


async def test_stream_closes_with_the_bad_frame_code_on_an_unknown_message(api: Api) -> None:
    cred = await _registered(api)
    ws = await api.client.ws_connect(
        "/api/v1/delegate/stream", headers={"Authorization": f"Bearer {cred}"}
    )
    await ws.send_str(json.dumps({"type": "gossip", "text": SECRET}))
    msg = await ws.receive()
    assert msg.type.name == "CLOSE"
    assert ws.close_code == CloseCode.BAD_FRAME
    assert SECRET not in str(msg.extra)


async def test_stream_upgrade_without_a_credential_is_a_401(api: Api) -> None:
    resp = await api.client.get("/api/v1/delegate/stream")
    assert resp.status == 401


async def test_stream_answers_a_hello_with_an_ack(api: Api) -> None:
    cred = await _registered(api)
    ws = await api.client.ws_connect(
        "/api/v1/delegate/stream", headers={"Authorization": f"Bearer {cred}"}
    )
    await ws.send_str(json.dumps({"type": "hello", "key": "process-key-1", "running": []}))
    ack = await ws.receive_json()
    assert ack["type"] == "heartbeat_ack"
    await ws.close()


async def test_a_stream_offered_compression_is_answered_without_it(api: Api) -> None:
    # permessage-deflate would cost each authenticated stream a zlib context each way, about
    # three times an idle stream's memory, and hub.send needs frames written whole in order.
    cred = await _registered(api)
    ws = await api.client.ws_connect(
        "/api/v1/delegate/stream", headers={"Authorization": f"Bearer {cred}"}, compress=15
    )
    assert ws.compress == 0
    await ws.send_str(json.dumps({"type": "hello", "key": "process-key-1", "running": []}))
    assert (await ws.receive_json())["type"] == "heartbeat_ack"
    await ws.close()


async def test_a_second_hello_on_a_stream_closes_it(api: Api) -> None:
    # Each hello re-judges the delegate's assignments and adds what it lists to its load: a
    # peer must not churn keys or made-up listings on one stream (red-team finding).
    cred = await _registered(api)
    ws = await _hello(api, cred)
    await ws.send_str(json.dumps({"type": "hello", "key": "process-key-2", "running": []}))
    closing = await ws.receive()
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == CloseCode.BAD_FRAME
    assert closing.extra == "one hello per stream"


async def test_a_listing_of_overlong_task_ids_is_a_bad_frame(api: Api) -> None:
    cred = await _registered(api)
    ws = await api.client.ws_connect(
        "/api/v1/delegate/stream", headers={"Authorization": f"Bearer {cred}"}
    )
    await ws.send_str(json.dumps({"type": "hello", "key": "process-key-1", "running": ["x" * 65]}))
    closing = await ws.receive()
    assert closing.type is aiohttp.WSMsgType.CLOSE
    assert closing.data == CloseCode.BAD_FRAME


async def _hello(api: Api, cred: str, key: str = "process-key-1") -> Any:
    ws = await api.client.ws_connect(
        "/api/v1/delegate/stream", headers={"Authorization": f"Bearer {cred}"}
    )
    await ws.send_str(json.dumps({"type": "hello", "key": key, "running": []}))
    assert (await ws.receive_json())["type"] == "heartbeat_ack"
    return ws


async def test_a_task_is_pushed_acked_and_reported_over_the_stream(api: Api) -> None:
    cred = await _registered(api)
    ws = await _hello(api, cred)
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    frame = await ws.receive_json()
    assert frame["type"] == "assignment"
    handed = frame["assignment"]
    assert (handed["task"]["id"], handed["attempt"]) == (task["id"], 1)
    assert handed["task"]["payload"]["script"] == SHELL["payload"]["script"]
    # Claimed before it was pushed: the task already runs on this delegate.
    seen = await (await api.client.get(f"/api/v1/tasks/{task['id']}", headers=api.auth())).json()
    assert seen["state"] == "running"
    await ws.send_str(json.dumps({"type": "ack", "task_id": task["id"], "attempt": 1}))
    done = await api.client.post(
        f"/api/v1/delegate/tasks/{task['id']}/result",
        json={"attempt": 1, "status": "succeeded", "exit_code": 0},
        headers={"Authorization": f"Bearer {cred}"},
    )
    assert done.status == 200
    await ws.close()


async def test_a_declined_task_is_pushed_to_the_next_delegate(api: Api) -> None:
    first = await _hello(api, await _registered(api, "first"))
    second = await _hello(api, await _registered(api, "second"))
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    pushed_to, frame = await asyncio.wait_for(_first_frame(first, second), 30)
    assert frame["assignment"]["attempt"] == 1
    other = second if pushed_to is first else first
    await pushed_to.send_str(
        json.dumps({"type": "decline", "task_id": task["id"], "attempt": 1, "reason": "full"})
    )
    again = await other.receive_json()
    assert (again["assignment"]["task"]["id"], again["assignment"]["attempt"]) == (task["id"], 2)
    after = await (await api.client.get(f"/api/v1/tasks/{task['id']}", headers=api.auth())).json()
    assert next((a["attempt"], a["status"]) for a in after["attempts"]) == (1, "withdrawn")
    await first.close()
    await second.close()


async def _first_frame(*streams: Any) -> tuple[Any, dict[str, Any]]:
    readers = {asyncio.ensure_future(ws.receive_json()): ws for ws in streams}
    done, pending = await asyncio.wait(readers, return_when=asyncio.FIRST_COMPLETED)
    for p in pending:
        p.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    reader = done.pop()
    return readers[reader], reader.result()


async def test_six_tasks_on_three_idle_delegates_land_two_on_each(api: Api) -> None:
    streams = [await _hello(api, await _registered(api, n)) for n in ("d1", "d2", "d3")]
    for _ in range(6):
        await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())
    counts = []
    for ws in streams:
        frames = [await ws.receive_json() for _ in range(2)]
        assert [f["type"] for f in frames] == ["assignment", "assignment"]
        counts.append(len(frames))
    assert counts == [2, 2, 2]
    # Nothing more was pushed to anyone.
    for ws in streams:
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive_json(timeout=0.2)
        await ws.close()


async def test_a_long_poll_is_answered_with_a_task_claimed_for_the_poller(api: Api) -> None:
    cred = {"Authorization": f"Bearer {await _registered(api)}"}
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    resp = await api.client.get(
        "/api/v1/delegate/tasks/next", params={"wait": "5", "key": "poller-key-1"}, headers=cred
    )
    assert resp.status == 200
    handed = await resp.json()
    assert (handed["task"]["id"], handed["attempt"]) == (task["id"], 1)
    after = await (await api.client.get(f"/api/v1/tasks/{task['id']}", headers=api.auth())).json()
    assert after["state"] == "running"


async def test_a_stale_attempt_is_refused_and_changes_nothing(api: Api) -> None:
    first = await _registered(api, "first")
    second = await _registered(api, "second")
    task = await (
        await api.client.post(
            "/api/v1/tasks", json={**SHELL, "max_attempts": 2}, headers=api.auth()
        )
    ).json()
    got = await api.client.post(
        f"/api/v1/delegate/tasks/{task['id']}/acquire", headers={"Authorization": f"Bearer {first}"}
    )
    assert got.status == 200
    # Another delegate cannot acquire it, nor write into its log.
    taken = await api.client.post(
        f"/api/v1/delegate/tasks/{task['id']}/acquire",
        headers={"Authorization": f"Bearer {second}"},
    )
    assert taken.status == 409
    line = {"seq": 0, "stream": "stdout", "ts": 1.0, "text": "forged"}
    forged = await api.client.post(
        f"/api/v1/delegate/tasks/{task['id']}/logs",
        json={"attempt": 1, "lines": [line]},
        headers={"Authorization": f"Bearer {second}"},
    )
    assert forged.status == 409
    stale_result = await api.client.post(
        f"/api/v1/delegate/tasks/{task['id']}/result",
        json={"attempt": 1, "status": "succeeded", "exit_code": 0},
        headers={"Authorization": f"Bearer {second}"},
    )
    assert stale_result.status == 409
    after = await (await api.client.get(f"/api/v1/tasks/{task['id']}", headers=api.auth())).json()
    assert after["state"] == "running"
    logs = await (
        await api.client.get(f"/api/v1/tasks/{task['id']}/logs", headers=api.auth())
    ).json()
    assert logs["lines"] == []


async def test_an_acquire_asked_again_with_its_key_gets_the_same_attempt(api: Api) -> None:
    holder = {"Authorization": f"Bearer {await _registered(api, 'holder')}"}
    other = {"Authorization": f"Bearer {await _registered(api, 'other')}"}
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    url = f"/api/v1/delegate/tasks/{task['id']}/acquire"
    first = await api.client.post(url, params={"key": "try-0001"}, headers=holder)
    assert first.status == 200
    # The answer was lost; the same delegate asks again with the same key.
    again = await api.client.post(url, params={"key": "try-0001"}, headers=holder)
    assert again.status == 200
    assert (await again.json())["attempt"] == (await first.json())["attempt"] == 1
    for headers, key in ((other, "try-0001"), (holder, "try-0002")):
        taken = await api.client.post(url, params={"key": key}, headers=headers)
        assert taken.status == 409
    after = await (await api.client.get(f"/api/v1/tasks/{task['id']}", headers=api.auth())).json()
    assert [a["attempt"] for a in after["attempts"]] == [1]


async def test_a_task_without_an_application_is_handed_no_workload_identity_credential(
    api: Api,
) -> None:
    """No token can be issued for a task without an application: its assignment carries no
    request credential (sealing one costs a key exchange per hand-out)."""
    cred = {"Authorization": f"Bearer {await _registered(api)}"}
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    got = await api.client.post(f"/api/v1/delegate/tasks/{task['id']}/acquire", headers=cred)
    assert got.status == 200
    assert "id_token_request" not in await got.json()


@pytest.mark.parametrize("key", ["short", "x" * 65, "has space", "semi;colon"])
async def test_a_malformed_acquire_key_is_a_400_and_changes_nothing(api: Api, key: str) -> None:
    cred = {"Authorization": f"Bearer {await _registered(api)}"}
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    resp = await api.client.post(
        f"/api/v1/delegate/tasks/{task['id']}/acquire", params={"key": key}, headers=cred
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "key"
    after = await (await api.client.get(f"/api/v1/tasks/{task['id']}", headers=api.auth())).json()
    assert after["state"] == "queued"


async def test_a_resent_result_is_accepted_once(api: Api) -> None:
    cred = {"Authorization": f"Bearer {await _registered(api)}"}
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    await api.client.post(f"/api/v1/delegate/tasks/{task['id']}/acquire", headers=cred)
    body = {"attempt": 1, "status": "succeeded", "exit_code": 0}
    first = await (
        await api.client.post(
            f"/api/v1/delegate/tasks/{task['id']}/result", json=body, headers=cred
        )
    ).json()
    again = await (
        await api.client.post(
            f"/api/v1/delegate/tasks/{task['id']}/result", json=body, headers=cred
        )
    ).json()
    assert (first["recorded"], again["recorded"]) == (True, False)
    assert again["state"] == "succeeded"


# -- metrics -----------------------------------------------------------------------------------


async def _scrape(api: Api) -> str:
    resp = await api.client.get("/metrics", headers=api.auth())
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return await resp.text()


async def test_metrics_need_an_api_key(api: Api) -> None:
    assert (await api.client.get("/metrics")).status == 401


async def test_metrics_count_tasks_by_state_and_requests_by_route(api: Api) -> None:
    await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())
    text = await _scrape(api)
    assert "tether_tasks_submitted_total 1.0" in text
    assert 'tether_tasks{state="queued"} 1.0' in text
    assert 'tether_api_requests_total{method="POST",route="/api/v1/tasks",status="201"} 1.0' in text


async def test_metrics_republish_what_a_delegate_reports_in_its_heartbeat(api: Api) -> None:
    cred = await _registered(api, "reporter")
    beat = {"type": "heartbeat", "seq": 1, "free_slots": 2, "metrics": {"spool_bytes": 42.0}}
    resp = await api.client.post(
        "/api/v1/delegate/heartbeat", json=beat, headers={"Authorization": f"Bearer {cred}"}
    )
    assert resp.status == 200
    text = await _scrape(api)
    assert 'name="spool_bytes"' in text
    assert 'delegate="reporter"' in text
    assert 'tether_heartbeats_total{mode="polling"} 1.0' in text
    assert 'tether_delegates_connected{mode="polling"} 1.0' in text


# -- drain and versions ------------------------------------------------------------------------


async def _register_as(api: Api, name: str, **over: Any) -> Any:
    _, token = await create_token(api.store, f"tok-{name}")
    key = base64.b64encode(name.encode().ljust(32, b"k")).decode()
    return await api.client.post(
        "/api/v1/delegate/register",
        json=registration(name=name, public_key=key, **over),
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_delegate_list_shows_how_each_delegate_isolates_its_tasks(api: Api) -> None:
    assert (await _register_as(api, "apart", isolation="task_users")).status == 200
    assert (await _register_as(api, "shared", isolation="shared_user")).status == 200
    # A delegate older than the field ran its tasks as itself, and is shown so.
    assert (await _register_as(api, "old")).status == 200
    listed = await (await api.client.get("/api/v1/delegates", headers=api.auth())).json()
    shown = {d["name"]: d["isolation"] for d in listed["delegates"]}
    assert shown == {"apart": "task_users", "shared": "shared_user", "old": "shared_user"}


async def test_register_with_an_unknown_isolation_is_refused_and_records_nothing(
    api: Api,
) -> None:
    resp = await _register_as(api, "odd", isolation="sandboxed")
    assert resp.status == 400
    assert "isolation" in (await resp.text())
    listed = await (await api.client.get("/api/v1/delegates", headers=api.auth())).json()
    assert listed["delegates"] == []


async def test_drain_by_name_marks_the_delegate_and_survives_reregistering(api: Api) -> None:
    await _registered(api, "busy")
    resp = await api.client.post("/api/v1/delegates/busy/drain", headers=api.auth())
    assert resp.status == 200
    (row,) = (await resp.json())["delegates"]
    assert row["draining"] is True
    listed = await (await api.client.get("/api/v1/delegates", headers=api.auth())).json()
    assert listed["delegates"][0]["draining"] is True
    resumed = await (
        await api.client.post("/api/v1/delegates/busy/resume", headers=api.auth())
    ).json()
    assert resumed["delegates"][0]["draining"] is False


async def test_draining_an_unknown_delegate_is_a_404(api: Api) -> None:
    assert (
        await api.client.post("/api/v1/delegates/nobody/drain", headers=api.auth())
    ).status == 404


async def test_a_drained_delegate_is_offered_no_task(api: Api) -> None:
    cred = {"Authorization": f"Bearer {await _registered(api, 'idle')}"}
    await api.client.post("/api/v1/delegates/idle/drain", headers=api.auth())
    await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())
    resp = await api.client.get("/api/v1/delegate/tasks/next?wait=0", headers=cred)
    assert resp.status == 204


@pytest.mark.parametrize(
    ("version", "protocol", "manager", "outdated"),
    # The manager's own release comes from the git tag (setuptools-scm); a tagless build
    # (0.0.0+unknown) can judge only the protocol.
    [
        ("0.0.9", PROTOCOL_VERSION, "0.2.0", True),
        ("0.2.0", PROTOCOL_VERSION, "0.2.0", False),
        ("0.10.0", PROTOCOL_VERSION, "0.9.1", False),
        ("0.2.0rc1", PROTOCOL_VERSION, "0.2.1.dev3+g1234abc", True),
        ("9.0", 0, "0.2.0", True),
        ("0.0.9", PROTOCOL_VERSION, "0.0.0+unknown", False),
        ("0.0.9", 0, "0.0.0+unknown", True),
    ],
)
def test_outdated_delegates_are_flagged(
    version: str, protocol: int, manager: str, outdated: bool
) -> None:
    from manager.api.delegates import is_outdated

    assert is_outdated(version, protocol, manager) is outdated


def test_a_delegate_of_the_managers_own_release_is_current() -> None:
    from manager.api.delegates import is_outdated

    assert is_outdated(__version__, PROTOCOL_VERSION) is False


# -- delegate profiles -------------------------------------------------------------------------


async def _profile_tasks(api: Api) -> list[dict[str, Any]]:
    tasks = (await (await api.client.get("/api/v1/tasks", headers=api.auth())).json())["tasks"]
    return [t for t in tasks if (t["idempotency_key"] or "").startswith("profile:")]


# One token per delegate name and manager: a delegate's key and name stay bound to the token
# it first registered with.
_TOKENS: dict[tuple[int, str], str] = {}


async def _register_instance(api: Api, name: str, instance: str, selectors: list[str]) -> str:
    token = _TOKENS.get((id(api), name))
    if token is None:
        _, token = await create_token(api.store, f"tok-{secrets.token_hex(4)}")
        _TOKENS[(id(api), name)] = token
    resp = await api.client.post(
        "/api/v1/delegate/register",
        json=registration(
            name=name,
            selectors=selectors,
            instance=instance,
            public_key=base64.b64encode(name.encode().ljust(32, b"k")).decode(),
        ),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 200
    return str((await resp.json())["delegate_id"])


async def test_a_profile_runs_once_per_delegate_start_pinned_to_that_delegate(api: Api) -> None:
    put = await api.client.put(
        "/api/v1/profiles/setup",
        json={"selectors": ["linux"], "script": "echo ready"},
        headers=api.auth(),
    )
    assert put.status == 200
    delegate_id = await _register_instance(api, "web-1", "boot-1", ["linux"])
    await _register_instance(api, "web-1", "boot-1", ["linux"])  # session renewal, same process
    (task,) = await _profile_tasks(api)
    assert task["selectors"] == [delegate_id]
    assert task["payload"]["script"] == "echo ready"
    await _register_instance(api, "web-1", "boot-2", ["linux"])  # the process restarted
    assert len(await _profile_tasks(api)) == 2


async def test_a_profile_skips_delegates_its_selectors_do_not_match(api: Api) -> None:
    await api.client.put(
        "/api/v1/profiles/gpu",
        json={"selectors": ["gpu"], "script": "nvidia-smi"},
        headers=api.auth(),
    )
    await _register_instance(api, "cpu-1", "boot-1", ["linux"])
    assert await _profile_tasks(api) == []


async def test_a_narrowed_delegate_named_after_a_profiles_selector_is_not_run_it(
    api: Api,
) -> None:
    """A delegate picks its own name: a staging token's delegate registered as ``vault``
    was run the profile for the label ``vault`` (its account-scoped secrets with it), at
    registration and on a change of the profile. An attack on a running manager found it."""
    staging_pool = DelegateScope(
        env_types=frozenset({"non_production"}), selectors=frozenset({"stg-pool"})
    )
    _, narrowed = await create_token(api.store, "tok-staging", staging_pool)
    resp = await api.client.post(
        "/api/v1/delegate/register",
        json=registration(
            name="vault",
            selectors=["stg-pool"],
            public_key=base64.b64encode(b"v" * 32).decode(),
        ),
        headers={"Authorization": f"Bearer {narrowed}"},
    )
    assert resp.status == 200, await resp.text()
    put = await api.client.put(
        "/api/v1/profiles/vault-setup",
        json={"selectors": ["vault"], "script": "echo unseal"},
        headers=api.auth(),
    )
    assert (await put.json())["runs_started"] == 0
    assert await _profile_tasks(api) == []
    # An account-wide token's delegate still answers to its name.
    put = await api.client.put(
        "/api/v1/profiles/host-setup",
        json={"selectors": ["host-7"], "script": "echo ready"},
        headers=api.auth(),
    )
    assert put.status == 200
    delegate_id = await _register_instance(api, "host-7", "boot-1", [])
    (task,) = await _profile_tasks(api)
    assert task["selectors"] == [delegate_id]


async def test_changing_a_profile_runs_it_again_on_live_delegates(api: Api) -> None:
    delegate_id = await _register_instance(api, "web-1", "boot-1", ["linux"])
    first = await api.client.put(
        "/api/v1/profiles/setup",
        json={"selectors": ["linux"], "script": "echo v1"},
        headers=api.auth(),
    )
    assert (await first.json())["runs_started"] == 1
    await api.client.put(
        "/api/v1/profiles/setup",
        json={"selectors": ["linux"], "script": "echo v1"},
        headers=api.auth(),
    )
    assert len(await _profile_tasks(api)) == 1  # unchanged script: not run again
    await api.client.put(
        "/api/v1/profiles/setup",
        json={"selectors": ["linux"], "script": "echo v2"},
        headers=api.auth(),
    )
    scripts = sorted(t["payload"]["script"] for t in await _profile_tasks(api))
    assert scripts == ["echo v1", "echo v2"]
    assert all(t["selectors"] == [delegate_id] for t in await _profile_tasks(api))


async def test_profiles_list_and_delete(api: Api) -> None:
    await api.client.put("/api/v1/profiles/a", json={"script": "true"}, headers=api.auth())
    listed = await (await api.client.get("/api/v1/profiles", headers=api.auth())).json()
    assert [p["name"] for p in listed["profiles"]] == ["a"]
    assert (await api.client.delete("/api/v1/profiles/a", headers=api.auth())).status == 204
    assert (await api.client.delete("/api/v1/profiles/a", headers=api.auth())).status == 404


async def test_a_credential_used_before_is_refused_at_once_when_its_token_is_revoked(
    api: Api,
) -> None:
    """A verified session credential is remembered (its signature is not checked again on
    every request), but its token is judged on every request: a revocation through the API
    refuses the very next one."""
    cred = {"Authorization": f"Bearer {await _registered(api, 'd1')}"}
    url = "/api/v1/delegate/tasks/task_nosuchtask/acquire"
    for _ in range(2):  # the second check is answered from the memo
        assert (await api.client.post(url, headers=cred)).status == 404
    revoked = await api.client.delete("/api/v1/tokens/tok-d1", headers=api.auth())
    assert revoked.status in (200, 204), await revoked.text()
    refused = await api.client.post(url, headers=cred)
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "token_revoked"


@pytest.mark.parametrize("wait", ["-1", "nan", "inf", "soon"])
async def test_a_long_poll_wait_that_is_not_seconds_is_a_400(api: Api, wait: str) -> None:
    cred = {"Authorization": f"Bearer {await _registered(api, 'poller')}"}
    resp = await api.client.get(f"/api/v1/delegate/tasks/next?wait={wait}", headers=cred)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "wait"
