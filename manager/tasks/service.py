"""Task operations: submit, claims of assignments, logs, results, cancel, and the sweep.

Each operation reads a snapshot, asks :mod:`manager.core.taskstate` what should happen, and has
the store apply it with a compare-and-set; then it updates the in-memory dispatch index,
leases and followers. A lost race re-reads and decides again rather than guessing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from manager.core.audit_chain import AuditOf
from manager.core.eligibility import TaskFacts, place_of, refusal
from manager.core.taskstate import (
    WITHDRAWN,
    Decision,
    Verdict,
    on_acquire,
    on_cancel,
    on_lease_lost,
    on_result,
    on_timeout,
    on_withdraw,
    timeout_due,
)
from manager.errors import Conflicting, Gone, Invalid, NotFound, Unavailable
from manager.keys.masterkey import MasterKey
from manager.metrics import Metrics
from manager.records import AttemptRecord, Claimed, LogRecord, TaskRecord
from manager.schemas.grants import Target
from manager.schemas.tasks import TaskSubmit
from manager.store.base import Store, StoreError
from manager.tasks.bus import Bus, EventKind, LocalBus
from manager.tasks.envs import EnvIndex
from manager.tasks.events import TaskEvents
from manager.tasks.handout import Handout, Reserved
from manager.tasks.hub import Hub, Session
from manager.tasks.idempotency import differences, scoped
from shared.ids import new_id
from shared.limits import Timings
from shared.logbytes import is_text, shown
from shared.protocol import (
    FINAL_STATES,
    AcquireResponse,
    LogBatch,
    LogBatchAck,
    LogLine,
    ResultAck,
    TaskDrain,
    TaskResult,
    TaskSpec,
    TaskState,
)
from shared.sealing import seal
from shared.secretspec import SecretDelivery, SecretOpPayload

__all__ = ["IDEMPOTENCY_WINDOW_S", "TaskService"]

log = structlog.get_logger("tether.tasks")

IDEMPOTENCY_WINDOW_S = 24 * 3600.0


def _env_bytes(env: dict[str, str]) -> bytes:
    return json.dumps(env, sort_keys=True).encode()


def _log_record(attempt: int, index: int, line: LogLine) -> LogRecord:
    """How a line is stored: text as it came, any other bytes exactly beside what they show
    as. A line of text with a NUL in it (an older delegate sends those) is bytes too."""
    if line.data is None and "\x00" not in line.text:
        return LogRecord(attempt, line.seq, line.stream, line.ts, line.text)
    try:
        raw = line.raw
    except UnicodeEncodeError:
        raise Invalid(
            "invalid",
            f"lines.{index}.text: not Unicode text (a lone surrogate); send such bytes as data",
            field=f"lines.{index}.text",
        ) from None
    if is_text(raw):
        return LogRecord(attempt, line.seq, line.stream, line.ts, raw.decode("utf-8"))
    return LogRecord(attempt, line.seq, line.stream, line.ts, shown(raw), raw)


def _secret_context(task_id: str) -> bytes:
    return b"tether-task-secret-env-v1\x00" + task_id.encode()


class SecretDeliverer(Protocol):
    """What the acquire answer needs from the secrets (manager.secrets.delivery)."""

    def check_payload(self, payload: object) -> None:
        """Invalid when an expression in ``payload`` is malformed."""

    async def deliver(
        self, task: TaskRecord, attempt: int, public_key: str
    ) -> tuple[list[SecretDelivery], dict[str, str], dict[str, str]]:
        """(deliveries, sealed credentials by manager id, unavailable names with why)."""
        ...


class IdTokenAttacher(Protocol):
    """Seals an attempt's workload-identity request credential into its assignment
    (manager.tasks.id_tokens.IdTokens)."""

    def attach(self, handed: AcquireResponse, delegate_public_key: str) -> AcquireResponse: ...


@dataclass(frozen=True, slots=True)
class _Deadline:
    """When a tracked task's timeout falls due on the monotonic clock, and the snapshot it
    was reckoned from: a task another replica moved on is reckoned again, not timed out."""

    at: float
    state: TaskState
    attempt: int


class TaskService:
    """``clock`` is monotonic: every duration (leases, timeouts) is measured on it. ``wall``
    dates what users read (created, started, finished) and nothing else."""

    def __init__(
        self,
        *,
        store: Store,
        hub: Hub,
        handout: Handout,
        events: TaskEvents,
        master_key: MasterKey,
        timings: Timings,
        metrics: Metrics | None = None,
        bus: Bus | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        envs: EnvIndex | None = None,
        # Secrets for the acquire answer (manager.secrets.delivery); None delivers none.
        secrets: SecretDeliverer | None = None,
        # Whether the claims running at start were all made by this manager's earlier
        # process (one manager on its store: SQLite), so that one it may never have sent is
        # pushed again to its holder (recover). With replicas another one may be carrying
        # that claim out right now: a push from here too, and that replica's withdrawal when
        # the delegate moved, would run the attempt twice.
        adopt_claims: bool = True,
    ) -> None:
        self._store = store
        self.envs = envs or EnvIndex(store)
        self._bus = bus or LocalBus()
        self._metrics = metrics or Metrics()
        self._hub = hub
        self.handout = handout
        handout.bind(self)
        # Seals the attempt's workload-identity request credential into an assignment
        # (manager.tasks.id_tokens.IdTokens.attach); set once the app holds one.
        self.id_tokens: IdTokenAttacher | None = None
        self._events = events
        self._key = master_key
        self._timings = timings
        self._clock = clock
        self._wall = wall
        # When each open task's timeout falls due, so the sweep never scans the store:
        # queued tasks by their queue timeout, running ones by their run timeout.
        self._deadlines: dict[str, _Deadline] = {}
        # Snapshots of open tasks this process has seen, so a decision rarely needs a read.
        self._open: dict[str, TaskRecord] = {}
        self._run_margin = timings.kill_grace + 1.0
        self._secrets = secrets
        self._adopt_claims = adopt_claims
        # When the sweep last asked the store for leases that ran out: a lease found now ran
        # out since, which the lost-lease log line says (what the fault tests judge by).
        self._looked_at: float | None = None

    async def recover(self) -> None:
        """Rebuild the in-memory view after a start: the queue, leases and pending cancels."""
        await self.envs.load()
        # Nothing is judged before the delegates could come back (core.liveness); granted
        # again once the listener is open (grant_start_grace).
        await self.grant_start_grace()
        for task in await self._store.tasks_in_states([TaskState.QUEUED, TaskState.RUNNING]):
            self._track(task)
            self._remember(task)
            if task.state is TaskState.QUEUED:
                self.handout.queued(task)
            elif task.delegate_id is not None:
                # A full lease from now: the holder has that long to reconnect and list it.
                self._hub.leases.grant(task.id, task.delegate_id)
                if self._adopt_claims:
                    # Claimed by the process before this one, maybe never sent: pushed again
                    # to its holder's same process if that comes back without it.
                    self.handout.adopt(task)
                if task.cancel_requested:
                    self._hub.cancelling.add(task.id)

    async def grant_start_grace(self) -> None:
        """Delegates get a full lease from now to reconnect and list their tasks again, and
        nothing is judged before they had that long (core.liveness).

        Called at :meth:`recover` and again once the listener is open: the time to come back
        runs from when a delegate can connect. A start can spend seconds between the two
        (keys, TLS, the console, a loaded machine); counted from recovery, that grace was
        spent before any delegate could connect, and healthy delegates' leases were judged
        before they could list them.

        The grace in memory first: it cannot fail. A store that fails the extension here
        (once the listener is open) leaves the one made at recovery, and the sweep judges
        the store's leases only against the heartbeats that come back, as after a failed
        renewal; the manager keeps running."""
        self._hub.liveness.started(self._clock())
        try:
            await self._store.extend_leases(self._hub.liveness.start_grace)
        except StoreError as exc:
            log.warning("start leases not extended", error=str(exc))

    def open_tasks(self) -> list[TaskRecord]:
        """Snapshots of the queued and running tasks this process knows."""
        return list(self._open.values())

    # -- users ----------------------------------------------------------------------------

    async def submit(
        self,
        req: TaskSubmit,
        *,
        target: Target | None = None,
        submitted_by: str | None = None,
        audit: AuditOf[TaskRecord] | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Queue a user's task; ``target`` is its application and environment, already
        checked against the submitter's permissions. ``audit``: the event of a new task,
        chained with it (a repeat of an idempotent submit writes none)."""
        if self._secrets is not None:
            self._secrets.check_payload(req.payload)
        now = self._wall()
        task_id = new_id("task")
        record = TaskRecord(
            id=task_id,
            type=req.payload.type,
            state=TaskState.QUEUED,
            payload=req.payload.model_dump(mode="json"),
            selectors=tuple(req.selectors),
            timeout_s=req.timeout_s or self._timings.task_timeout,
            queue_timeout_s=req.queue_timeout_s or self._timings.queue_timeout,
            max_attempts=req.max_attempts,
            created_at=now,
            queued_at=now,
            idempotency_key=None
            if req.idempotency_key is None
            else scoped(
                req.idempotency_key,
                submitted_by,
                None if target is None else target.app_id,
                None if target is None else target.env_id,
            ),
            secret_env_sealed=self._seal_env(task_id, req.secret_env),
            secret_env_names=tuple(sorted(req.secret_env)),
            deployment=req.deployment.model_dump(mode="json") if req.deployment else None,
            app_id=None if target is None else target.app_id,
            env_id=None if target is None else target.env_id,
            submitted_by=submitted_by,
            name=req.name,
            labels=dict(req.labels),
        )
        stored, created = await self._insert(record, audit)
        if not created:
            changed = differences(
                record, stored, _env_bytes(req.secret_env), self._unsealed_env(stored)
            )
            if changed:
                raise Conflicting(
                    "conflict",
                    f"idempotency key {req.idempotency_key!r} was used for task {stored.id}"
                    f" with a different {', '.join(changed)}; use a new key",
                    field="idempotency_key",
                )
        return stored, created

    async def submit_internal(
        self,
        payload: SecretOpPayload,
        *,
        selectors: tuple[str, ...],
        secret_env: dict[str, str],
        timeout_s: float,
    ) -> TaskRecord:
        """Queue one of the manager's own operations (a secret manager test, a key wrap)."""
        now = self._wall()
        task_id = new_id("task")
        record = TaskRecord(
            id=task_id,
            type=payload.type,
            state=TaskState.QUEUED,
            payload=payload.model_dump(mode="json"),
            selectors=selectors,
            timeout_s=timeout_s,
            queue_timeout_s=timeout_s,
            max_attempts=1,
            created_at=now,
            queued_at=now,
            secret_env_sealed=self._seal_env(task_id, secret_env),
            secret_env_names=tuple(sorted(secret_env)),
        )
        stored, _ = await self._insert(record)
        return stored

    def _unsealed_env(self, task: TaskRecord) -> bytes:
        if task.secret_env_sealed is None:
            return _env_bytes({})
        plain = self._key.decrypt(task.secret_env_sealed, context=_secret_context(task.id))
        return _env_bytes(json.loads(plain))

    def _seal_env(self, task_id: str, env: dict[str, str]) -> str | None:
        if not env:
            return None
        return self._key.encrypt(json.dumps(env).encode(), context=_secret_context(task_id))

    async def _insert(
        self, record: TaskRecord, audit: AuditOf[TaskRecord] | None = None
    ) -> tuple[TaskRecord, bool]:
        # The hand-out may choose a delegate for it at once: then the claim is written with
        # the task, in its transaction, and the assignment goes out once that commits.
        reserved = self.handout.reserve(record)
        claim = None
        if reserved.push is not None and reserved.session is not None:
            submitted = record
            record, claim = self._claimed(record, reserved.session, reserved.push.key)
            if audit is not None:
                audit = _as_submitted(audit, record, submitted)
        try:
            stored, created = await self._store.insert_task(
                record, idempotency_window=IDEMPOTENCY_WINDOW_S, audit=audit, claim=claim
            )
        except BaseException:
            # The row may be in (an answer lost after the commit, a caller cancelled while
            # its batch was written): a claim written with it is withdrawn, not forgotten.
            self.handout.not_inserted(reserved, record.id, maybe_written=claim is not None)
            raise
        if not created:
            self.handout.not_inserted(reserved, record.id)
            return stored, created
        self._metrics.tasks_submitted.inc()
        self._remember(stored)
        self._track(stored)
        log.info("task submitted", task_id=stored.id, type=stored.type)
        if claim is None or reserved.session is None:
            self.handout.inserted(reserved, None)
            # Again: a reconcile while the insert was written (its read without this row)
            # may have dropped the reservation. A notice the hand-out already has is a no-op.
            self.handout.queued(stored)
            self._bus.publish("queued", stored.id)
        else:
            try:
                await self._hand_inserted(reserved, stored, reserved.session)
            except BaseException:
                # Cancelled while its assignment was built (a handler at shutdown, a caller's
                # timeout): the gate must open, and the claim nobody was sent is taken back.
                self.handout.not_inserted(reserved, stored.id, maybe_written=True)
                raise
        self._events.notify(stored.id, listed=True)
        return stored, created

    def _claim_lease(self, session: Session) -> float:
        """A claim's lease: long enough to reach the ack (or its deadline) and the first
        heartbeat that lists the task, so the sweep does not take back a claim the hand-out
        still waits on."""
        return max(self._hub.lease_left(session.id), self.handout.ack_within)

    def _claimed(
        self, record: TaskRecord, session: Session, key: str
    ) -> tuple[TaskRecord, Claimed]:
        """``record`` claimed for ``session``'s delegate under ``key`` as claim() would
        (taskstate's on_acquire of a queued task), and the claim for its insert."""
        lease_for = self._claim_lease(session)
        decision = on_acquire(record, session.id, self._wall(), lease_for=lease_for, key=key)
        # The lease is the store's to count (Claimed.lease_for), never a time written here.
        changes = {k: v for k, v in decision.changes.items() if k != "lease_until"}
        claimed = dataclasses.replace(record, **changes)
        start = AttemptRecord(
            task_id=claimed.id,
            attempt=claimed.attempt,
            delegate_id=session.id,
            started_at=changes["started_at"],
        )
        return claimed, Claimed(start, lease_for)

    async def _hand_inserted(self, reserved: Reserved, task: TaskRecord, session: Session) -> None:
        """What claim() does once its commit is in, for a task stored claimed."""
        # Others forget it, should they have heard of it (it was never queued in the store).
        self._bus.publish("dequeued", task.id)
        session.strangers = session.strangers - {task.id}
        self._hub.leases.grant(task.id, session.id)
        queued_at = task.queued_at if task.queued_at is not None else task.created_at
        self._metrics.dispatch_latency.observe(max(0.0, self._wall() - queued_at))
        try:
            handed = await self._assignment(session, task)
        except Exception as exc:
            # As a failed claim: forgotten by the hand-out, the lease runs out and the sweep
            # queues it again. The submission stands: the task is stored.
            log.warning(
                "hand-out action failed",
                task_id=task.id,
                action="Push",
                error=f"{type(exc).__name__}: {exc}",
            )
            self.handout.not_inserted(reserved, task.id)
            return
        log.debug("task assigned", task_id=task.id, delegate_id=session.id, attempt=task.attempt)
        self.handout.inserted(reserved, handed)

    async def cancel(
        self, task_id: str, *, audit: AuditOf[tuple[TaskRecord, TaskRecord]] | None = None
    ) -> TaskRecord:
        """``audit``: the event of the cancel, from the task before and after, chained with
        it (a task already final or already asked writes none)."""
        task, _, updated = await self._transition(
            task_id, lambda t: on_cancel(t, self._wall()), end_status="cancelled", audit=audit
        )
        if updated is None:
            return task
        if updated.state is TaskState.CANCELLED:
            self._finished(updated)
        else:
            self._hub.cancel(task_id)
            self._bus.publish("cancel", task_id)
            self._events.notify(task_id, listed=True)  # a list shows it "cancelling"
        log.info("task cancel requested", task_id=task_id)
        return updated

    # -- delegates ------------------------------------------------------------------------

    async def acquire(
        self, session: Session, task_id: str, key: str | None = None
    ) -> AcquireResponse:
        """Hand the task to ``session``'s delegate. ``key`` names this try: the same
        delegate asking again with it (it never got the answer) is handed the same attempt
        again; anyone else is told the task is taken."""
        again = self._hub.leases.holder(task_id) == session.id
        if not again and self._hub.leases.count(session.id) >= session.delegate.capacity:
            raise Conflicting("no_capacity", "this delegate already runs its capacity")
        await self._check_eligible(session, task_id)
        lease_for = self._hub.lease_left(session.id)
        task, decision, updated = await self._transition(
            task_id,
            lambda t: on_acquire(t, session.id, self._wall(), lease_for=lease_for, key=key),
            starts_attempt=True,
        )
        if decision.verdict is Verdict.HELD:
            log.info("task handed out again", task_id=task.id, delegate_id=session.id)
            self._hub.leases.grant(task.id, session.id)
            return await self._assignment(session, task)
        if decision.verdict is Verdict.TAKEN:
            raise Conflicting("taken", decision.reason)
        if decision.verdict is Verdict.GONE or updated is None:
            raise Gone("gone", decision.reason)
        # Claimed outside the hand-out (the HTTPS acquire): its assignments forget it.
        self.handout.gone(task.id)
        self._bus.publish("dequeued", task.id)
        # A flag from before this acquire (the same task, an older attempt) must not cancel it.
        session.strangers = session.strangers - {task.id}
        self._track(updated)
        self._hub.leases.grant(task.id, session.id)
        queued_at = task.queued_at if task.queued_at is not None else task.created_at
        self._metrics.dispatch_latency.observe(max(0.0, self._wall() - queued_at))
        self._events.notify(task.id, listed=True)
        log.debug("task acquired", task_id=task.id, delegate_id=session.id, attempt=updated.attempt)
        return await self._assignment(session, updated)

    async def claim(
        self, session: Session, task_id: str, attempt: int, key: str
    ) -> AcquireResponse | None:
        """Commit attempt ``attempt`` of the task for ``session``'s delegate under its link
        ``key`` (the hand-out's ``Push``), and build the assignment; the same holder with the
        same key is handed the same attempt again (HELD). None when the store refuses: the
        task is final, held by another, or at another attempt than the hand-out thought
        (then it is queued again here at the store's attempt)."""
        lease_for = self._claim_lease(session)

        def decide(t: TaskRecord) -> Decision:
            expected = t.attempt + 1 if t.state is TaskState.QUEUED else t.attempt
            if t.state in (TaskState.QUEUED, TaskState.RUNNING) and expected != attempt:
                return Decision(Verdict.TAKEN, reason="the task is at another attempt")
            # Judged again here, on the record and the environments as they are now: the
            # hand-out chose from facts taken when the task was queued, and an environment
            # made dedicated (or deleted) since must not let its secrets reach a delegate
            # the task is no longer for. Refused, the task is placed again on fresh facts.
            why = refusal(
                session.facts,
                TaskFacts(t.type, t.selectors, place_of(t.app_id, t.env_id, self.envs.facts)),
            )
            if why is not None:
                log.warning("claim refused", task_id=t.id, delegate_id=session.id, reason=why)
                return Decision(Verdict.TAKEN, reason=why)
            return on_acquire(t, session.id, self._wall(), lease_for=lease_for, key=key)

        try:
            # On PostgreSQL a row another replica is claiming is skipped, not waited on
            # (FOR UPDATE SKIP LOCKED): the re-read then finds it taken.
            task, decision, updated = await self._transition(
                task_id, decide, starts_attempt=True, skip_locked=True
            )
        except NotFound:
            return None
        except Unavailable:
            # Locked at every try (busy with other writes): placed again once forgotten.
            again = await self._get(task_id, fresh=True)
            if again.state is TaskState.QUEUED:
                asyncio.get_running_loop().call_soon(self.handout.queued, again)
            return None
        if decision.verdict is Verdict.HELD:
            # Handed again (its first frame or answer was lost, or a claim adopted at start):
            # the stored lease is extended as for a new claim. Nothing vouches for it before
            # the holder's next heartbeat lists it, and the lease left may be short.
            await self._store.renew_leases([(task.id, session.id, lease_for)])
            self._hub.leases.grant(task.id, session.id)
            return await self._assignment(session, task)
        if updated is None:
            if task.state is TaskState.QUEUED:
                # Queued at an attempt the hand-out did not know: again, once it forgot it.
                asyncio.get_running_loop().call_soon(self.handout.queued, task)
            return None
        self._bus.publish("dequeued", task.id)
        # A flag from before this claim (the same task, an older attempt) must not cancel it.
        session.strangers = session.strangers - {task.id}
        self._track(updated)
        self._hub.leases.grant(task.id, session.id)
        queued_at = task.queued_at if task.queued_at is not None else task.created_at
        self._metrics.dispatch_latency.observe(max(0.0, self._wall() - queued_at))
        self._events.notify(task.id, listed=True)
        log.debug("task assigned", task_id=task.id, delegate_id=session.id, attempt=attempt)
        return await self._assignment(session, updated)

    async def withdraw(self, task_id: str, delegate_id: str, attempt: int) -> None:
        """Take back the claim of an assignment that was declined or never acknowledged
        (taskstate.on_withdraw): the task is queued again, the attempt not counted."""
        try:
            task, _, updated = await self._transition(
                task_id,
                lambda t: on_withdraw(t, delegate_id, attempt, self._wall()),
                end_status=WITHDRAWN,
            )
        except NotFound:
            self.handout.gone(task_id)
            return
        if updated is None:
            if task.state in FINAL_STATES:
                self.handout.gone(task_id)
            return
        if self._hub.leases.holder(task_id) == delegate_id:
            self._hub.leases.release(task_id)
        self._track(updated)
        if updated.state is TaskState.QUEUED:
            # A notice the hand-out already has; it puts the task back if it had forgotten it.
            self.handout.queued(updated)
            self._bus.publish("queued", task_id)
            self._events.notify(task_id, listed=True)
        else:
            self._finished(updated)

    async def _assignment(self, session: Session, task: TaskRecord) -> AcquireResponse:
        """The assignment of the attempt ``task`` is at, with its workload-identity request
        credential when the task has an application (no token can be issued without one,
        and sealing it costs a key exchange per hand-out)."""
        handed = await self._handout(session, task)
        if task.app_id is not None and self.id_tokens is not None:
            handed = self.id_tokens.attach(handed, session.delegate.public_key)
        return handed

    async def _handout(self, session: Session, task: TaskRecord) -> AcquireResponse:
        """The acquire answer for the attempt ``task`` is at: its spec, and its secrets
        sealed to the delegate's key for that attempt."""
        sealed_env = None
        if task.secret_env_sealed is not None:
            plain = self._key.decrypt(task.secret_env_sealed, context=_secret_context(task.id))
            sealed_env = seal(
                session.delegate.public_key,
                plain,
                context=f"{task.id}:{task.attempt}".encode(),
            )
        deliveries: list[SecretDelivery] = []
        credentials: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        if self._secrets is not None:
            deliveries, credentials, unavailable = await self._secrets.deliver(
                task, task.attempt, session.delegate.public_key
            )
        return AcquireResponse(
            task=TaskSpec.model_validate(
                {
                    "id": task.id,
                    "payload": task.payload,
                    "timeout_s": task.timeout_s,
                    "deployment": task.deployment,
                }
            ),
            attempt=task.attempt,
            sealed_env=sealed_env,
            secrets=deliveries,
            credentials=credentials,
            unavailable=unavailable,
        )

    async def _check_eligible(self, session: Session, task_id: str) -> None:
        """Refuse a task this delegate may not run with the answer for a task that does not
        exist: it learns neither the task's state nor its payload nor its secrets."""
        self._refuse_ineligible(session, await self._get(task_id), "acquire refused")

    def _refuse_ineligible(self, session: Session, task: TaskRecord, what: str) -> None:
        place = place_of(task.app_id, task.env_id, self.envs.facts)
        why = refusal(session.facts, TaskFacts(task.type, task.selectors, place))
        if why is not None:
            log.warning(what, task_id=task.id, delegate_id=session.id, reason=why)
            raise NotFound("not_found", f"no task {task.id}")

    async def append_logs(self, session: Session, task_id: str, batch: LogBatch) -> LogBatchAck:
        lines = [_log_record(batch.attempt, i, ln) for i, ln in enumerate(batch.lines)]
        inserted = await self._store.append_logs(task_id, batch.attempt, session.id, lines)
        if inserted < 0:
            task = await self._store.get_task(task_id)
            if task is None:
                raise NotFound("not_found", f"no task {task_id}")
            # A delegate that may not run it is answered as for a task that does not exist:
            # "stale" would tell it the id is a task's.
            self._refuse_ineligible(session, task, "log lines refused")
            raise Conflicting("stale_attempt", "this attempt no longer holds the task")
        if inserted:
            self._events.notify(task_id, logs=True)
            self._bus.publish("changed", task_id)
            self._metrics.log_lines.inc(inserted)
            size = sum(len(ln.text) if ln.data is None else len(ln.data) for ln in lines)
            self._metrics.log_bytes.inc(size * inserted // len(batch.lines))
        return LogBatchAck(accepted=inserted, cancel=task_id in self._hub.cancelling)

    async def record_result(self, session: Session, task_id: str, result: TaskResult) -> ResultAck:
        task, decision, updated = await self._transition(
            task_id,
            lambda t: on_result(t, result, session.id, self._wall()),
            end_status=result.status,
        )
        if decision.verdict is Verdict.STALE:
            # As for log lines: an ineligible delegate learns not even that the task exists.
            self._refuse_ineligible(session, task, "result refused")
            raise Conflicting("stale_attempt", decision.reason)
        # Recorded now or before: the attempt's slot frees.
        self.handout.result(task_id, session.id, result.attempt)
        if updated is None:
            return ResultAck(state=task.state, recorded=False)
        self._finished(updated)
        log.debug(
            "task finished", task_id=task_id, state=updated.state.value, delegate_id=session.id
        )
        return ResultAck(state=updated.state, recorded=True)

    # -- other replicas ---------------------------------------------------------------------

    async def on_remote(self, kind: EventKind, task_id: str) -> None:
        """Another replica changed a task: bring this one's memory in line. Its word may
        follow log lines it took (their own word may come later, or not at all): followers
        read the log again, whatever the kind."""
        if kind == "queued":
            task = await self._store.get_task(task_id)
            if task is not None and task.state is TaskState.QUEUED:
                self._remember(task)
                self._track(task)
                self.handout.queued(task)
        elif kind == "dequeued":
            self.handout.gone(task_id)
            self._open.pop(task_id, None)
            self._deadlines.pop(task_id, None)
        elif kind == "cancel":
            self._hub.cancel(task_id)
        elif kind != "changed":
            self.handout.gone(task_id)
            self._open.pop(task_id, None)
            self._deadlines.pop(task_id, None)
            self._hub.leases.release(task_id)
            self._hub.cancelling.discard(task_id)
        # "changed" is log lines alone: a task list shows nothing new.
        self._events.notify(task_id, listed=kind != "changed", logs=True, remote=True)

    async def reconcile(self) -> None:
        """Make memory match the store: the repair for a missed replica event.

        The queue index, and each local session's drain flag (an operator may have drained
        a delegate through another replica).
        """
        draining = {d.id: d for d in await self._store.list_delegates()}
        for session in self._hub.sessions.values():
            record = draining.get(session.id)
            if record is not None and record.draining != session.draining:
                session.delegate = record
                session.draining = record.draining
                if record.draining:
                    self._hub.send(session, TaskDrain())
                self.handout.drain(session.id, record.draining)
        await self.envs.load()
        queued = {t.id: t for t in await self._store.tasks_in_states([TaskState.QUEUED])}
        for task_id in [t for t in self.handout.assigner.queue() if t not in queued]:
            self.handout.gone(task_id)
            self._open.pop(task_id, None)
            self._deadlines.pop(task_id, None)
        waiting = set(self.handout.assigner.queue())
        for task in queued.values():
            self._remember(task)
            self._track(task)
            if task.id in waiting:
                # Judged again against the environments just reloaded: one that was not
                # known yet when it was queued (another replica's) was judged strictest.
                self.handout.gone(task.id)
            # A notice the hand-out already has at a newer attempt (claimed) changes nothing.
            self.handout.queued(task)

    # -- time -----------------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """One batched write: extend the leases the delegates' heartbeats vouch for, each
        to ``lost_after`` after the heartbeat that listed it. Raises when the store fails
        (the caller retries at its next pass)."""
        held = self._hub.held()
        renewed = await self._store.renew_leases(
            [(c.task_id, c.delegate_id, c.lease_for) for c in held]
        )
        self._hub.renewed(held, renewed)

    async def sweep(self) -> None:
        """Lost leases, queue timeouts and run timeouts.

        Nothing is judged while the manager may have missed heartbeats (after its start or
        a stall of its own: core.liveness). A lease the store says ran out still holds when
        its holder's last heartbeat here listed the task: the renewal failed to be written,
        the delegate did nothing wrong.
        """
        now = self._clock()
        if not self._hub.liveness.judging(now):
            return
        looked, self._looked_at = self._looked_at, now
        for task in await self._store.expired_leases():
            task_id = task.id
            if not self._hub.liveness.judging(self._clock()):
                return  # frozen since the pass began: judge again after the grace
            if task.delegate_id is not None and self._hub.vouches(task_id, task.delegate_id):
                self._hub.renewals.hasten()
                continue
            withdrawn = 0
            if task.attempt >= task.max_attempts:
                # Only then can attempts that never ran change the outcome.
                withdrawn = sum(a.status == WITHDRAWN for a in await self._store.attempts(task_id))
            decided = self._clock()
            timing = _lost_timing(
                self._hub.liveness.silent_for(task.delegate_id or "", decided), looked, decided
            )
            decision = on_lease_lost(task, self._wall(), withdrawn=withdrawn)
            updated = await self._apply(task, decision, end_status="lost")
            if updated is None:
                continue
            self._hub.leases.release(task_id)
            if updated.state is TaskState.QUEUED:
                log.warning(
                    "lease lost; task requeued", task_id=task_id, attempt=task.attempt, **timing
                )
                self._track(updated)
                self.handout.queued(updated)
                self._events.notify(task_id, listed=True)
                self._bus.publish("queued", task_id)
            else:
                log.warning(
                    "lease lost; task failed", task_id=task_id, error=updated.error, **timing
                )
                self._finished(updated)
        await self._sweep_deadlines(now)

    async def _sweep_deadlines(self, now: float) -> None:
        due = [t for t, deadline in self._deadlines.items() if deadline.at < now]
        for task_id in due:
            current = await self._store.get_task(task_id)
            if not self._hub.liveness.judging(self._clock()):
                return
            if current is None or current.state in FINAL_STATES:
                self._deadlines.pop(task_id, None)
                continue
            tracked = self._deadlines.get(task_id)
            if tracked is None or (tracked.state, tracked.attempt) != (
                current.state,
                current.attempt,
            ):
                # Moved on elsewhere (another replica requeued or started it): its deadline
                # is reckoned again from what it is now.
                self._remember(current)
                self._track(current)
                continue
            task = current
            decision = on_timeout(task, self._wall())
            if decision.verdict is Verdict.APPLY:
                end = "timed_out" if task.state is TaskState.RUNNING else None
                updated = await self._apply(task, decision, end_status=end)
                if updated is not None:
                    if task.state is TaskState.RUNNING:
                        self._hub.cancel(task.id)  # stop the process if its delegate lives
                    self._finished(updated)

    # -- helpers --------------------------------------------------------------------------

    async def _get(self, task_id: str, *, fresh: bool = False) -> TaskRecord:
        if not fresh:
            cached = self._open.get(task_id)
            if cached is not None:
                return cached
        task = await self._store.get_task(task_id)
        if task is None:
            raise NotFound("not_found", f"no task {task_id}")
        return task

    async def _transition(
        self,
        task_id: str,
        decide: Callable[[TaskRecord], Decision],
        *,
        starts_attempt: bool = False,
        end_status: str | None = None,
        audit: AuditOf[tuple[TaskRecord, TaskRecord]] | None = None,
        skip_locked: bool = False,
    ) -> tuple[TaskRecord, Decision, TaskRecord | None]:
        """Decide from a snapshot and apply by compare-and-set; re-read when it was stale.

        The snapshot comes from memory when this process knows the task, so the usual path
        is one store call. A refusal decided from memory is checked against the store before
        it is answered, since another replica may have moved the task on.
        """
        fresh = False
        for _ in range(5):
            task = await self._get(task_id, fresh=fresh)
            decision = decide(task)
            if decision.verdict is not Verdict.APPLY:
                if not fresh and task_id in self._open:
                    fresh = True
                    continue
                return task, decision, None
            start = None
            if starts_attempt:
                start = AttemptRecord(
                    task_id=task.id,
                    attempt=decision.changes["attempt"],
                    delegate_id=decision.changes["delegate_id"],
                    started_at=decision.changes["started_at"],
                )
            updated = await self._apply(
                task,
                decision,
                start=start,
                end_status=end_status,
                audit=_of_change(task, audit),
                skip_locked=skip_locked,
            )
            if updated is not None:
                return task, decision, updated
            self._open.pop(task_id, None)
            fresh = True
        # Not a 409: a delegate reads that as "your attempt is stale" and gives up.
        raise Unavailable("busy", "the task kept changing; try again")

    async def _apply(
        self,
        task: TaskRecord,
        decision: Decision,
        *,
        start: AttemptRecord | None = None,
        end_status: str | None = None,
        audit: AuditOf[TaskRecord] | None = None,
        skip_locked: bool = False,
    ) -> TaskRecord | None:
        ends_attempt = task.state is TaskState.RUNNING and decision.changes.get("state") not in (
            None,
            TaskState.RUNNING,
        )
        updated = await self._store.update_task(
            task.id,
            expect_state=task.state,
            expect_attempt=task.attempt,
            changes=decision.changes,
            start_attempt=start,
            end_attempt_status=end_status if ends_attempt else None,
            end_attempt_at=self._wall(),
            audit=audit,
            skip_locked=skip_locked,
        )
        if updated is not None:
            self._remember(updated)
            self._events.wrote(updated)
        return updated

    def _remember(self, task: TaskRecord) -> None:
        if task.state in FINAL_STATES:
            self._open.pop(task.id, None)
        else:
            # Without its payload: decisions never need it, and scripts can be large.
            self._open[task.id] = dataclasses.replace(task, payload={})

    def _track(self, task: TaskRecord) -> None:
        due = timeout_due(task, run_margin=self._run_margin)
        if due is None:
            self._deadlines.pop(task.id, None)
            return
        # The time left, read once off the task's wall-clock stamps, counts down on the
        # monotonic clock from here: a later jump of the wall clock moves no deadline.
        at = self._clock() + (due - self._wall())
        self._deadlines[task.id] = _Deadline(at, task.state, task.attempt)

    def _finished(self, task: TaskRecord) -> None:
        if task.state in FINAL_STATES:
            self._bus.publish("finished", task.id)
            self._metrics.tasks_finished.labels(task.state.value).inc()
            self._deadlines.pop(task.id, None)
            self._hub.leases.release(task.id)
            self._hub.cancelling.discard(task.id)
            self.handout.gone(task.id)
        self._events.notify(task.id, listed=True)


def _as_submitted(
    audit: AuditOf[TaskRecord], claimed: TaskRecord, submitted: TaskRecord
) -> AuditOf[TaskRecord]:
    """``audit`` of a task stored claimed, told it as submitted (queued): the event of a
    submission says what was asked for (and the submit's answer, made with it, stays what
    it was before claims were written with the insert)."""
    return lambda task: audit(submitted if task is claimed else task)


def _of_change(
    before: TaskRecord, audit: AuditOf[tuple[TaskRecord, TaskRecord]] | None
) -> AuditOf[TaskRecord] | None:
    """``audit`` of an update, told the snapshot it was decided from as well."""
    if audit is None:
        return None
    return lambda after: audit((before, after))


def _lost_timing(silent: float | None, looked: float | None, decided: float) -> dict[str, float]:
    """What a lost-lease log line says of its timing: how long the holder had been silent
    (since its last heartbeat heard here, when there was one), and how long since the sweep
    before looked (the lease ran out in between): the silence is at most a lease plus that."""
    out: dict[str, float] = {}
    if silent is not None:
        out["silent_s"] = round(silent, 3)
    if looked is not None:
        out["since_last_look_s"] = round(decided - looked, 3)
    return out
