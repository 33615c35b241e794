"""The delegate's lifecycle: register, hold the channel, take tasks, run them, shut down.

The agent reacts to the channel (assignments, cancels, drain) and owns the running tasks.
An assignment pushed over the stream is taken (acked) when a slot is free and this delegate
runs its type, else declined. Each task runs through the same pipeline: open the sealed
secrets, resolve the managed
secrets it references and render them into its payload, register every sensitive value with
the task's masker (and the process's) *before* the process starts, execute, ship the log,
report the result. Log and result go through the :class:`~delegate.outbox.shipper.Outbox`: straight
to the manager, or through the disk spool while it cannot be reached; at start the agent
replays what an earlier run left in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import stat
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import structlog

from delegate.config import DelegateConfig
from delegate.exit_codes import EXIT_FAILED
from delegate.link.api import ManagerApi
from delegate.link.policy import Fatal
from delegate.link.requests import Transport
from delegate.link.stream import ChannelEvents, DeclineReason
from delegate.outbox.shipper import Outbox
from delegate.outbox.spool import Spool
from delegate.run.executor import ExecutionResult, Status, execute
from delegate.run.id_token import request_secret_env, with_request_env
from delegate.run.isolation import UserPool
from delegate.run.logstream import LogStream
from delegate.run.switch import Switcher
from delegate.run.taskdirs import TaskDirs
from delegate.run.taskinputs import InputError, TaskInputs, prepare
from delegate.secrets.cache import SecretCache
from delegate.secrets.resolver import SecretResolver
from shared.aio import cancel_and_wait
from shared.limits import Timings
from shared.masking import Masker
from shared.protocol import AcquireResponse, TaskResult
from shared.sealing import SealError, open_sealed
from shared.workload_identity import REQUEST_TOKEN

__all__ = ["Agent", "Link"]

log = structlog.get_logger("tether.agent")


@dataclass(eq=False)
class RunningTask:
    task_id: str
    attempt: int
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None


class Link(Protocol):
    """The agent's connection to the manager (``delegate.link.stream.Channel``)."""

    async def run(self, events: ChannelEvents) -> None:
        """Hold the link, telling ``events`` what the manager asks; raise ``Fatal`` to stop."""
        ...

    def poke(self) -> None:
        """A slot was freed."""
        ...


class Agent:
    def __init__(
        self,
        config: DelegateConfig,
        api: ManagerApi,
        *,
        link: Link,
        private_key: bytes,
        timings: Timings,
        process_masker: Masker,
        switcher: Switcher | None = None,
        # The spool's own key (delegate.outbox.spool_key); None keeps a plaintext spool.
        spool_key: bytes | None = None,
        # How log batches and results travel (delegate.link.requests: the stream while it
        # is up, HTTPS otherwise); None: HTTPS only.
        transport: Transport | None = None,
    ) -> None:
        self._config = config
        self._spool_key = spool_key
        self._api = api
        self._transport: Transport = api if transport is None else transport
        self._link = link
        self._private_key = private_key
        self._timings = timings
        # The masker behind this process's own log output: every task's values join it.
        self._process_masker = process_masker
        self.running: dict[str, RunningTask] = {}
        self.draining = False
        self._drained_by_manager = False
        self._stopping = False
        self._work_root = config.work_root
        # None: tasks run as this process's user (--shared-user).
        self._switcher = switcher
        self._pool = None if switcher is None else UserPool(switcher.users)
        # Directories kept between tasks run as this process's user, one per slot at most;
        # with task users, every directory goes with its task (delegate.run.taskdirs).
        keep = config.max_tasks if switcher is None else 0
        self._task_dirs = TaskDirs(self._work_root, keep=keep)
        self._spool_root = config.data_dir / "spool"
        self._outbox: Outbox | None = None
        ttl = config.secret_cache_ttl
        # One cache for the process: a value fetched for one task serves the next ones.
        self._resolver = SecretResolver(
            private_key, cache=SecretCache(ttl=ttl) if ttl > 0 else None
        )

    # -- channel events -------------------------------------------------------------------

    def on_assigned(self, assignment: AcquireResponse) -> DeclineReason | None:
        """Take the assignment's slot now (so the next one counts it), or say why not."""
        task_id = assignment.task.id
        held = self.running.get(task_id)
        if held is not None:
            # Pushed again after a lost ack: the same attempt runs here already.
            return None if held.attempt == assignment.attempt else "unfit"
        if self.draining:
            return "draining"
        if self._free_slots() <= 0:
            return "full"
        if assignment.task.payload.type not in self._config.task_types:
            return "unfit"
        self.running[task_id] = RunningTask(task_id, assignment.attempt)
        return None

    def run_assigned(self, assignment: AcquireResponse) -> None:
        entry = self.running.get(assignment.task.id)
        if entry is None or entry.runner is not None or entry.attempt != assignment.attempt:
            return  # already started (a push again), or not taken
        entry.runner = asyncio.get_running_loop().create_task(self._run_task(assignment, entry))

    def on_cancel(self, task_id: str) -> None:
        task = self.running.get(task_id)
        if task is not None and not task.cancel.is_set():
            log.info("cancelling task", task_id=task_id)
            task.cancel.set()

    def on_drain(self) -> None:
        if not self.draining:
            log.info("draining: no new tasks")
            self.draining = True
            self._drained_by_manager = True

    def on_resume(self) -> None:
        # Only a drain the manager asked for is lifted; a shutdown's drain stays.
        if self._drained_by_manager and not self._stopping:
            log.info("drain lifted: taking tasks again")
            self.draining = False
            self._drained_by_manager = False
            self._link.poke()

    def heartbeat_state(self) -> tuple[list[str], int, float]:
        running = list(self.running)
        return running, self._free_slots(), len(running) / self._config.max_tasks

    def spooled(self) -> list[str]:
        """Tasks that no longer run here whose result or log lines wait in the spool.

        Listed apart from the running ones: the manager renews their leases but never
        answers them with a cancel (a listing names the task, not the attempt, and a
        stale attempt's must not stop a newer one of the same task running here).
        """
        if self._outbox is None:
            return []
        return [t for t in self._outbox.spooled_tasks() if t not in self.running]

    def _free_slots(self) -> int:
        if self.draining:
            return 0
        return max(0, self._config.max_tasks - len(self.running))

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> int:
        """Run until ``stop`` (then shut down gracefully) or a fatal error; the exit status."""
        self._work_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._pool is not None:
            # Task users pass through to their own directories, and cannot list the others.
            self._work_root.chmod(0o711)
        # A run killed before its tasks ended left their directories, secret files included,
        # and maybe their processes, which would see the next task of their slot.
        await self._clear_work_root()
        spool = await asyncio.to_thread(Spool.open, self._spool_root, key=self._spool_key)
        t = self._timings
        self._outbox = Outbox(
            self._transport,
            spool,
            retry_base=t.reconnect_base,
            retry_max=min(t.reconnect_max, t.heartbeat_interval),
        )
        self._outbox.replay()
        channel = asyncio.create_task(self._link.run(self), name="channel")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([channel, stopping], return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if channel.done():
            exc = channel.exception()
            if isinstance(exc, Fatal):
                log.error("delegate stopping", reason=exc.message)
                status = exc.exit_code
            elif exc is not None:
                log.error("channel failed", error=f"{type(exc).__name__}: {exc}")
                status = EXIT_FAILED
        stopping.cancel()
        await self._shutdown(force)
        await asyncio.to_thread(self._task_dirs.close)
        # Spooled results the manager is taking get a moment; the rest waits on disk.
        await self._outbox.close(grace=0.0 if force.is_set() else t.kill_grace)
        channel.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await channel
        return status

    async def _clear_work_root(self) -> None:
        owners = await asyncio.to_thread(_owners, self._work_root)
        if self._switcher is not None:
            by_uid = {u.uid: u for u in self._switcher.users}
            for user in self._switcher.users:
                await self._switcher.sweep(user, None)
            for path, uid in owners.items():
                if uid in by_uid:
                    await self._switcher.sweep(by_uid[uid], path)
        await asyncio.to_thread(_clear, list(owners))

    async def _shutdown(self, force: asyncio.Event) -> None:
        """Take nothing new; let running tasks finish within the grace, then cancel them."""
        self._stopping = True
        self.draining = True
        tasks = [t.runner for t in self.running.values() if t.runner is not None]
        if not tasks:
            return
        log.info(
            "waiting for running tasks", count=len(tasks), grace_s=self._timings.shutdown_grace
        )
        forced: asyncio.Future[object] = asyncio.ensure_future(force.wait())
        finished: asyncio.Future[object] = asyncio.ensure_future(
            asyncio.gather(*tasks, return_exceptions=True)
        )
        await asyncio.wait(
            [finished, forced],
            timeout=self._timings.shutdown_grace,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for t in self.running.values():
            t.cancel.set()
        pending = [t for t in tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._timings.kill_grace + 5)
        forced.cancel()

    # -- one task -------------------------------------------------------------------------

    async def _run_task(self, acq: AcquireResponse, entry: RunningTask) -> None:
        spec = acq.task
        bound = log.bind(task_id=spec.id, attempt=acq.attempt)
        bound.info("task started", type=spec.payload.type)
        t = self._timings
        try:
            secret_env = self._open_secrets(acq)
        except SealError:
            secret_env = None
        # Secret managers' credentials too: a secret operation's error, or a provider's,
        # can quote them, and the delegate's own log must not show them either.
        credentials = self._resolver.credentials(acq)
        sensitive = [*(secret_env or {}).values(), *credentials.values()]
        masker = Masker(sensitive)
        for value in sensitive:
            self._process_masker.add(value)
        # The delegate's own log masks them (an error of its own may quote one); the
        # attempt's workload-identity credential only while the attempt runs, so the process
        # masker does not grow with every attempt ever run.
        try:
            assert self._outbox is not None, "tasks run only while the agent runs"
            async with self._outbox.shipper(
                spec.id, acq.attempt, on_cancel=entry.cancel.set
            ) as shipper:
                stream = LogStream(masker, shipper.put, flush_after=t.log_flush)
                flusher = asyncio.create_task(stream.flush_periodically())
                try:
                    inputs: TaskInputs | ExecutionResult
                    if secret_env is None:
                        inputs = _failed(
                            "the task's secrets could not be opened with this delegate's key"
                        )
                    else:
                        inputs = await self._prepare(acq, secret_env, masker, entry.cancel)
                    for note in masker.skipped:
                        await stream.system(
                            f"warning: {note} is too short to mask and may show in this log"
                        )
                    if isinstance(inputs, ExecutionResult):
                        await stream.close()
                        # A secret manager's answer may quote what it was sent (its credentials).
                        error = None if inputs.error is None else masker.mask_text(inputs.error)
                        result = replace(inputs, error=error)
                    else:
                        user = self._pool.take() if self._pool is not None else None
                        try:
                            spec_run = inputs.spec
                            if acq.id_token_request is not None:
                                spec_run = with_request_env(
                                    spec_run, self._config.manager_url, self._config.ca_file
                                )
                            result = await execute(
                                spec_run,
                                secret_env=inputs.env,
                                secret_files=inputs.files,
                                credentials=credentials,
                                log=stream,
                                cancel=entry.cancel,
                                kill_grace=t.kill_grace,
                                work_root=self._work_root,
                                task_dirs=self._task_dirs,
                                user=user,
                                switcher=self._switcher,
                            )
                        finally:
                            # After execute: it has swept the slot by then.
                            if self._pool is not None and user is not None:
                                self._pool.give_back(user)
                finally:
                    await cancel_and_wait(flusher)
                # Sent after every line of the attempt (or spooled behind them), never before.
                delivery = await shipper.finish(
                    TaskResult(
                        attempt=acq.attempt,
                        status=result.status,
                        exit_code=result.exit_code,
                        outputs=result.outputs,
                        error=result.error,
                        deployment=spec.deployment,
                        started_at=result.started_at,
                        finished_at=result.finished_at,
                        last_seq=stream.last_seq,
                    )
                )
            if delivery.state != "refused":
                bound.info(
                    "task finished",
                    status=result.status,
                    exit_code=result.exit_code,
                    recorded=delivery.ack is not None and delivery.ack.recorded,
                    delivery=delivery.state,
                )
            if delivery.state == "spooled":
                bound.info("task result spooled; sent when the manager is back")
        finally:
            # Only the attempt's own credential: secret values and secret managers'
            # credentials may be quoted by the delegate's later lines (a cached provider's
            # error), so the process keeps masking them.
            if secret_env is not None and REQUEST_TOKEN in secret_env:
                self._process_masker.discard(secret_env[REQUEST_TOKEN])
        self.running.pop(spec.id, None)
        self._link.poke()

    async def _prepare(
        self,
        acq: AcquireResponse,
        secret_env: dict[str, str],
        masker: Masker,
        cancel: asyncio.Event,
    ) -> TaskInputs | ExecutionResult:
        """The task's inputs, or how it ended before it could start.

        Fetching secrets is bounded by the task's own timeout, and a cancel stops it.
        """
        preparing = asyncio.ensure_future(
            prepare(
                acq,
                secret_env=secret_env,
                resolver=self._resolver,
                maskers=(masker, self._process_masker),
            )
        )
        cancelled = asyncio.ensure_future(cancel.wait())
        try:
            await asyncio.wait(
                {preparing, cancelled},
                timeout=acq.task.timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            cancelled.cancel()
            if not preparing.done():
                preparing.cancel()
                await asyncio.gather(preparing, return_exceptions=True)
        if preparing.cancelled():
            if cancel.is_set():
                return _failed("cancelled while resolving secrets", status="cancelled")
            return _failed(
                f"timed out after {acq.task.timeout_s:g} s resolving secrets", status="timed_out"
            )
        try:
            return preparing.result()
        except InputError as exc:
            return _failed(str(exc))
        except Exception as exc:
            # A bug, not the task's fault; its text might quote what it was handling.
            log.error("preparing a task failed", task_id=acq.task.id, error=type(exc).__name__)
            return _failed(f"preparing the task failed ({type(exc).__name__})")

    def _open_secrets(self, acq: AcquireResponse) -> dict[str, str]:
        # The workload-identity request credential is a secret of the attempt: masked too.
        request = request_secret_env(acq, self._private_key)
        if acq.sealed_env is None:
            return request
        plain = open_sealed(
            self._private_key, acq.sealed_env, context=f"{acq.task.id}:{acq.attempt}".encode()
        )
        values = json.loads(plain)
        if not isinstance(values, dict):
            raise SealError("sealed env is not a mapping")
        return {**{str(k): str(v) for k, v in values.items()}, **request}


def _failed(error: str, *, status: Status = "failed") -> ExecutionResult:
    now = time.time()
    return ExecutionResult(
        status=status, exit_code=None, outputs={}, error=error, started_at=now, finished_at=now
    )


def _owners(work_root: Path) -> dict[Path, int]:
    """The task directories left in ``work_root``, each with its owner's uid."""
    found = {}
    for child in work_root.iterdir():
        st = child.lstat()
        if stat.S_ISDIR(st.st_mode):
            found[child] = st.st_uid
    return found


def _clear(directories: list[Path]) -> None:
    for path in directories:
        shutil.rmtree(path, ignore_errors=True)
