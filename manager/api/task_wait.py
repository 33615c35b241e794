"""A submit that answers with its task's outcome: ``POST /api/v1/tasks?wait=S``.

A client that wants a task's result otherwise makes two requests, the submit and then a follow
(or polls); with ``wait`` the submit's own answer comes once the task is final, or after ``S``
seconds with the task as it is then (the client tells the two apart by its ``state``). The task
is submitted as any other: the wait changes only when the answer is sent, never what is
written, and a client that goes away leaves a task that runs on.

A wait is bounded (:data:`MAX_WAIT_S`), holds one wake-up and the task's news
(manager.tasks.events) and nothing else, and sees what a ``GET`` of the task would: the
caller must be allowed to read it before anything is written, and is judged again, credential
and read permission, before the outcome is sent (a grant taken away meanwhile leaves the
answer the submit would have given without the wait).
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from manager.access.places import Places
from manager.api.context import ctx
from manager.api.guards import recheck
from manager.api.http import ApiProblem
from manager.api.task_access import check_task
from manager.errors import DomainError
from manager.records import TaskRecord
from shared.aio import first_of
from shared.protocol import FINAL_STATES

__all__ = ["MAX_WAIT_S", "RECHECK_S", "until_final", "wait_param"]

# The longest wait a submit may ask for: long enough for a short task's whole run, short
# enough that no proxy's idle timeout cuts the answer off (a longer task is followed).
MAX_WAIT_S = 60.0
# A wait reads the store at least this often: the repair for a change whose word never came
# (as a follow's recheck), and with replicas the way to see another replica's result.
RECHECK_S = 2.0


# Plain decimal seconds: float() alone takes " 1", "1_0", "1e1" and other scripts' digits.
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def wait_param(request: web.Request) -> float | None:
    """The ``wait`` a submit asks for, in seconds; None when it asks for none."""
    given = request.query.getall("wait", [])
    if not given:
        return None
    if len(given) > 1:
        raise ApiProblem(400, "invalid", "wait: give it once", field="wait")
    if not _SECONDS.fullmatch(given[0]):
        raise ApiProblem(
            400, "invalid", "wait: expected a number of seconds, like 30 or 2.5", field="wait"
        )
    value = float(given[0])
    if not 0 < value <= MAX_WAIT_S:  # finite already: the pattern takes no exponent
        raise ApiProblem(
            400,
            "invalid",
            f"wait: must be more than 0 and at most {MAX_WAIT_S:g} seconds",
            field="wait",
        )
    return value


async def until_final(
    request: web.Request, task: TaskRecord, wait_s: float, where: Places
) -> TaskRecord | None:
    """``task`` once final, or as it is when ``wait_s`` has passed or the manager stops.
    None: the caller may no longer read it (its credential or its read permission went
    while it waited)."""
    c = ctx(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    # Held for the whole wait: what this process writes of the task meanwhile (its result)
    # comes with its word, and costs no read (alone; with replicas each wake reads).
    news = c.events.news(task.id)
    shared = c.bus.shared
    timer_woke = False
    latest: TaskRecord | None = task
    while latest is not None and latest.state not in FINAL_STATES and not c.stopping:
        left = deadline - loop.time()
        if left <= 0:
            break
        # Listened for before the read: a change between the two sets it, and is not missed.
        changed = c.events.listen(task.id)
        if shared or timer_woke or news.task is None:
            latest = await c.task_reads.get(task.id)
        else:
            latest = news.task
        if latest is None or latest.state in FINAL_STATES:
            break
        await first_of(changed, timeout=min(left, RECHECK_S))
        timer_woke = not changed.is_set()
    if latest is None:
        return None  # purged meanwhile: nothing more to tell than the submit's answer
    try:
        await recheck(request)
        check_task(request, latest, where, "read", task.id)
    except (ApiProblem, DomainError):
        return None
    return latest
