"""Retention settings and the purge: what the settings let go, deleted in bounded batches.

The purge is a list of targets (:data:`Purger.targets`), each deleting one kind of data on
its own; a new kind (incidents, being built on another branch) is one more entry there, with
its ``incidents_days`` already in the settings. Each batch is one short store call of at most
``batch`` rows, and the purge yields between batches, so the task path's writes never wait
behind more than one batch (manager.store.sql.retention). A purge writes one audit event,
with the counts per kind, when it deleted anything.

Nothing is deleted unless a retention is set: empty settings make every target a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from manager.access.directory import Directory
from manager.access.entities import Entity, EntityKind
from manager.core.audit_chain import AuditOf, ChainKey
from manager.core.audit_checkpoint import checkpoint
from manager.core.retention import ANY, DAY_S, DataRule, cutoff, rule_for
from manager.schemas.retention import RetentionSettings
from manager.store.base import Conflict, Store

__all__ = [
    "DEFAULT_BATCH",
    "Batch",
    "PurgeTarget",
    "Purger",
    "RetentionService",
    "Run",
]

log = structlog.get_logger("tether.retention")

# Rows per store call: a few milliseconds of SQLite's one writer (tests/manager/retention).
DEFAULT_BATCH = 500
# Tasks looked at per page of the walk.
_PAGE = 200
_SETTINGS_ID = "retention"


class RetentionService:
    """The settings, one entity (``retention``) whose writes carry their audit event."""

    def __init__(self, store: Store) -> None:
        self._kind: EntityKind[RetentionSettings] = EntityKind(
            store, "retention", RetentionSettings, lambda _b: _SETTINGS_ID, "ret"
        )

    async def get(self) -> RetentionSettings:
        found = await self._kind.get(_SETTINGS_ID)
        return RetentionSettings() if found is None else found.body

    async def put(
        self,
        settings: RetentionSettings,
        *,
        audit: AuditOf[tuple[RetentionSettings | None, Entity[RetentionSettings]]] | None = None,
    ) -> RetentionSettings | None:
        """Replace the settings; the ones replaced (None: there were none)."""
        return await self._kind.put(_SETTINGS_ID, settings, audit=audit)


@dataclass(frozen=True)
class Batch:
    """One store call of the purge: what it deleted, and how long it took (monotonic)."""

    kind: str
    rows: int
    seconds: float


@dataclass
class Run:
    """One purge: per-kind counts, and the batches (for tests and the logs)."""

    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    batches: list[Batch] = field(default_factory=list)

    def add(self, kind: str, n: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n


class PurgeTarget(Protocol):
    kinds: tuple[str, ...]

    async def purge(self, settings: RetentionSettings, now: float, run: Run) -> None: ...


class _Calls:
    """Times each store call of a purge and yields to the loop after it."""

    def __init__(self, run: Run, monotonic: Callable[[], float]) -> None:
        self.run = run
        self._monotonic = monotonic

    async def __call__(self, kind: str, call: Awaitable[int]) -> int:
        started = self._monotonic()
        n = await call
        self.run.batches.append(Batch(kind, n, self._monotonic() - started))
        await asyncio.sleep(0)  # the task path's calls queued meanwhile go first
        return n


class TaskData:
    """Finished tasks, and their log lines (possibly sooner), by the rules per app/env type."""

    kinds: tuple[str, ...] = ("tasks", "logs")

    def __init__(self, store: Store, batch: int, monotonic: Callable[[], float]) -> None:
        self._store = store
        self._directory = Directory(store)
        self._batch = batch
        self._monotonic = monotonic

    async def _places(
        self, rules: Sequence[DataRule]
    ) -> list[tuple[tuple[str, str] | None, DataRule]]:
        apps = {a.id: a.body.name for a in await self._directory.apps.list()}
        out: list[tuple[tuple[str, str] | None, DataRule]] = []
        for env in await self._directory.envs.list():
            rule = rule_for(rules, apps.get(env.body.app_id), env.body.type)
            if rule is not None:
                out.append(((env.body.app_id, env.id), rule))
        # Tasks outside any application: only a rule for every app (and every type) covers them.
        loose = rule_for([r for r in rules if r.app == ANY and r.env_type == ANY], None, None)
        if loose is not None:
            out.append((None, loose))
        return out

    async def purge(self, settings: RetentionSettings, now: float, run: Run) -> None:
        rules = [DataRule(r.app, r.env_type, r.logs_days, r.tasks_days) for r in settings.rules]
        calls = _Calls(run, self._monotonic)
        for place, rule in await self._places(rules):
            await self._place(place, rule, now, run, calls)

    async def _place(
        self,
        place: tuple[str, str] | None,
        rule: DataRule,
        now: float,
        run: Run,
        calls: _Calls,
    ) -> None:
        tasks_cut = cutoff(now, rule.tasks_days)
        logs_cut = cutoff(now, rule.logs_days)
        walk_cut = max(c for c in (tasks_cut, logs_cut) if c is not None)
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            page = await self._store.purge_page(place, walk_cut, after, _PAGE)
            if not page:
                return
            after = (page[-1].created_at, page[-1].id)
            doomed: list[str] = []
            for c in page:
                if not c.finished:
                    continue  # queued or running: never, however old
                ended = c.finished_at if c.finished_at is not None else c.created_at
                if tasks_cut is not None and ended < tasks_cut:
                    doomed.append(c.id)
                elif logs_cut is not None and ended < logs_cut and not c.logs_purged:
                    run.add("logs", await self._logs(c.id, run, calls))
                    if not run.dry_run:
                        await self._store.mark_logs_purged(c.id, now)
            if doomed:
                for task_id in doomed:
                    await self._logs(task_id, run, calls)
                if run.dry_run:
                    run.add("tasks", len(doomed))
                else:
                    run.add(
                        "tasks", await calls("tasks", self._store.delete_finished_tasks(doomed))
                    )
            if len(page) < _PAGE:
                return

    async def _logs(self, task_id: str, run: Run, calls: _Calls) -> int:
        """The task's lines deleted a batch at a time; counted as tasks whose lines go."""
        if run.dry_run:
            return 1
        while await calls("logs", self._store.delete_task_logs(task_id, self._batch)) >= (
            self._batch
        ):
            pass
        return 1


class AuditEvents:
    """The oldest audit events, behind a signed checkpoint at the cut."""

    kinds: tuple[str, ...] = ("audit",)

    def __init__(
        self,
        store: Store,
        chain_key: Callable[[], ChainKey],
        batch: int,
        monotonic: Callable[[], float],
    ) -> None:
        self._store = store
        self._chain_key = chain_key
        self._batch = batch
        self._monotonic = monotonic

    async def purge(self, settings: RetentionSettings, now: float, run: Run) -> None:
        if settings.audit_days is None:
            return
        upto = await self._store.audit_last_before(now - settings.audit_days * DAY_S)
        head, _ = await self._store.audit_head()
        first = await self._store.audit_first_seq()
        if upto is None or first is None:
            return
        upto = min(upto, head - 1)  # the newest event always stays: it is the head
        if upto < first:
            return
        if run.dry_run:
            run.add("audit", upto - first + 1)
            return
        event_hash = await self._store.audit_event_hash(upto)
        if event_hash is None:
            return
        # Conflict: another replica's purge cut at the same event (the same checkpoint).
        with contextlib.suppress(Conflict):
            await self._store.add_audit_checkpoint(
                checkpoint(self._chain_key(), upto, event_hash, now)
            )
        calls = _Calls(run, self._monotonic)
        while True:
            n = await calls("audit", self._store.delete_audit_upto(upto, self._batch))
            run.add("audit", n)
            if n < self._batch:  # a short batch: nothing is left up to the cut
                return


class Purger:
    def __init__(
        self,
        store: Store,
        chain_key: Callable[[], ChainKey],
        record: Callable[[dict[str, int]], Awaitable[object]],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.settings = RetentionService(store)
        self._clock = clock
        self._record = record
        # Incidents join here (issue 19, branch hooks): one target that reads incidents_days.
        self.targets: list[PurgeTarget] = [
            TaskData(store, batch, monotonic),
            AuditEvents(store, chain_key, batch, monotonic),
        ]

    async def run(self, *, dry_run: bool = False) -> Run:
        settings = await self.settings.get()
        now = self._clock()
        run = Run(dry_run, {kind: 0 for t in self.targets for kind in t.kinds})
        for target in self.targets:
            await target.purge(settings, now, run)
        if not dry_run and any(run.counts.values()):
            await self._record(dict(run.counts))
            log.info("purged", **run.counts)
        return run

    async def run_forever(self, interval: float) -> None:
        """A purge every ``interval`` seconds (the first one after the first interval)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run()
            except Exception as exc:  # the next interval tries again
                log.warning("purge failed", error=str(exc))
