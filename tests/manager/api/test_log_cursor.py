"""A log cursor (``after=attempt:seq``) is judged before anything is answered: one whose
numbers the log's columns cannot hold is a 400 for the log page and for the follow alike,
not a broken stream (a follow had begun its answer when the database refused it)."""

from __future__ import annotations

import pytest

from tests.manager.api import test_log_bytes
from tests.manager.api.test_api import Api
from tests.manager.api.test_log_bytes import running_task

# A manager over each store, with an admin key.
api = test_log_bytes.api


@pytest.mark.parametrize("route", ["logs", "logs/follow"])
@pytest.mark.parametrize("after", ["1:99999999999999999999999", "2147483648:1", "1:-1"])
async def test_a_cursor_out_of_range_is_a_400_before_any_answer(
    api: Api, route: str, after: str
) -> None:
    task_id, _ = await running_task(api)
    resp = await api.client.get(
        f"/api/v1/tasks/{task_id}/{route}", params={"after": after}, headers=api.auth()
    )
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["field"] == "after"
    assert body["error"]["message"] == "after: a cursor's numbers are out of range"


@pytest.mark.parametrize("route", ["logs", "logs/follow"])
async def test_the_largest_cursor_a_store_holds_is_taken(api: Api, route: str) -> None:
    task_id, _ = await running_task(api)
    resp = await api.client.get(
        f"/api/v1/tasks/{task_id}/{route}",
        params={"after": f"{2**31 - 1}:{2**63 - 1}"},
        headers=api.auth(),
    )
    assert resp.status == 200
    resp.close()
