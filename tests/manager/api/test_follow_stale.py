"""A follow still ends when the word of its task's last change never reached it, or reached
it out of order: a wake by its re-check timer reads the store (within FOLLOW_RECHECK_S),
and with replicas (PostgreSQL) every wake does. Each case hung for good when a follow trusted
the task as this process last wrote it at every wake (found by review)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from manager.api.context import CTX
from shared.protocol import TaskState
from tests.manager.api import test_log_bytes
from tests.manager.api.test_api import Api
from tests.manager.api.test_follow_reads import _finish, _following, _next

api = test_log_bytes.api


# The re-check timer, short: the repair each test waits for. A follow that never ends is
# told from a slow one by a bound far above it (a loaded machine is slow, not stuck).
RECHECK_S = 0.2
HUNG_AFTER_S = 30.0


async def _until_end(resp: Any) -> dict[str, Any]:
    async with asyncio.timeout(HUNG_AFTER_S):
        while (last := await _next(resp))["kind"] != "end":
            pass
    return last


async def test_a_change_whose_word_was_lost_still_ends_the_follow_at_the_recheck(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica finishes the task and its NOTIFY is lost (the bus allows that: "costs
    time, never a task"). The re-check's read ends it."""
    async with _following(api, monkeypatch, recheck=RECHECK_S) as f:
        got = await api.client.post(f"/api/v1/tasks/{f.task_id}/cancel", headers=api.auth())
        assert got.status in (200, 202), await got.text()
        # Another replica records the result; its word never arrives here.
        done = await api.store.update_task(
            f.task_id,
            expect_state=TaskState.RUNNING,
            expect_attempt=1,
            changes={"state": TaskState.SUCCEEDED, "exit_code": 0, "finished_at": 2.0},
        )
        assert done is not None
        last = await _until_end(f.resp)
        assert last["task"]["state"] == "succeeded"


async def test_two_writes_from_one_snapshot_answered_out_of_order_still_end(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel (flag only) and the result, decided from the same snapshot: both commit, cancel
    first. On PostgreSQL they run on two pool connections and their answers may come back in
    either order; here the cancel's answer is held until the result's came back."""
    c = api.client.app[CTX]
    sealed = c.tasks._store
    real = sealed.update_task
    result_answered = asyncio.Event()
    cancel_committed = asyncio.Event()

    async def update_task(task_id_: str, **kw: Any) -> Any:
        if kw["changes"].get("cancel_requested"):
            row = await real(task_id_, **kw)
            cancel_committed.set()
            await result_answered.wait()  # the answer comes after the result's
            return row
        if kw["changes"].get("state") is TaskState.SUCCEEDED:
            await cancel_committed.wait()  # decided from the same snapshot, commits second
            row = await real(task_id_, **kw)
            result_answered.set()
            return row
        return await real(task_id_, **kw)

    async with _following(api, monkeypatch, recheck=RECHECK_S) as f:
        monkeypatch.setattr(sealed, "update_task", update_task)
        cancel = asyncio.create_task(
            api.client.post(f"/api/v1/tasks/{f.task_id}/cancel", headers=api.auth())
        )
        await _finish(api, f.task_id, f.cred, -1)
        assert (await cancel).status in (200, 202)
        stored = await api.store.get_task(f.task_id)
        assert stored is not None
        assert stored.state is TaskState.SUCCEEDED
        last = await _until_end(f.resp)
        assert last["task"]["state"] == "succeeded"


async def test_a_result_committed_but_answered_with_a_store_error_still_ends(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the connection drops after COMMIT; the caller gets a StoreError (503, no
    wrote, no notify). The delegate's resend is answered recorded=False (no notify either)."""
    from manager.store.base import StoreError

    c = api.client.app[CTX]
    async with _following(api, monkeypatch, recheck=RECHECK_S) as f:
        task_id, cred = f.task_id, f.cred
        got = await api.client.post(f"/api/v1/tasks/{task_id}/cancel", headers=api.auth())
        assert got.status in (200, 202)
        sealed = c.tasks._store
        real = sealed.update_task
        failed = False

        async def update_task(task_id_: str, **kw: Any) -> Any:
            nonlocal failed
            row = await real(task_id_, **kw)
            if not failed and kw["changes"].get("state") is TaskState.SUCCEEDED:
                failed = True
                raise StoreError("postgres: connection was closed in the middle of operation")
            return row

        monkeypatch.setattr(sealed, "update_task", update_task)
        first = await api.client.post(
            f"/api/v1/delegate/tasks/{task_id}/result",
            json={"attempt": 1, "status": "succeeded", "exit_code": 0, "last_seq": -1},
            headers=cred,
        )
        assert first.status == 503, await first.text()
        await _finish(api, task_id, cred, -1)
        last = await _until_end(f.resp)
        assert last["task"]["state"] == "succeeded"
