"""Every concern's shared methods over one database: what a backend subclasses."""

from __future__ import annotations

import structlog

from manager.store.base import EVERYTHING, ChangeWatcher, Store
from manager.store.entity_cache import EntityCache
from manager.store.sql.access import AccessQueries
from manager.store.sql.audit import AuditQueries
from manager.store.sql.data_keys import DataKeyQueries
from manager.store.sql.entities import EntityQueries
from manager.store.sql.purge import PurgeQueries
from manager.store.sql.retention import RetentionQueries
from manager.store.sql.secrets import SecretQueries
from manager.store.sql.tasks import TaskQueries

__all__ = ["SqlStore"]

log = structlog.get_logger("tether.store")


class SqlStore(
    TaskQueries,
    SecretQueries,
    AccessQueries,
    EntityQueries,
    AuditQueries,
    RetentionQueries,
    PurgeQueries,
    DataKeyQueries,
    Store,
):
    """A backend adds its connection (``_fetch``, ``open``, ``close``) and the methods whose
    transactions it runs its own way; one that other processes write too adds how their
    changes are heard of (``_changed`` and ``watch_changes``)."""

    def __init__(self, *, entity_cache: EntityCache | None = None) -> None:
        self._entity_cache = entity_cache or EntityCache()
        self._watchers: list[ChangeWatcher] = []

    async def _changed(self, what: str) -> None:
        self._entity_cache.drop(what)

    async def watch_changes(self, watcher: ChangeWatcher) -> None:
        # Delivered by a backend that hears of other processes' changes (PostgreSQL).
        self._watchers.append(watcher)

    def _heard(self, what: str) -> None:
        """Another process changed ``what`` (EVERYTHING: it may have): drop it, tell the
        watchers."""
        self._entity_cache.drop(None if what == EVERYTHING else what)
        for watcher in list(self._watchers):
            try:
                watcher(what)
            except Exception:  # one failing watcher must not keep the news from the others
                log.exception("change watcher failed", what=what)
