"""Ships a task's log lines and then its result to the manager, through the disk when it is away.

Lines wait in a queue bounded by count and by bytes. The *intake* takes them out in batches
(while one batch is in flight the next gathers, so a quiet task sends each line at once and
a loud one sends large batches) and has two ways to the manager, one order:

- **direct**: each batch is posted as it forms. A slow manager slows the task: the queue
  fills, ``put`` waits, the task's pipe is not read and the task blocks on its next write.
- **spooled**: once a post fails because the manager cannot be reached, that batch and
  every later one go to the attempt's disk spool (:mod:`delegate.outbox.spool`) instead, so memory
  stays bounded however long the outage and whatever the task prints. A *drainer* sends the
  spool in order with backoff, and hands back to the direct way once it is empty. While the
  drainer gets answers, the intake waits for it to catch up rather than letting the spool
  grow: a manager that answers slows the task down, it never makes the spool drop lines.

A result goes the same way, after every line of its attempt, so the manager's log is
complete when the task turns final. A spooled result is fsynced first; it outlives the
process, and at start the :class:`Outbox` replays what an earlier run left behind. The
manager stores lines by (task, attempt, seq) and takes a result idempotently, so resends
neither lose nor double anything; a refusal of the attempt (409, 404, 410) drops its spool
with a log line, and stops the task if it still runs.

Any other refusal is of the data itself (a 400 or 422: sending it again cannot help). A
refused batch is dropped, and one system line in its place (its first seq) tells the task's
reader which lines went and why; a refused result is sent again without its outputs,
deployment and error text, with an error that says so, so the task still ends as it ran.
Everything after goes on as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_random_exponential,
)

from delegate.link.api import ApiError, Rejected, Unreachable
from delegate.link.requests import Transport
from delegate.outbox.spool import Entry, Position, Spool, SpoolError, TaskSpool, human_bytes
from shared.limits import MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES, MIB
from shared.protocol import LogBatch, LogBatchAck, LogLine, ResultAck, TaskResult

__all__ = ["MAX_PENDING_BYTES", "MAX_PENDING_LINES", "Delivery", "LogShipper", "Outbox"]

log = structlog.get_logger("tether.shipper")

T = TypeVar("T")

# Lines (and their text bytes) held in memory per task before its output is slowed down.
MAX_PENDING_LINES = 2000
MAX_PENDING_BYTES = 4 * MIB
# JSON framing per line, on top of its text, when estimating a batch's size.
_LINE_OVERHEAD = 80
# Spooled log bytes written before they are fsynced (a result is fsynced at once).
_SYNC_EVERY = 4 * MIB
# Answers that mean this attempt no longer holds the task.
_STALE = (404, 409, 410)


def _size(line: LogLine) -> int:
    # Its share of the JSON body: data is base64, longer than the bytes it carries.
    body = len(line.data) if line.data is not None else len(line.text.encode("utf-8", "replace"))
    return body + _LINE_OVERHEAD


# How much of the manager's reason a note in the task log repeats.
_REASON_CHARS = 300


def _reason(exc: Rejected) -> str:
    return str(exc).splitlines()[0][:_REASON_CHARS] if str(exc) else f"{exc.status}"


def refusal_note(batch: list[LogLine], exc: Rejected) -> LogLine:
    """The system line that takes the place of a batch the manager refused: its first seq."""
    first, last = batch[0].seq, batch[-1].seq
    seqs = f"seq {first}" if first == last else f"seq {first} to {last}"
    nbytes = human_bytes(sum(line.nbytes for line in batch))
    lines = "1 line" if len(batch) == 1 else f"{len(batch)} lines"
    why = f"the manager refused them ({_reason(exc)})"
    text = f"[tether] {lines} ({nbytes}) dropped here, {seqs}: {why}"
    return LogLine(seq=first, stream="system", ts=batch[0].ts, text=text)


def plain_result(result: TaskResult, exc: Rejected) -> TaskResult:
    """``result`` without what the manager may have refused in it: its outputs, deployment
    and error text. Its status, exit code and times stay, so the task still ends as it ran."""
    error = f"the manager refused this task's result ({_reason(exc)}); its outputs were dropped"
    return result.model_copy(update={"outputs": {}, "deployment": None, "error": error})


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of a result: taken by the manager, safe in the spool, or refused."""

    state: Literal["delivered", "spooled", "refused"]
    ack: ResultAck | None = None


class _Pulse:
    """Wakes everyone waiting at the time of :meth:`fire` (an event that re-arms itself)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class _LineQueue:
    """FIFO of lines bounded by count and bytes; ``put`` waits while it is full."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._items: deque[LogLine] = deque()
        self._bytes = 0
        self._unfinished = 0
        self._changed = _Pulse()

    def _full(self) -> bool:
        # An empty queue takes any line, however long.
        return bool(self._items) and (
            len(self._items) >= self._max_lines or self._bytes >= self._max_bytes
        )

    async def put(self, line: LogLine) -> None:
        while self._full():
            await self._changed.wait()
        self._items.append(line)
        self._bytes += _size(line)
        self._unfinished += 1
        self._changed.fire()

    async def get_batch(self, max_lines: int, max_bytes: int) -> list[LogLine]:
        while not self._items:
            await self._changed.wait()
        batch = [self._items.popleft()]
        size = _size(batch[0])
        while self._items and len(batch) < max_lines:
            nxt = _size(self._items[0])
            if size + nxt > max_bytes:
                break
            batch.append(self._items.popleft())
            size += nxt
        self._bytes -= size
        self._changed.fire()
        return batch

    def done(self, count: int) -> None:
        self._unfinished -= count
        self._changed.fire()

    async def join(self) -> None:
        while self._unfinished:
            await self._changed.wait()


class Outbox:
    """Every task attempt's way to the manager, and the spool behind it."""

    def __init__(
        self, api: Transport, spool: Spool, *, retry_base: float, retry_max: float
    ) -> None:
        self.api = api
        self.spool = spool
        self.retry = (retry_base, retry_max)
        self._drainers: dict[tuple[str, int], _Drainer] = {}

    def shipper(self, task_id: str, attempt: int, *, on_cancel: Callable[[], None]) -> LogShipper:
        return LogShipper(self, task_id, attempt, on_cancel=on_cancel)

    def replay(self) -> int:
        """Send what an earlier run left in the spool; the number of task attempts."""
        recovered = self.spool.recovered()
        for spooled in recovered:
            log.info(
                "replaying spooled task",
                task_id=spooled.task_id,
                attempt=spooled.attempt,
                result=spooled.has_result,
                spooled_bytes=spooled.pending_bytes,
            )
            self.drainer(spooled, shipper=None)
        return len(recovered)

    def spooled_tasks(self) -> list[str]:
        """Tasks whose spool still holds a result or log lines the manager has not taken.

        The heartbeats list them, so the manager keeps their leases through its own outage
        and takes what waited here when it is back (delegate.agent.Agent.spooled).
        """
        return sorted(
            {
                d.spooled.task_id
                for d in self._drainers.values()
                if not d.spooled.removed and not d.spooled.empty
            }
        )

    def awaiting_result(self) -> list[str]:
        """Tasks whose result waits in the spool, not yet taken by the manager."""
        return [
            d.spooled.task_id
            for d in self._drainers.values()
            if d.spooled.has_result and not d.spooled.removed
        ]

    def drainer(self, spooled: TaskSpool, *, shipper: LogShipper | None) -> _Drainer:
        key = (spooled.task_id, spooled.attempt)
        found = self._drainers.get(key)
        if found is None or found.spooled is not spooled:
            found = self._drainers[key] = _Drainer(self, spooled, shipper)
        return found

    def forget(self, drainer: _Drainer) -> None:
        key = (drainer.spooled.task_id, drainer.spooled.attempt)
        if self._drainers.get(key) is drainer:
            del self._drainers[key]

    async def wait_idle(self) -> None:
        """Until every spool was sent or refused (drainers of running tasks included)."""
        while self._drainers:
            tasks = [d.task for d in self._drainers.values()]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self, grace: float = 0.0) -> None:
        """Stop sending; drainers the manager answers get ``grace`` seconds to finish.

        What is left stays on disk for the next start.
        """
        answered = [d.task for d in self._drainers.values() if d.reachable]
        if answered and grace > 0:
            await asyncio.wait(answered, timeout=grace)
        tasks = [d.task for d in self._drainers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.spool.close()


class LogShipper:
    """One task attempt's lines and result, in order, to the manager or to the spool."""

    def __init__(
        self, outbox: Outbox, task_id: str, attempt: int, *, on_cancel: Callable[[], None]
    ) -> None:
        self._outbox = outbox
        self._api = outbox.api
        self.task_id = task_id
        self.attempt = attempt
        self.on_cancel = on_cancel
        self._queue = _LineQueue(MAX_PENDING_LINES, MAX_PENDING_BYTES)
        self._runner: asyncio.Task[None] | None = None
        self._drainer: _Drainer | None = None
        # True from a failed post until the drainer has sent everything spooled.
        self.spooling = False
        # Set when the manager says this attempt no longer holds the task.
        self.stale = False
        self._log = log.bind(task_id=task_id, attempt=attempt)

    async def __aenter__(self) -> LogShipper:
        self._runner = asyncio.create_task(self._run(), name=f"ship-{self.task_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put(self, line: LogLine) -> None:
        if self.stale:
            return
        await self._queue.put(line)

    async def finish(self, result: TaskResult) -> Delivery:
        """Report ``result`` once every line before it was taken or spooled."""
        await self.flush()
        if self.stale:
            return Delivery("refused")
        if not self.spooling:
            try:
                ack = await _result_or_plain(self._send_result, result, self._log)
            except Rejected as exc:
                self._refused(exc, "result")
                return Delivery("refused")
            except ApiError as exc:
                # Unreachable, or worse (the token was revoked): the result waits on disk.
                self._log.warning("manager unreachable; spooling the result", error=str(exc))
                self.spooling = True
            else:
                return Delivery("delivered", ack)
        drainer = self._drainer_now()
        try:
            drainer.spooled.append_result(result)
            await drainer.spooled.sync()
        except (OSError, SpoolError) as exc:
            # No disk to keep it on: hold it in memory, after what is spooled, until taken.
            self._log.error("cannot spool the result; holding it in memory", error=str(exc))
            await drainer.wait_empty()
            try:
                ack = await _result_or_plain(
                    lambda r: self._retrying(self._post_result(r)), result, self._log
                )
                return Delivery("delivered", ack)
            except Rejected as rej:
                self._refused(rej, "result")
                return Delivery("refused")
        drainer.wake()
        return Delivery("spooled")

    async def close(self) -> None:
        """Ship what is queued, stop the intake; the drainer goes on until the spool is sent."""
        with contextlib.suppress(asyncio.CancelledError):
            await self.flush()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        if self._drainer is not None:
            self._drainer.detach()
            self._drainer = None

    async def flush(self) -> None:
        """Until every line put so far was taken by the manager or written to the spool."""
        if self._runner is not None and not self._runner.done():
            await self._queue.join()

    def resume_direct(self) -> None:
        """The drainer sent everything spooled: later batches may go straight out again."""
        self.spooling = False

    # -- intake ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = await self._queue.get_batch(MAX_LOG_BATCH_LINES, MAX_LOG_BATCH_BYTES // 2)
            try:
                await self._ship(batch)
            finally:
                self._queue.done(len(batch))

    async def _ship(self, batch: list[LogLine]) -> None:
        if self.stale:
            return
        if not self.spooling:
            try:
                ack = await _logs_or_note(self._send_logs, batch, self._log)
            except Rejected as exc:
                self._refused(exc, "log batch")
                return
            except ApiError as exc:
                # The batch goes to the spool whole, even when it was its note that could
                # not be sent: the drainer meets the same refusal, and sends the note.
                self._log.warning("manager unreachable; spooling the task's log", error=str(exc))
                self.spooling = True
            else:
                if ack is not None and ack.cancel:
                    self.on_cancel()
                return
        await self._spool(batch)

    async def _spool(self, batch: list[LogLine]) -> None:
        drainer = self._drainer_now()
        spooled = drainer.spooled
        try:
            spooled.append_lines(batch)
            if spooled.unsynced_bytes >= _SYNC_EVERY:
                await spooled.sync()
        except (OSError, SpoolError) as exc:
            # The disk refuses (full, read-only): keep the batch in memory, after what is
            # already spooled, and let the task wait for the manager instead.
            self._log.error("cannot spool log lines; holding them in memory", error=str(exc))
            await drainer.wait_empty()
            try:
                ack = await _logs_or_note(
                    lambda lines: self._retrying(self._post_logs(lines)), batch, self._log
                )
            except Rejected as rej:
                self._refused(rej, "log batch")
                return
            if ack is not None and ack.cancel:
                self.on_cancel()
            return
        drainer.wake()
        while drainer.reachable and spooled.pending_bytes > self._outbox.spool.catch_up_bytes:
            await drainer.progress()

    def _drainer_now(self) -> _Drainer:
        drainer = self._drainer
        if drainer is None or drainer.spooled.removed or drainer.task.done():
            spooled = self._outbox.spool.task(self.task_id, self.attempt)
            drainer = self._drainer = self._outbox.drainer(spooled, shipper=self)
        return drainer

    async def _send_logs(self, lines: list[LogLine]) -> LogBatchAck:
        return await self._api.post_logs(self.task_id, LogBatch(attempt=self.attempt, lines=lines))

    async def _send_result(self, result: TaskResult) -> ResultAck:
        return await self._api.post_result(self.task_id, result)

    def _post_logs(self, lines: list[LogLine]) -> Callable[[], Awaitable[LogBatchAck]]:
        return lambda: self._send_logs(lines)

    def _post_result(self, result: TaskResult) -> Callable[[], Awaitable[ResultAck]]:
        return lambda: self._send_result(result)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in _retrying(*self._outbox.retry):
            with attempt:
                return await call()
        raise AssertionError("unreachable")  # reraise=True: the last error propagates

    def _refused(self, exc: Rejected, what: str) -> None:
        if exc.status in _STALE:
            self._log.warning(f"{what} refused; stopping the task", code=exc.code)
            self.mark_stale()
        else:
            # Refused even in its plain form (a note, a result without outputs): nothing
            # left to send in its place.
            self._log.error(f"{what} rejected; dropped", error=str(exc))

    def mark_stale(self) -> None:
        if not self.stale:
            self.stale = True
            self.on_cancel()


async def _logs_or_note(
    post: Callable[[list[LogLine]], Awaitable[LogBatchAck]],
    batch: list[LogLine],
    log: structlog.typing.FilteringBoundLogger,
) -> LogBatchAck | None:
    """Post ``batch``; refused as data, post its note instead (None if that is refused too).

    A refusal of the attempt (409, 404, 410) propagates: the caller stops the task.
    """
    try:
        return await post(batch)
    except Rejected as exc:
        if exc.status in _STALE:
            raise
        log.error(
            "log batch refused; dropped, and a line in the task's log says so",
            error=str(exc),
            first_seq=batch[0].seq,
            last_seq=batch[-1].seq,
        )
        note = refusal_note(batch, exc)
    try:
        return await post([note])
    except Rejected as exc:
        if exc.status in _STALE:
            raise
        log.error("the note of a refused log batch was refused too", error=str(exc))
        return None


async def _result_or_plain(
    post: Callable[[TaskResult], Awaitable[ResultAck]],
    result: TaskResult,
    log: structlog.typing.FilteringBoundLogger,
) -> ResultAck:
    """Post ``result``; refused as data, post it once more without its outputs."""
    try:
        return await post(result)
    except Rejected as exc:
        if exc.status in _STALE:
            raise
        log.error("result refused; sending it again without its outputs", error=str(exc))
        return await post(plain_result(result, exc))


def _retrying(
    base: float, cap: float, before_sleep: Callable[[RetryCallState], None] | None = None
) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(Unreachable),
        wait=wait_random_exponential(multiplier=base, max=cap),
        before_sleep=before_sleep,
        reraise=True,
    )


class _Drainer:
    """Sends one attempt's spool in order, until it is empty and nothing more will come."""

    def __init__(self, outbox: Outbox, spooled: TaskSpool, shipper: LogShipper | None) -> None:
        self._outbox = outbox
        self.spooled = spooled
        self._shipper = shipper
        # The last post was answered; the intake then waits for the drainer to catch up.
        self.reachable = False
        self._wake = asyncio.Event()
        self._progress = _Pulse()
        self._log = log.bind(task_id=spooled.task_id, attempt=spooled.attempt)
        # Records in flight are not dropped to make room: at most a segment of them, so
        # they stay inside the head a full spool keeps anyway.
        self._batch_bytes = min(MAX_LOG_BATCH_BYTES // 2, outbox.spool.segment_bytes)
        self.task = asyncio.create_task(self._run(), name=f"drain-{spooled.task_id}")

    def wake(self) -> None:
        self._wake.set()

    def detach(self) -> None:
        """The task's intake is closed: nothing more will be appended."""
        self._shipper = None
        self.wake()

    async def progress(self) -> None:
        await self._progress.wait()

    async def wait_empty(self) -> None:
        while not self.spooled.empty and not self.spooled.removed:
            await self._progress.wait()

    async def _run(self) -> None:
        try:
            await self._drain()
        except SpoolError as exc:
            self._log.error("spool unreadable; dropping it", error=str(exc))
            self._drop()
        except ApiError as exc:
            # The manager refuses this delegate itself (token revoked, protocol too old):
            # the delegate is stopping. The spool stays for whoever starts next.
            self._log.error("cannot send the spool", error=str(exc))
        finally:
            self.spooled.close()
            self._outbox.forget(self)
            self.reachable = False
            self._progress.fire()

    async def _drain(self) -> None:
        while True:
            entries = self.spooled.pending()
            try:
                batch = _next_batch(entries, self._batch_bytes)
            finally:
                entries.close()
            if batch is None:
                if self._shipper is not None:
                    self._shipper.resume_direct()
                self._progress.fire()
                if self._shipper is None:
                    self.spooled.remove()
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            lines, result, end = batch
            try:
                if result is not None:
                    ack = await _result_or_plain(
                        lambda r: self._post(self._result_call(r)), result, self._log
                    )
                    self._log.info(
                        "spooled result delivered", recorded=ack.recorded, state=ack.state.value
                    )
                else:
                    logs_ack = await _logs_or_note(
                        lambda ls: self._post(self._logs_call(ls)), lines, self._log
                    )
                    if logs_ack is not None and logs_ack.cancel and self._shipper is not None:
                        self._shipper.on_cancel()
            except Rejected as exc:
                what = "result" if result is not None else "log batch"
                if exc.status in _STALE:
                    self._log.warning(
                        f"spooled {what} refused: the attempt no longer holds the task;"
                        " dropping its spool",
                        code=exc.code,
                    )
                    if self._shipper is not None:
                        self._shipper.mark_stale()
                    self._drop()
                    return
                self._log.error(f"spooled {what} rejected; dropped", error=str(exc))
            self.spooled.ack(end)
            self._progress.fire()

    def _drop(self) -> None:
        self.spooled.remove()
        if self._shipper is not None:
            self._shipper.resume_direct()

    def _logs_call(self, lines: list[LogLine]) -> Callable[[], Awaitable[LogBatchAck]]:
        spooled = self.spooled

        async def call() -> LogBatchAck:
            return await self._outbox.api.post_logs(
                spooled.task_id, LogBatch(attempt=spooled.attempt, lines=lines)
            )

        return call

    def _result_call(self, result: TaskResult) -> Callable[[], Awaitable[ResultAck]]:
        async def call() -> ResultAck:
            return await self._outbox.api.post_result(self.spooled.task_id, result)

        return call

    async def _post(self, call: Callable[[], Awaitable[T]]) -> T:
        async for attempt in _retrying(*self._outbox.retry, before_sleep=self._unanswered):
            with attempt:
                answer = await call()
        self.reachable = True
        return answer

    def _unanswered(self, state: RetryCallState) -> None:
        if self.reachable or state.attempt_number == 1:
            exc = state.outcome.exception() if state.outcome is not None else None
            self._log.info("manager unreachable; spool waits", error=str(exc))
        self.reachable = False
        self._progress.fire()


def _next_batch(
    entries: Iterable[Entry], max_bytes: int
) -> tuple[list[LogLine], TaskResult | None, Position] | None:
    """The next post from the spool: lines up to the batch limits, or the result alone."""
    lines: list[LogLine] = []
    size = 0
    end: Position | None = None
    for entry in entries:
        if entry.result is not None:
            if lines:
                break
            return [], entry.result, entry.end
        more = sum(_size(line) for line in entry.lines)
        if lines and (
            len(lines) + len(entry.lines) > MAX_LOG_BATCH_LINES or size + more > max_bytes
        ):
            break
        lines.extend(entry.lines)
        size += more
        end = entry.end
    if end is None:
        return None
    return lines, None, end
