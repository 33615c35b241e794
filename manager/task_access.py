"""Who may do what to a task: its application and environment decide.

A task submitted with an app and an env needs ``execute`` there (to submit and to cancel) and
``read`` (to see it, its logs and its outcome). A task outside any application needs the action
on every application and environment. A task the caller may not read answers 404, as a task
that does not exist does, so ids cannot be probed.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from manager.access import ACCESS
from manager.directory import Directory
from manager.errors import ApiProblem
from manager.principal import principal_of
from manager.rbac import Action, EnvType, Target
from manager.store.records import TaskRecord

__all__ = ["Places", "check_task", "places", "submit_target"]


@dataclass(frozen=True, slots=True)
class Places:
    """Applications and environments by id, loaded once for a request that shows tasks."""

    apps: dict[str, str]  # id -> name
    envs: dict[str, tuple[str, str, EnvType]]  # id -> (app id, name, type)

    def target(self, task: TaskRecord) -> Target | None:
        if task.app_id is None or task.env_id is None:
            return None
        env = self.envs.get(task.env_id)
        # An environment deleted since is judged as production, the stricter of the two.
        return Target(task.app_id, task.env_id, "production" if env is None else env[2])

    def names(self, task: TaskRecord) -> tuple[str | None, str | None]:
        app = None if task.app_id is None else self.apps.get(task.app_id, task.app_id)
        env = None
        if task.env_id is not None:
            found = self.envs.get(task.env_id)
            env = found[1] if found is not None else task.env_id
        return app, env


async def places(directory: Directory) -> Places:
    apps = {a.id: a.body.name for a in await directory.apps.list()}
    envs = {e.id: (e.body.app_id, e.body.name, e.body.type) for e in await directory.envs.list()}
    return Places(apps, envs)


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
