"""Every concern's shared methods over one database: what a backend subclasses."""

from __future__ import annotations

from manager.store.base import Store
from manager.store.sql.access import AccessQueries
from manager.store.sql.audit import AuditQueries
from manager.store.sql.entities import EntityQueries
from manager.store.sql.secrets import SecretQueries
from manager.store.sql.tasks import TaskQueries

__all__ = ["SqlStore"]


class SqlStore(TaskQueries, SecretQueries, AccessQueries, EntityQueries, AuditQueries, Store):
    """A backend adds its connection (``_fetch``, ``open``, ``close``) and the methods whose
    transactions it runs its own way."""
