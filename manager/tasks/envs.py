"""Environments as task hand-out needs them: type and whether they want dedicated delegates.

Dispatch judges every queued task against every delegate without reading the store, so it
reads this index (loaded at start, updated when this replica changes an environment, reloaded
on every reconcile for changes made on other replicas). Hints are only hints: acquire, which
hands out the task and its secrets, reads the task's environment from the store each time.
"""

from __future__ import annotations

from collections.abc import Mapping

from manager.access.directory import Directory, EnvBody
from manager.core.eligibility import EnvFacts
from manager.store.base import Store

__all__ = ["EnvIndex"]


def _facts(body: EnvBody) -> EnvFacts:
    return EnvFacts(body.app_id, body.type, body.dedicated_delegates)


class EnvIndex:
    def __init__(self, store: Store) -> None:
        self._directory = Directory(store)
        # Mutated in place: the dispatcher holds this very mapping.
        self.facts: dict[str, EnvFacts] = {}

    async def load(self) -> None:
        envs = {e.id: _facts(e.body) for e in await self._directory.envs.list()}
        self.facts.clear()
        self.facts.update(envs)

    def changed(self, env_id: str, body: EnvBody | None) -> None:
        """This replica created, changed (``body``) or deleted (None) an environment."""
        if body is None:
            self.facts.pop(env_id, None)
        else:
            self.facts[env_id] = _facts(body)

    async def current(self, env_id: str | None) -> Mapping[str, EnvFacts]:
        """The index, with ``env_id`` read from the store first."""
        if env_id is not None:
            found = await self._directory.envs.get(env_id)
            self.changed(env_id, None if found is None else found.body)
        return self.facts
