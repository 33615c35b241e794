"""Runbooks and their runs: definitions (versioned, audited), and the driver that carries
runs through :mod:`manager.core.runstate` (standards: manager.runbooks.standards).

Everything is kept as the store's entities (JSON documents with a version, written with a
compare-and-set, their audit event in the same transaction): ``runbook`` (the current
version), ``runbook_version`` (every version, kept), ``standard`` and ``runbook_run``.

A run's steps are ordinary tasks, submitted through the task service with an idempotency
key made of the run and the step. Each step is stored as ``submitting`` before its task is
submitted, and its task id once it is: a manager that dies in between submits again on
start (:meth:`RunbookService.recover`) and gets the same task, so no step runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field

from manager.access.directory import Directory
from manager.access.entities import Entity, EntityKind, Gone, together
from manager.access.principal import Principal
from manager.core.audit_chain import AuditAppend, AuditOf
from manager.core.runexpr import ExprError, Scope, SecretRef
from manager.core.runinputs import InputError
from manager.core.runinputs import validate_inputs as _validate
from manager.core.runstate import (
    FINAL,
    ROLLBACK,
    Approve,
    Cancel,
    CancelTask,
    Refused,
    Reject,
    RunProgress,
    Start,
    Submit,
    Submitted,
    TaskDone,
    Tick,
    on_event,
)
from manager.core.standards import Score, refusal
from manager.errors import Conflicting, Forbidden, Invalid, NotFound
from manager.governance.freeze import Freezes, check_freeze
from manager.keys.data_keys import DataKey, DataKeys
from manager.keys.masterkey import MasterKey
from manager.records import EntityRecord, TaskRecord
from manager.runbooks.checks import problems
from manager.runbooks.sealing import owner, seal_json, unseal_json
from manager.runbooks.standards import Standards, score_view
from manager.runbooks.steps import task_for
from manager.runbooks.verify_step import secret_expressions, verify_task
from manager.schemas.grants import Target
from manager.schemas.runbooks import (
    RunbookDefinition,
    RunbookView,
    RunView,
    ScoreView,
    StepView,
)
from manager.secrets.service import SecretService
from manager.store.base import Conflict, Store
from manager.tasks.events import TaskEvents
from manager.tasks.service import TaskService
from shared.expressions import referenced_names
from shared.ids import new_id
from shared.protocol import FINAL_STATES, TaskState

if TYPE_CHECKING:
    from manager.api.context import Context

__all__ = [
    "RunBody",
    "RunbookService",
    "start_run",
    "validate_inputs",
]

log = structlog.get_logger("tether.runbooks")

# How often a waiting step's task is read again when no event came (another replica ran it).
_WATCH_POLL_S = 5.0
# How often the sweep reads every run, for those another replica started or left.
_RESCAN_S = 30.0
_SEP = "\x1f"


def validate_inputs(definition: RunbookDefinition, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The run's inputs, typed (manager.core.runinputs); :class:`Invalid` naming the input
    when one is wrong. For the webhook mapping too."""
    try:
        return _validate(definition, raw)
    except InputError as exc:
        raise Invalid("invalid", str(exc), field=f"inputs.{exc.name}") from None


async def start_run(
    ctx: Context,
    runbook: str,
    inputs: Mapping[str, str],
    principal: Principal,
    *,
    trigger: str,
    incident_id: str | None = None,
) -> str:
    """Start a run of ``runbook`` for ``principal``; the run's id. Raises the errors of
    :mod:`manager.errors` (400 invalid inputs, 403 no execute, 404 no runbook, 409
    refused by a standard). The stable entry point of the webhooks."""
    service = ctx.runbooks
    if service is None:
        raise NotFound("not_found", "runbooks are not enabled on this manager")
    run, _ = await service.start(
        runbook, inputs, principal, trigger=trigger, incident_id=incident_id
    )
    return run.id


class _Body(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")


class RunbookBody(_Body):
    name: str
    version: int
    definition: dict[str, Any]


class RunBody(_Body):
    # Unique per run: its id, or its starter and idempotency key.
    key: str
    # The runbook's name, and the version run (``definition`` is that version, kept whole).
    runbook: str
    version: int
    definition: dict[str, Any]
    app: str
    env: str
    app_id: str
    env_id: str
    env_type: str
    trigger: str
    incident_id: str | None = None
    # The freeze windows the starter proceeded through, and why (override_freeze).
    freeze_override: dict[str, Any] | None = None
    started_by: str  # actor id
    started_by_name: str
    started_by_user: str | None = None
    progress: RunProgress
    input_names: list[str] = Field(default_factory=list)
    # Sealed under the run's data key (manager.runbooks.sealing): the typed inputs, and the
    # outputs of finished steps by step name.
    inputs_sealed: str
    outputs_sealed: str | None = None
    scores: list[ScoreView] = Field(default_factory=list)
    created_at: float
    updated_at: float


def _to_json(value: Any) -> Any:
    if isinstance(value, SecretRef):
        return {"secret": value.name}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"secret"}:
        return SecretRef(str(value["secret"]))
    return value


class RunbookService:
    def __init__(
        self,
        *,
        store: Store,
        directory: Directory,
        tasks: TaskService,
        events: TaskEvents,
        master_key: MasterKey,
        data_keys: DataKeys,
        secrets: SecretService | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets = secrets
        self._store = store
        self._directory = directory
        self._tasks = tasks
        self._events = events
        self._key = master_key
        self._data_keys = data_keys
        self._clock = clock
        # Freeze windows refuse runs aimed at a frozen place (set by the app's wiring; None:
        # no windows are checked, as in tests of the runs alone).
        self.freezes: Freezes | None = None
        self.runbooks = EntityKind(store, "runbook", RunbookBody, lambda b: b.name, "rbk")
        self.versions = EntityKind(
            store, "runbook_version", RunbookBody, lambda b: f"{b.name}@{b.version}", "rbv"
        )
        self.standards = Standards(store)
        self.runs = EntityKind(store, "runbook_run", RunBody, lambda b: b.key, "run")
        self._locks: dict[str, asyncio.Lock] = {}
        # Runs not yet ended that this process knows: the sweep ticks these, and reads every
        # run (others' too) only every _RESCAN_S.
        self._open: set[str] = set()
        self._scanned_at = float("-inf")
        self._watching: set[tuple[str, int]] = set()
        self._background: set[asyncio.Task[None]] = set()
        # Writes the events of changes no request carries (webhook triggers, host-side);
        # set by the app once its recorder exists (manager.server.app).
        self.system_audit: Callable[[Principal, str, Any], AuditAppend] | None = None

    # -- definitions ----------------------------------------------------------------------

    async def apply(
        self,
        definition: RunbookDefinition,
        principal: Principal,
        *,
        audit: AuditOf[tuple[RunbookBody | None, RunbookBody]] | None = None,
    ) -> tuple[RunbookView, bool]:
        """Store ``definition`` as the runbook's next version; (view, whether it changed)."""
        found = problems(definition)
        if found:
            raise Invalid("invalid", "; ".join(found[:5]), field="definition")
        await self.may_define(definition, principal)
        doc = definition.model_dump(mode="json")
        current = await self.runbooks.by_key(definition.name)
        if current is not None and current.body.definition == doc:
            return await self._view(current), False
        # (the body before or None, the body written) of the plan that was written last.
        pair: list[tuple[RunbookBody | None, RunbookBody]] = []

        async def plan() -> list[Any]:
            now = await self.runbooks.by_key(definition.name)
            version = 1 if now is None else now.body.version + 1
            body = RunbookBody(name=definition.name, version=version, definition=doc)
            pair[:] = [(None if now is None else now.body, body)]
            head = self.runbooks.inserted(body) if now is None else self.runbooks.updated(now, body)
            return [head, self.versions.inserted(body)]

        def event(_rows: list[EntityRecord | None]) -> AuditAppend | None:
            return None if audit is None else audit(pair[0])

        try:
            await together(self._store, plan, audit=event)
        except Conflict:
            raise Conflicting(
                "conflict", f"runbook {definition.name!r} changed meanwhile; try again"
            ) from None
        stored = await self.runbooks.by_key(definition.name)
        assert stored is not None
        return await self._view(stored), True

    async def may_read(self, principal: Principal, definition: RunbookDefinition) -> bool:
        """``read`` where the runbook runs; one whose env is an input, any signed-in caller."""
        if definition.env is None:
            return True
        target = await self._directory.target(definition.app, definition.env)
        return principal.grants.allows(target, "read") if target is not None else False

    @staticmethod
    def _run_target(run: Entity[RunBody]) -> Target:
        b = run.body
        env_type: Any = b.env_type
        return Target(b.app_id, b.env_id, env_type)

    def may_see_run(self, principal: Principal, run: Entity[RunBody]) -> bool:
        return principal.grants.allows(self._run_target(run), "read") or (
            principal.actor.id == run.body.started_by
        )

    def may_execute(self, principal: Principal, run: Entity[RunBody]) -> bool:
        return principal.grants.allows(self._run_target(run), "execute")

    async def may_define(self, definition: RunbookDefinition, principal: Principal) -> None:
        if definition.env is None:
            if not principal.grants.has("manage_applications"):
                raise Forbidden(
                    "forbidden",
                    "a runbook whose env is an input needs manage_applications",
                )
            if await self._directory.apps.by_key(definition.app) is None:
                raise Invalid("invalid", f"no application {definition.app!r}", field="app")
            return
        target = await self._target(definition.app, definition.env)
        if not principal.grants.allows(target, "update"):
            raise Forbidden(
                "forbidden", f"defining runbooks needs update in {definition.app}/{definition.env}"
            )

    async def _target(self, app: str, env: str) -> Target:
        target = await self._directory.target(app, env)
        if target is None:
            raise Invalid("invalid", f"no environment {env!r} in application {app!r}", field="env")
        return target

    async def get(self, name: str, version: int | None = None) -> RunbookView:
        current = await self.runbooks.by_key(name)
        if current is None:
            raise NotFound("not_found", f"no runbook {name!r}")
        if version is not None and version != current.body.version:
            old = await self.versions.by_key(f"{name}@{version}")
            if old is None:
                raise NotFound("not_found", f"runbook {name!r} has no version {version}")
            return await self._view(old)
        return await self._view(current)

    async def list_runbooks(self) -> list[RunbookView]:
        return [await self._view(r) for r in await self.runbooks.list()]

    async def delete(self, name: str, *, audit: AuditOf[Entity[RunbookBody]] | None = None) -> None:
        """The runbook goes; its versions and runs stay for the record."""
        current = await self.runbooks.by_key(name)
        if current is None or not await self.runbooks.delete(current.id, audit=audit):
            raise NotFound("not_found", f"no runbook {name!r}")

    async def _view(self, entity: Entity[RunbookBody]) -> RunbookView:
        definition = RunbookDefinition.model_validate(entity.body.definition)
        env_type = None
        if definition.env is not None:
            target = await self._directory.target(definition.app, definition.env)
            env_type = None if target is None else target.env_type
        scores = [score_view(s) for s in await self.scores(definition, env_type)]
        return RunbookView(
            name=entity.body.name,
            version=entity.body.version,
            definition=definition,
            updated_at=entity.updated_at,
            scores=scores,
        )

    async def scores(self, definition: RunbookDefinition, env_type: str | None) -> list[Score]:
        return await self.standards.scores(definition, env_type)

    # -- runs -----------------------------------------------------------------------------

    async def start(
        self,
        runbook: str,
        inputs: Mapping[str, Any],
        principal: Principal,
        *,
        trigger: str,
        incident_id: str | None = None,
        idempotency_key: str | None = None,
        override_freeze: str | None = None,
        audit: AuditOf[Entity[RunBody]] | None = None,
    ) -> tuple[Entity[RunBody], bool]:
        """The run, and whether it was started now (False: a retry with its key)."""
        current = await self.runbooks.by_key(runbook)
        if current is None:
            raise NotFound("not_found", f"no runbook {runbook!r}")
        definition = RunbookDefinition.model_validate(current.body.definition)
        typed = validate_inputs(definition, inputs)
        env = definition.env if definition.env is not None else str(typed["env"])
        target = await self._target(definition.app, env)
        if not principal.grants.allows(target, "execute"):
            raise Forbidden("forbidden", f"you may not execute in {definition.app}/{env}")
        await self._check_secrets(definition, typed, target, f"{definition.app}/{env}", principal)
        # Freeze windows, before anything is kept: refused with the window's name and end,
        # unless the starter may override and says why (kept on the run, so in its event).
        override = None
        if self.freezes is not None:
            override = await check_freeze(
                self.freezes,
                target,
                principal.grants,
                override_reason=override_freeze,
                now=self._clock(),
            )
        scores = await self.scores(definition, target.env_type)
        if (why := refusal(scores)) is not None:
            raise Conflicting("below_standard", f"run refused: {why}")
        run_id = new_id("run")
        now = self._clock()
        key = (
            run_id if idempotency_key is None else _SEP.join((principal.actor.id, idempotency_key))
        )
        run_key = await self._data_keys.key(owner(run_id), new=True)
        body = RunBody(
            key=key,
            runbook=definition.name,
            version=current.body.version,
            definition=current.body.definition,
            app=definition.app,
            env=env,
            app_id=target.app_id,
            env_id=target.env_id,
            env_type=target.env_type,
            trigger=trigger,
            incident_id=incident_id,
            freeze_override=None if override is None else override.audit(),
            started_by=principal.actor.id,
            started_by_name=principal.actor.name,
            started_by_user=principal.user_id,
            progress=RunProgress.new(definition),
            input_names=sorted(typed),
            inputs_sealed=seal_json(run_key, "inputs", {k: _to_json(v) for k, v in typed.items()}),
            scores=[score_view(s) for s in scores],
            created_at=now,
            updated_at=now,
        )
        of_insert = audit
        if of_insert is None and self.system_audit is not None:
            system = self.system_audit
            of_insert = lambda e: system(principal, trigger, e)  # noqa: E731
        record = EntityRecord(
            kind="runbook_run",
            id=run_id,
            key=key,
            body=body.model_dump(mode="json"),
            version=1,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._store.insert_entity(
                record,
                audit=None if of_insert is None else (lambda r: of_insert(self.runs.parse(r))),
            )
        except Conflict:
            # The run was not written: nor is the key made for it kept. (Not on another
            # error: the row may have been written before the connection failed.)
            await self._data_keys.forget(owner(run_id))
            if idempotency_key is None:
                raise
            earlier = await self.runs.by_key(key)
            if earlier is None:
                raise Conflicting("conflict", "the idempotency key is in use; try again") from None
            if earlier.body.runbook != definition.name or earlier.body.env_id != target.env_id:
                # A retry must not stand in for a different run (as for tasks).
                raise Conflicting(
                    "conflict",
                    f"idempotency key {idempotency_key!r} was used for run {earlier.id} of"
                    f" {earlier.body.runbook} in {earlier.body.app}/{earlier.body.env};"
                    " use a new key",
                    field="idempotency_key",
                ) from None
            return earlier, False
        except Exception:
            # Not written when the row is not there (its audit event failed and took the
            # transaction with it): the key made for it goes too. When the row is there, or
            # the store cannot say (the connection failed), the key stays with it.
            with contextlib.suppress(Exception):
                if await self.runs.get(run_id) is None:
                    await self._data_keys.forget(owner(run_id))
            raise
        try:
            return await self._feed(run_id, Start()), True
        except Exception as exc:  # kept: the sweep (tick) carries the run on
            log.warning("run started but not advanced", run_id=run_id, error=str(exc))
            run = await self.runs.get(run_id)
            assert run is not None
            return run, True

    async def _check_secrets(
        self,
        definition: RunbookDefinition,
        typed: Mapping[str, Any],
        target: Target,
        where: str,
        principal: Principal,
    ) -> None:
        """As for a task (manager.api.task_access.check_secrets): a run may use a secret
        (written in a step, or given as a secret input) whose usage scope covers its place,
        and only if its starter holds create, read and update there."""
        steps = [*definition.steps, *([definition.rollback] if definition.rollback else [])]
        texts = [t for s in steps for t in (s.script, s.url, s.body) if t]
        texts += [v for s in steps for v in (*s.env.values(), *s.headers.values())]
        texts += [t for s in steps for t in secret_expressions(s)]
        names = {name for _kind, name in referenced_names(texts)}
        names |= {v.name for v in typed.values() if isinstance(v, SecretRef)}
        if not names or self._secrets is None:
            return
        if not principal.grants.allows_all(target, ("create", "read", "update")):
            raise Forbidden(
                "forbidden",
                "running a runbook that uses secrets needs create, read and update"
                f" in its environment ({where})",
            )
        found = await self._secrets.secrets_named(sorted(names))
        for name in sorted(names):
            secret = found.get(name)
            if secret is None:
                continue  # delivery fails the step, naming it
            if refusal_ := await self._secrets.task_refusal(secret):
                raise Forbidden("forbidden", f"secret {name!r} may not be used: {refusal_}")
            scope = await self._secrets.scopes.effective(secret.id, secret.manager_id)
            if not scope.covers(target):
                raise Forbidden("forbidden", f"secret {name!r} is not scoped for use in {where}")

    async def view(self, run: Entity[RunBody]) -> RunView:
        return (await self.views([run]))[0]

    async def views(self, runs: list[Entity[RunBody]]) -> list[RunView]:
        """Each run's view, their data keys read at once."""
        keys = await self._data_keys.existing([owner(r.id) for r in runs])
        return [self._run_view(r, keys.get(owner(r.id))) for r in runs]

    def _run_view(self, run: Entity[RunBody], key: DataKey | None) -> RunView:
        b = run.body
        definition = RunbookDefinition.model_validate(b.definition)
        outputs = self._outputs(run, key)

        def step_view(spec: Any, progress: Any) -> StepView:
            return StepView(
                name=spec.name,
                kind=spec.kind,
                status=progress.status,
                task_id=progress.task_id,
                deadline=progress.deadline,
                approvals=progress.approvals,
                groups=spec.groups,
                reason=progress.reason,
                outputs=sorted(outputs.get(spec.name, {})),
            )

        return RunView(
            id=run.id,
            runbook=b.runbook,
            version=b.version,
            state=b.progress.state,
            app=b.app,
            env=b.env,
            trigger=b.trigger,
            incident_id=b.incident_id,
            started_by=b.started_by_name,
            created_at=b.created_at,
            updated_at=b.updated_at,
            reason=b.progress.reason,
            steps=[
                step_view(s, p) for s, p in zip(definition.steps, b.progress.steps, strict=True)
            ],
            rollback=None
            if definition.rollback is None or b.progress.rollback is None
            else step_view(definition.rollback, b.progress.rollback),
            inputs=b.input_names,
            scores=b.scores,
        )

    async def get_run(self, run_id: str) -> Entity[RunBody]:
        run = await self.runs.get(run_id)
        if run is None:
            raise NotFound("not_found", f"no run {run_id}")
        return run

    async def list_runs(self) -> list[Entity[RunBody]]:
        return sorted(await self.runs.list(), key=lambda r: r.body.created_at, reverse=True)

    async def decide(
        self,
        run_id: str,
        principal: Principal,
        *,
        approve: bool,
        reason: str,
        step: str | None,
        audit: AuditOf[tuple[RunBody, Entity[RunBody]]] | None = None,
    ) -> Entity[RunBody]:
        """Approve or reject the step the run waits on, as ``principal``."""
        run = await self.get_run(run_id)
        if principal.user_id is None:
            raise Forbidden("forbidden", "approvals are given by people: sign in as a user")
        user = await self._directory.users.get(principal.user_id)
        if user is None:
            raise Forbidden("forbidden", "approvals are given by people: sign in as a user")
        groups = frozenset(g.body.name for g in await self._directory.user_groups(user))
        kind = Approve if approve else Reject
        event = kind(
            user_id=user.id,
            user_name=user.body.email,
            groups=groups,
            started_it=principal.user_id == run.body.started_by_user
            or principal.actor.id == run.body.started_by,
            reason=reason,
            step=step,
        )
        return await self._feed(run_id, event, audit=audit)

    async def cancel(
        self,
        run_id: str,
        principal: Principal,
        *,
        audit: AuditOf[tuple[RunBody, Entity[RunBody]]] | None = None,
    ) -> Entity[RunBody]:
        return await self._feed(run_id, Cancel(f"cancelled by {principal.actor.name}"), audit=audit)

    # -- the driver -----------------------------------------------------------------------

    # ``key``: the run's data key, None when it has none (a run sealed before data keys).
    # Fetched before a store update, whose change function is synchronous.

    async def _run_key(self, run_id: str) -> DataKey | None:
        return (await self._data_keys.existing([owner(run_id)])).get(owner(run_id))

    def _outputs(self, run: Entity[RunBody], key: DataKey | None) -> dict[str, dict[str, str]]:
        sealed = run.body.outputs_sealed
        return {} if sealed is None else unseal_json(key, self._key, run.id, "outputs", sealed)

    def _inputs(self, run: Entity[RunBody], key: DataKey | None) -> dict[str, Any]:
        raw = unseal_json(key, self._key, run.id, "inputs", run.body.inputs_sealed)
        return {k: _from_json(v) for k, v in raw.items()}

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("runbook run step failed to advance", error=str(exc))

    async def _feed(
        self,
        run_id: str,
        event: Any,
        *,
        audit: AuditOf[tuple[RunBody, Entity[RunBody]]] | None = None,
    ) -> Entity[RunBody]:
        """Apply ``event`` to the run and carry out what it asks."""
        lock = self._locks.setdefault(run_id, asyncio.Lock())
        async with lock:
            effects: list[Any] = []
            # Made here for a run sealed before data keys: its new outputs are sealed under it.
            key = await self._data_keys.key(owner(run_id))

            def change(body: RunBody) -> RunBody:
                effects.clear()
                run = Entity(run_id, body, 0, body.created_at, body.updated_at)
                definition = RunbookDefinition.model_validate(body.definition)
                done = self._outputs(run, key)
                try:
                    outcome = on_event(
                        definition,
                        body.progress,
                        event,
                        self._clock(),
                        done,
                        self._inputs(run, key),
                    )
                except Refused as exc:
                    cls = Forbidden if exc.code == "forbidden" else Conflicting
                    raise cls(exc.code, exc.message) from None
                effects.extend(outcome.effects)
                if not outcome.changed:
                    return body
                update: dict[str, Any] = {"progress": outcome.run, "updated_at": self._clock()}
                if isinstance(event, TaskDone) and event.outputs and event.index != ROLLBACK:
                    done[definition.steps[event.index].name] = dict(event.outputs)
                    update["outputs_sealed"] = seal_json(key, "outputs", done)
                return body.model_copy(update=update)

            try:
                before, written = await self.runs.update(run_id, change, audit=audit)
            except Gone:
                raise NotFound("not_found", f"no run {run_id}") from None
            if written.body.progress.state in FINAL:
                self._open.discard(run_id)
                self._locks.pop(run_id, None)
            else:
                self._open.add(run_id)
            if before.progress != written.body.progress:
                progress = written.body.progress
                # What operators (and the fault tests) follow a run by; names, never values.
                log.info(
                    "runbook run changed",
                    run_id=run_id,
                    state=progress.state,
                    steps=[s.status for s in progress.steps],
                    tasks=[s.task_id for s in progress.steps],
                )
        for effect in effects:
            if isinstance(effect, Submit):
                written = await self._submit(written, effect.index)
            elif isinstance(effect, CancelTask):
                with contextlib.suppress(Exception):
                    await self._tasks.cancel(effect.task_id)
        return written

    async def _submit(self, run: Entity[RunBody], index: int) -> Entity[RunBody]:
        definition = RunbookDefinition.model_validate(run.body.definition)
        spec = definition.rollback if index == ROLLBACK else definition.steps[index]
        assert spec is not None
        progress = run.body.progress
        key = await self._run_key(run.id)
        outputs = self._outputs(run, key)
        steps = {
            s.name: (p.status, outputs.get(s.name, {}))
            for s, p in zip(definition.steps, progress.steps, strict=True)
        }
        inputs = self._inputs(run, key)
        target = self._run_target(run)
        try:
            if spec.kind == "verify":
                req = verify_task(
                    spec,
                    await self._deployment_before(run, definition, index),
                    now=self._clock(),
                    app=run.body.app_id,
                    env=run.body.env_id,
                    idempotency_key=f"runbook-run:{run.id}:{index}",
                )
            else:
                req = task_for(
                    spec,
                    Scope(inputs, steps),
                    inputs,
                    app=run.body.app_id,
                    env=run.body.env_id,
                    idempotency_key=f"runbook-run:{run.id}:{index}",
                )
            task, _ = await self._tasks.submit(req, target=target, submitted_by=run.body.started_by)
        except (ExprError, ValueError, Invalid, Conflicting) as exc:
            reason = exc.message if isinstance(exc, Invalid | Conflicting) else str(exc)
            return await self._feed(run.id, TaskDone(index, "", False, reason[:500]))
        written = await self._feed(run.id, Submitted(index, task.id))
        self._watch(run.id, index, task.id)
        return written

    async def _deployment_before(
        self, run: Entity[RunBody], definition: RunbookDefinition, index: int
    ) -> TaskRecord | None:
        """The task of the latest task step before ``index`` that is not a verification:
        the deployment a verify step judges."""
        progress = run.body.progress.steps
        end = len(progress) if index == ROLLBACK else index
        for step, p in reversed(list(zip(definition.steps[:end], progress[:end], strict=True))):
            if step.kind != "verify" and p.task_id:
                return await self._store.get_task(p.task_id)
        return None

    def _watch(self, run_id: str, index: int, task_id: str) -> None:
        if (run_id, index) in self._watching:
            return
        self._watching.add((run_id, index))
        self._spawn(self._follow(run_id, index, task_id))

    async def _follow(self, run_id: str, index: int, task_id: str) -> None:
        try:
            while True:
                woken = self._events.listen(task_id)
                task = await self._store.get_task(task_id)
                if task is None:
                    await self._feed(run_id, TaskDone(index, task_id, False, "its task is gone"))
                    return
                if task.state in FINAL_STATES:
                    ok = task.state is TaskState.SUCCEEDED
                    reason = None if ok else (task.error or f"task {task.state.value}")
                    done = TaskDone(index, task_id, ok, reason and reason[:500], task.outputs)
                    await self._feed(run_id, done)
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), _WATCH_POLL_S)
        finally:
            self._watching.discard((run_id, index))

    async def recover(self) -> None:
        """After a start: carry on every open run where it stopped. A step stored as
        submitting is submitted again under its key (the same task, if it was made); a
        running step's task is followed to its end."""
        self._scanned_at = time.monotonic()
        for run in await self.runs.list():
            if run.body.progress.state in FINAL:
                continue
            progress = run.body.progress
            for index, step in [*enumerate(progress.steps), (ROLLBACK, progress.rollback)]:
                if step is not None and step.status == "running" and step.task_id:
                    self._watch(run.id, index, step.task_id)
            try:
                await self._feed(run.id, Tick())
            except Exception as exc:  # one run's trouble must not stop the others
                log.warning("run not advanced", run_id=run.id, error=str(exc))

    async def tick(self) -> None:
        """Judge approval deadlines, and carry on what a failed write or another replica
        left (the sweep calls this)."""
        if time.monotonic() - self._scanned_at >= _RESCAN_S:
            await self.recover()
            return
        for run_id in sorted(self._open):
            try:
                await self._feed(run_id, Tick())
            except NotFound:
                self._open.discard(run_id)
            except Exception as exc:  # one run's trouble must not stop the others
                log.warning("run not advanced", run_id=run_id, error=str(exc))

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
