"""Runbook runs in the console: the list and a run's page show what the API shows the user,
escaped; Approve and Reject appear only for a member of a group the waiting step needs,
go through the API's handlers (its refusal of self-approval, its event), and need the
session's CSRF token."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from manager.access.directory import Directory, SessionBody, UserBody
from manager.access.principal import SessionTokens
from manager.api.console_cookie import COOKIE
from manager.console.render import render_text
from manager.console.runbooks import may_decide
from manager.console.security import csrf_token
from manager.store.base import Store
from shared.ids import hash_secret
from tests.manager.access_support import Manager, one_manager, sqlite_store  # noqa: F401
from tests.manager.console.test_console_access import visit
from tests.manager.rbac_support import place
from tests.manager.runbooks.test_api_runbooks import EXEC, person, restart_api

XSS = '<script>window.__xss=1</script>"><img src=x onerror=alert(1)>'


@pytest.fixture
async def run_id(m: Manager, store: Store) -> str:
    """A run of restart-api started by alice (of ops), waiting on sre's approval."""
    await place(store, "shop", "prod", "production")
    status, _ = await m.call("PUT", "/api/v1/runbooks/restart-api", restart_api(description=XSS))
    assert status == 200
    alice = await person(store, "alice@example.com", "ops", EXEC)
    status, run = await m.call(
        "POST", "/api/v1/runbooks/restart-api/runs", {"inputs": {"reason": "leak"}}, key=alice
    )
    assert status == 201, run
    return str(run["id"])


async def decide(m: Manager, token: str, run: str, verb: str, reason: str) -> tuple[int, str]:
    headers = {"Cookie": f"{COOKIE}={token}", "Sec-Fetch-Site": "same-origin"}
    data = {"csrf": csrf_token(token), "reason": reason}
    resp = await m.client.post(f"/console/runbooks/runs/{run}/{verb}", data=data, headers=headers)
    return resp.status, await resp.text()


async def test_an_approver_sees_the_buttons_and_approves_with_a_reason(
    m: Manager, store: Store, run_id: str
) -> None:
    bob = await person(store, "bob@example.com", "sre", EXEC)
    carol = await person(store, "carol@example.com", "ops", EXEC)
    status, page, _ = await visit(m, "GET", "/console/runbooks", bob)
    assert status == 200
    assert f'href="/console/runbooks/runs/{run_id}"' in page
    assert "<script>window" not in page
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page
    # carol may read the run but is in no group the step needs: no buttons.
    status, page, _ = await visit(m, "GET", f"/console/runbooks/runs/{run_id}", carol)
    assert status == 200
    assert "waiting_for_approval" in page
    assert 'id="approve"' not in page
    status, page, _ = await visit(m, "GET", f"/console/runbooks/runs/{run_id}", bob)
    assert 'id="approve"' in page
    assert 'id="reject"' in page
    status, page = await decide(m, bob, run_id, "approve", XSS)
    assert status == 200, page
    assert "approved by bob@example.com for sre" in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'id="approve"' not in page  # sre has decided
    # The step's task links to its task page.
    status, run = await m.call("GET", f"/api/v1/runbook-runs/{run_id}")
    task_id = run["steps"][1]["task_id"]
    assert task_id is not None
    status, page, _ = await visit(m, "GET", f"/console/runbooks/runs/{run_id}", bob)
    assert f'href="/console/tasks/{task_id}"' in page
    status, listed = await m.call("GET", "/api/v1/audit?actor=bob@example.com")
    assert [(e["action"], e["path"]) for e in listed["events"]] == [
        ("approve", f"/console/runbooks/runs/{run_id}/approve")
    ]


async def test_a_non_member_is_refused_by_the_api_and_a_rejection_fails_the_run(
    m: Manager, store: Store, run_id: str
) -> None:
    sre = await person(store, "bob@example.com", "sre", EXEC)
    carol = await person(store, "carol@example.com", "ops", EXEC)
    # No button is drawn for carol; a form posted anyway meets the API's refusal.
    status, body = await decide(m, carol, run_id, "approve", "")
    assert status == 403
    assert "needs a member of sre" in body
    status, body = await decide(m, sre, run_id, "reject", "not now")
    assert status == 200, body
    assert "rejected by bob@example.com: not now" in body
    assert 'id="run-state">failed<' in body


def _join(body: UserBody, group_id: str) -> UserBody:
    return body.model_copy(update={"groups": [*body.groups, group_id]})


async def test_self_approval_is_the_apis_refusal(m: Manager, store: Store, run_id: str) -> None:
    # alice started the run and joins sre: the buttons show (the console does not judge
    # self-approval), and the API refuses it.
    d = Directory(store)
    await person(store, "bob@example.com", "sre", EXEC)
    alice, group = await d.users.by_key("alice@example.com"), await d.groups.by_key("sre")
    assert alice is not None
    assert group is not None
    await d.users.update(alice.id, lambda b: _join(b, group.id))
    token = await SessionTokens(store).new()
    await d.sessions.insert(
        SessionBody(token_hash=hash_secret(token), user_id=alice.id, expires_at=4e9)
    )
    status, page, _ = await visit(m, "GET", f"/console/runbooks/runs/{run_id}", token)
    assert 'id="approve"' in page
    status, body = await decide(m, token, run_id, "approve", "")
    assert status == 403
    assert "another person must decide" in body


@pytest.mark.parametrize("verb", ["approve", "reject"])
async def test_a_decision_needs_the_token_and_this_origin(
    m: Manager, store: Store, run_id: str, verb: str
) -> None:
    bob = await person(store, "bob@example.com", "sre", EXEC)
    path = f"/console/runbooks/runs/{run_id}/{verb}"
    status, body, _ = await visit(m, "POST", path, bob, csrf=None)
    assert (status, "form token" in body) == (403, True)
    status, body, _ = await visit(m, "POST", path, bob, origin=False)
    assert (status, "another site" in body) == (403, True)
    assert (await m.call("GET", f"/api/v1/runbook-runs/{run_id}"))[1]["state"] == (
        "waiting_for_approval"
    )


def _run(**over: Any) -> dict[str, Any]:
    step = {
        "name": XSS,
        "kind": "approval",
        "status": "waiting",
        "task_id": None,
        "deadline": None,
        "approvals": [],
        "groups": ["sre"],
        "reason": XSS,
        "outputs": [],
    }
    run = {
        "id": "run_1",
        "runbook": XSS,
        "version": 1,
        "state": "waiting_for_approval",
        "app": "shop",
        "env": "prod",
        "trigger": "manual",
        "incident_id": None,
        "started_by": XSS,
        "created_at": 0.0,
        "updated_at": 0.0,
        "reason": XSS,
        "steps": [step],
        "rollback": None,
        "inputs": [],
        "scores": [
            {
                "standard": XSS,
                "score": 50.0,
                "met": [XSS],
                "unmet": [],
                "enforced": True,
                "minimum": 40.0,
            }
        ],
    }
    return {**run, **over}


def test_every_name_on_a_run_page_is_escaped() -> None:
    """Runbook and step names are narrow patterns today; the page escapes them anyway."""
    request = make_mocked_request("GET", "/console/runbooks/runs/run_1")
    html = render_text(request, "run.html", {"run": _run(), "may_decide": False})
    html = html.split("<main>")[1]  # the page's own script tags are in its head
    assert "<script" not in html
    assert "<img" not in html
    assert html.count("&lt;script&gt;window.__xss=1&lt;/script&gt;") >= 6


def test_the_buttons_follow_the_groups_the_waiting_step_still_needs() -> None:
    assert may_decide(_run(), ["sre"])
    assert not may_decide(_run(), ["ops"])
    assert not may_decide(_run(state="running"), ["sre"])
    decided = _run()
    decided["steps"][0]["approvals"] = [{"group": "sre", "decision": "approved"}]
    assert not may_decide(decided, ["sre"])
