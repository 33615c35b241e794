"""Running the manager's secret operations on a delegate, and waiting for the answer.

The manager never talks to a customer's secret manager: a connection test, the wrap of an
inline secret's data key with a customer's key, and the re-wrap of a migration all go to a
delegate as an internal ``secret_op`` task, chosen by the secret manager's selectors. The
task is an ordinary one (a lease, a result, a record in the task list), so it survives a
replica's death and shows in ``tether task list`` like any other.

A data key handed to a delegate travels in the task's sealed env (encrypted at rest with
the manager's key, sealed to the delegate at acquire) and is erased from the task row as
soon as the operation ends, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from manager.errors import Unavailable, UpstreamFailed, UpstreamTimeout
from manager.records import SecretManagerRecord, TaskRecord
from manager.store.base import Store
from manager.tasks.events import TaskEvents
from manager.tasks.service import TaskService
from shared.protocol import FINAL_STATES, TaskState
from shared.sealing import SealError, generate_keypair, open_sealed, public_key_b64
from shared.secretspec import ManagerSpec, SecretOpPayload, op_key_context

__all__ = ["OpResult", "SecretOps", "manager_spec"]

log = structlog.get_logger("tether.secret_ops")

# How often a waiter re-reads the task even without a wake-up: the result may land on
# another replica, whose event reaches this one through the bus (or not at all).
_RECHECK_S = 1.0


def manager_spec(m: SecretManagerRecord) -> ManagerSpec:
    return ManagerSpec.model_validate(
        {"id": m.id, "name": m.name, "kind": m.kind, "settings": dict(m.settings)}
    )


@dataclass(frozen=True, slots=True)
class OpResult:
    task: TaskRecord

    @property
    def ok(self) -> bool:
        return self.task.state is TaskState.SUCCEEDED

    @property
    def error(self) -> str:
        if self.task.state is TaskState.EXPIRED:
            return (
                "no delegate took the operation in time (is one connected whose selectors match?)"
            )
        return self.task.error or f"the operation ended {self.task.state.value}"


class SecretOps:
    def __init__(
        self,
        *,
        store: Store,
        tasks: TaskService,
        events: TaskEvents,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._tasks = tasks
        self._events = events
        self._timeout = timeout
        self._clock = clock

    async def run(
        self,
        manager: SecretManagerRecord,
        payload: SecretOpPayload,
        *,
        data_key: bytes | None = None,
    ) -> OpResult:
        """Queue ``payload`` for a delegate matching ``manager``'s selectors; wait for it."""
        env = {"TETHER_DATA_KEY": base64.b64encode(data_key).decode()} if data_key else {}
        task = await self._tasks.submit_internal(
            payload, selectors=manager.selectors, secret_env=env, timeout_s=self._timeout
        )
        try:
            done = await self._wait(task.id)
        finally:
            if data_key is not None:
                await self._store.clear_task_secret_env(task.id)
        log.info(
            "secret operation ended",
            op=payload.op,
            manager=manager.name,
            task_id=task.id,
            state=done.state.value,
        )
        return OpResult(done)

    async def check(self, manager: SecretManagerRecord) -> OpResult:
        return await self.run(manager, SecretOpPayload(op="check", manager=manager_spec(manager)))

    async def wrap(self, manager: SecretManagerRecord, data_key: bytes, context: bytes) -> bytes:
        """``data_key`` wrapped by ``manager``'s key under ``context``, done by a delegate."""
        payload = SecretOpPayload(
            op="wrap", manager=manager_spec(manager), context=base64.b64encode(context).decode()
        )
        result = await self.run(manager, payload, data_key=data_key)
        return _b64_output(result, "wrapped_key", manager)

    async def unwrap(self, manager: SecretManagerRecord, wrapped: bytes, context: bytes) -> bytes:
        """The data key, unwrapped by a delegate and sealed back to a key made for this call
        alone: the stored task output is ciphertext nobody can open afterwards."""
        private, public = generate_keypair()
        payload = SecretOpPayload(
            op="unwrap",
            manager=manager_spec(manager),
            context=base64.b64encode(context).decode(),
            wrapped_key=base64.b64encode(wrapped).decode(),
            reply_key=public_key_b64(public),
        )
        result = await self.run(manager, payload)
        sealed = _output(result, "sealed_key", manager)
        try:
            return open_sealed(private, sealed, context=op_key_context(result.task.id))
        except SealError as exc:
            raise UpstreamFailed(
                "secret_op_failed", f"{manager.name}: the delegate's answer is unusable: {exc}"
            ) from None

    async def rewrap(
        self,
        source: SecretManagerRecord,
        target: SecretManagerRecord,
        wrapped: bytes,
        context: bytes,
    ) -> bytes:
        payload = SecretOpPayload(
            op="rewrap",
            manager=manager_spec(source),
            target=manager_spec(target),
            context=base64.b64encode(context).decode(),
            wrapped_key=base64.b64encode(wrapped).decode(),
        )
        # The delegate must reach both; the target's selectors narrow the source's.
        both = _both_selectors(source, target)
        result = await self.run(both, payload)
        return _b64_output(result, "wrapped_key", target)

    async def _wait(self, task_id: str) -> TaskRecord:
        deadline = self._clock() + self._timeout * 2 + _RECHECK_S
        while True:
            wake = self._events.listen(task_id)
            task = await self._store.get_task(task_id)
            if task is None:
                raise Unavailable("unavailable", "the operation's task vanished; try again")
            if task.state in FINAL_STATES:
                return task
            left = deadline - self._clock()
            if left <= 0:
                # The sweep ends it by its own timeouts; this is the backstop if it cannot.
                raise UpstreamTimeout("timeout", f"the operation (task {task_id}) did not end")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(_RECHECK_S, left))


def _both_selectors(
    source: SecretManagerRecord, target: SecretManagerRecord
) -> SecretManagerRecord:
    merged = tuple(dict.fromkeys(source.selectors + target.selectors))
    return dataclasses.replace(source, selectors=merged)


def _output(result: OpResult, name: str, manager: SecretManagerRecord) -> str:
    if not result.ok:
        raise UpstreamFailed("secret_op_failed", f"secret manager {manager.name}: {result.error}")
    value = result.task.outputs.get(name)
    if not value:
        raise UpstreamFailed(
            "secret_op_failed", f"{manager.name}: the delegate's answer lacks {name}"
        )
    return value


def _b64_output(result: OpResult, name: str, manager: SecretManagerRecord) -> bytes:
    try:
        return base64.b64decode(_output(result, name, manager), validate=True)
    except ValueError:
        raise UpstreamFailed(
            "secret_op_failed", f"{manager.name}: the delegate's {name} is not base64"
        ) from None
