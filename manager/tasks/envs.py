"""Environments as task hand-out needs them: type and whether they want dedicated delegates.

The hand-out and acquires judge tasks against delegates without reading the store, so they
read this index: loaded at start, updated when this replica changes an environment,
re-read for one environment when another replica says it changed it (the ``env`` replica
event), and reloaded on every reconcile should such an event be lost. An environment not
(yet) in the index is judged the strictest way (manager.core.eligibility.place_of), so a
late event can only delay a task, never hand it to a delegate it should not reach.
"""

from __future__ import annotations

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

    async def reread(self, env_id: str) -> None:
        """Another replica changed this environment: read it from the store."""
        found = await self._directory.envs.get(env_id)
        self.changed(env_id, None if found is None else found.body)
