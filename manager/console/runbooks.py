"""Runbooks in the console: the runbooks (read only), their runs, a run's page, and the
approval of the step a run waits on.

Every read and decision is the API's own handler (manager.api.runbooks): the runs listed are
those the API lists for the user, and an approval or rejection is judged there (the groups
named by the step, another person than the one who started the run unless the runbook
allows it) and recorded in the trail there. The buttons are drawn for a member of a group
the waiting step still needs; the API's refusal stands for everything else.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from manager.api import auth as auth_api
from manager.api import runbooks as runbooks_api
from manager.console.calls import call_api
from manager.console.render import render

__all__ = ["approve", "may_decide", "reject", "run_page", "runbooks_page"]


async def runbooks_page(request: web.Request) -> web.StreamResponse:
    query = {"runbook": r} if (r := request.query.get("runbook", "").strip()) else {}
    runs = (await call_api(request, runbooks_api.list_runs, query=query))["runs"]
    books = (await call_api(request, runbooks_api.list_runbooks, query={}))["runbooks"]
    return render(request, "runbooks.html", {"runs": runs, "runbooks": books, "filters": query})


def may_decide(run: dict[str, Any], my_groups: list[str]) -> bool:
    """Whether ``my_groups`` hold one the waiting step still needs: who sees the buttons."""
    if run["state"] != "waiting_for_approval":
        return False
    step = next((s for s in run["steps"] if s["status"] == "waiting"), None)
    if step is None:
        return False
    decided = {a.get("group") for a in step["approvals"]}
    return any(g in my_groups and g not in decided for g in step["groups"])


async def _run_values(request: web.Request, run: dict[str, Any]) -> dict[str, Any]:
    me = await call_api(request, auth_api.me, query={})
    return {"run": run, "may_decide": may_decide(run, me.get("groups", []))}


async def run_page(request: web.Request) -> web.StreamResponse:
    run = await call_api(request, runbooks_api.get_run, query={})
    return render(request, "run.html", await _run_values(request, run))


async def _decide(request: web.Request, approve: bool) -> web.StreamResponse:
    form = await request.post()
    body = {"reason": str(form.get("reason", ""))}
    handler = runbooks_api.approve_run if approve else runbooks_api.reject_run
    run = await call_api(request, handler, body=body)
    return render(request, "run.html", await _run_values(request, run))


async def approve(request: web.Request) -> web.StreamResponse:
    return await _decide(request, True)


async def reject(request: web.Request) -> web.StreamResponse:
    return await _decide(request, False)
