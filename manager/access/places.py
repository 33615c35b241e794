"""Applications and environments by id, loaded once for a request that shows or judges many
tasks or scopes (one read each, not one per task)."""

from __future__ import annotations

from dataclasses import dataclass

from manager.access.directory import Directory
from manager.records import TaskRecord
from manager.schemas.grants import EnvType, Target

__all__ = ["Places", "places"]


@dataclass(frozen=True, slots=True)
class Places:
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
