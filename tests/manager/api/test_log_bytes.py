"""Task output through the HTTP layer on both stores: a batch of NUL and binary lines comes
back byte for byte (page and follow stream), data a store cannot hold is a one-line 422 that
changes nothing, and a database that is away is logged once, not once per request.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from manager.access.tokens import create_api_key
from manager.schemas.grants import ADMIN_GROUP
from manager.schemas.tasks import LogEntry
from manager.server.app import ManagerConfig, build_app
from manager.store.base import Store
from shared.logbytes import shown
from tests.manager.api.test_api import SHELL, Api, _registered

SECRET = "pa55-Word/that+must=never-show"


@pytest.fixture
async def api(store: Store, tmp_path: Path) -> AsyncIterator[Api]:
    app, _ = await build_app(ManagerConfig(data_dir=tmp_path), store)
    _, key = await create_api_key(store, "test", groups=(ADMIN_GROUP,))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key, store)


async def running_task(api: Api) -> tuple[str, dict[str, str]]:
    cred = {"Authorization": f"Bearer {await _registered(api)}"}
    task = await (await api.client.post("/api/v1/tasks", json=SHELL, headers=api.auth())).json()
    got = await api.client.post(f"/api/v1/delegate/tasks/{task['id']}/acquire", headers=cred)
    assert got.status == 200
    return str(task["id"]), cred


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def page(api: Api, task_id: str) -> list[dict[str, Any]]:
    resp = await api.client.get(f"/api/v1/tasks/{task_id}/logs", headers=api.auth())
    assert resp.status == 200
    return list((await resp.json())["lines"])


async def test_nul_and_binary_lines_come_back_byte_for_byte(api: Api) -> None:
    task_id, cred = await running_task(api)
    sent: list[tuple[dict[str, Any], bytes]] = [
        ({"text": "plain"}, b"plain"),
        ({"data": b64(b"a\x00b\xffc")}, b"a\x00b\xffc"),
        # An older delegate sends a NUL as text: kept exactly too.
        ({"text": "old\x00delegate"}, b"old\x00delegate"),
        # Data that is text after all is stored (and answered) as text.
        ({"data": b64("valid é".encode())}, "valid é".encode()),
        ({"data": b64(bytes(range(256)))}, bytes(range(256))),
    ]
    lines = [
        {"seq": seq, "stream": "stdout", "ts": 1.0, **form} for seq, (form, _) in enumerate(sent)
    ]
    posted = await api.client.post(
        f"/api/v1/delegate/tasks/{task_id}/logs", json={"attempt": 1, "lines": lines}, headers=cred
    )
    assert posted.status == 200, await posted.text()
    assert (await posted.json())["accepted"] == len(sent)
    done = await api.client.post(
        f"/api/v1/delegate/tasks/{task_id}/result",
        json={"attempt": 1, "status": "succeeded", "exit_code": 0, "last_seq": len(sent) - 1},
        headers=cred,
    )
    assert done.status == 200

    got = await page(api, task_id)

    raws = [raw for _, raw in sent]
    assert [LogEntry.model_validate(line).raw for line in got] == raws
    assert [line["text"] for line in got] == [shown(raw) for raw in raws]
    # ``data`` only where the text is not the line itself.
    assert ["data" in line for line in got] == [False, True, True, False, True]
    # The follow stream says the same.
    follow = await api.client.get(f"/api/v1/tasks/{task_id}/logs/follow", headers=api.auth())
    events = [json.loads(row) for row in (await follow.read()).splitlines()]
    assert [e["line"] for e in events if e["kind"] == "log"] == got
    assert events[-1]["task"]["state"] == "succeeded"


async def test_a_line_no_store_can_hold_is_a_422_that_names_no_value_and_stores_nothing(
    api: Api,
) -> None:
    task_id, cred = await running_task(api)
    # A lone surrogate, as JSON allows it: neither store can encode it.
    bad = {"seq": 1, "stream": "stdout", "ts": 1.0, "text": f"{SECRET}\udcff"}
    good = {"seq": 0, "stream": "stdout", "ts": 1.0, "text": "fine"}
    url = f"/api/v1/delegate/tasks/{task_id}/logs"

    refused = await api.client.post(url, json={"attempt": 1, "lines": [good, bad]}, headers=cred)

    assert refused.status == 422
    body = await refused.text()
    error = json.loads(body)["error"]
    assert error["code"] == "bad_data"
    assert error["message"].startswith("the database refused a value in this request: ")
    assert "\n" not in error["message"]
    assert SECRET not in body
    assert await page(api, task_id) == []
    # Nothing is stuck: the next batch goes in.
    again = await api.client.post(url, json={"attempt": 1, "lines": [good]}, headers=cred)
    assert again.status == 200


async def test_a_database_that_is_away_is_logged_once_not_per_request(api: Api) -> None:
    await api.store.close()

    with structlog.testing.capture_logs() as logs:
        statuses = [
            (await api.client.get("/api/v1/tasks", headers=api.auth())).status for _ in range(5)
        ]

    assert statuses == [503] * 5
    store_errors = [e for e in logs if str(e["event"]).startswith("store error")]
    assert len(store_errors) <= 1, store_errors
