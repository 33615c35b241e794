"""Who may do what to a task: its application and environment decide.

A task submitted with an app and an env needs ``execute`` there (to submit and to cancel) and
``read`` (to see it, its logs and its outcome). A task outside any application needs the action
on every application and environment. A task the caller may not read answers 404, as a task
that does not exist does, so ids cannot be probed.
"""

from __future__ import annotations

from aiohttp import web

from manager.access.places import Places
from manager.access.principal import principal_of
from manager.api.context import ctx
from manager.api.guards import ACCESS
from manager.api.http import ApiProblem
from manager.core.rbac import Grants
from manager.records import Readable, TaskRecord
from manager.schemas.grants import Action, Target
from shared.task_secrets import referenced_secrets

__all__ = ["check_secrets", "check_task", "readable", "submit_target"]

# No environment has this id: a target in it is one of an environment deleted since.
_GONE = "\x00gone"


async def submit_target(request: web.Request, app: str | None, env: str | None) -> Target | None:
    """The target a submission names, once the caller may execute there."""
    principal = principal_of(request)
    if app is None or env is None:
        if not principal.grants.allows(None, "execute"):
            raise ApiProblem(
                403,
                "forbidden",
                "name the task's app and env: you may not execute outside an application",
            )
        return None
    target = await request.app[ACCESS].directory.target(app, env)
    if target is None:
        raise ApiProblem(400, "invalid", f"no environment {env!r} in application {app!r}")
    if not principal.grants.allows(target, "execute"):
        raise ApiProblem(403, "forbidden", f"you may not execute in {app}/{env}")
    return target


async def check_secrets(
    request: web.Request, payload: object, target: Target | None, where: str
) -> None:
    """A task may use a secret whose usage scope covers its place, and only if the submitter
    holds create, read and update there (manager.secrets.scope). Unknown names are left to
    delivery, which fails the task before anything runs and names them."""
    service = ctx(request).secrets
    service.check_payload(payload)  # a malformed expression is a 400 before anything else
    names = sorted(referenced_secrets(payload))
    if not names:
        return
    grants = principal_of(request).grants
    if not grants.allows_all(target, ("create", "read", "update")):
        raise ApiProblem(
            403, "forbidden", f"using secrets in {where} needs create, read and update there"
        )
    found = await service.secrets_named(names)
    for name in names:
        secret = found.get(name)
        if secret is None:
            continue
        if refusal := await service.task_refusal(secret):
            raise ApiProblem(
                403, "forbidden", f"secret {name!r} may not be used in tasks: {refusal}"
            )
        scope = await service.scopes.effective(secret.id, secret.manager_id)
        if not scope.covers(target):
            raise ApiProblem(403, "forbidden", f"secret {name!r} is not scoped for use in {where}")


def check_task(
    request: web.Request, task: TaskRecord | None, where: Places, action: Action, task_id: str
) -> TaskRecord:
    """``task`` if the caller may read it and do ``action`` to it; 404 if it may not be read."""
    grants = principal_of(request).grants
    target = None if task is None else where.target(task)
    if task is None or not grants.allows(target, "read"):
        raise ApiProblem(404, "not_found", f"no task {task_id}")
    if action != "read" and not grants.allows(target, action):
        raise ApiProblem(403, "forbidden", f"you may not {action} task {task_id}")
    return task


def readable(grants: Grants, where: Places) -> Readable | None:
    """The tasks ``grants`` may read, for a listing's query to filter before its limit (a
    limit applied to every matching task and the page filtered after tells, by the limit at
    which the reader's own task shows, how many it may not read matched, and when). The
    same judgment as :func:`check_task` (Places.target, then Grants.allows); None when
    every task is readable."""
    if grants.everywhere("read"):
        return None
    envs = frozenset(
        env_id
        for env_id, (app_id, _, env_type) in where.envs.items()
        if grants.allows(Target(app_id, env_id, env_type), "read")
    )
    # A task of an environment deleted since is judged as production (Places.target). A
    # grant naming that environment's id (or its deleted application's) would cover it too;
    # such a task is left out of lists (it still reads by its id): stricter, never looser.
    gone_apps = frozenset(
        app_id
        for app_id in where.apps
        if grants.allows(Target(app_id, _GONE, "production"), "read")
    )
    return Readable(
        outside=grants.allows(None, "read"),
        envs=envs,
        known=frozenset(where.envs),
        gone_all=grants.allows(Target(_GONE, _GONE, "production"), "read"),
        gone_apps=gone_apps,
    )
