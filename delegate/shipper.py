"""Ships a task's log lines to the manager in batches, and reports its result.

Lines wait in a bounded queue. While one batch is in flight the next one gathers, so a
quiet task sends each line at once and a loud one sends large batches; and when the
manager is slow or away, the queue fills, ``put`` waits, and the task's pipe stops being
read (backpressure, not unbounded memory). A batch is resent until the manager takes it:
the manager stores lines by (task, attempt, seq), so a resend never doubles a line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from delegate.api import ManagerApi, Rejected, Unreachable
from shared.limits import MAX_LOG_BATCH_BYTES, MAX_LOG_BATCH_LINES
from shared.protocol import LogBatch, LogLine, ResultAck, TaskResult

__all__ = ["LogShipper", "post_result"]

log = structlog.get_logger("tether.shipper")

# Lines held in memory per task before the task's output is slowed down.
MAX_PENDING_LINES = 2000
# JSON framing per line, on top of its text, when estimating a batch's size.
_LINE_OVERHEAD = 80


def _retrying(base: float, cap: float) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception_type(Unreachable),
        wait=wait_random_exponential(multiplier=base, max=cap),
        reraise=True,
    )


class LogShipper:
    def __init__(
        self,
        api: ManagerApi,
        task_id: str,
        attempt: int,
        *,
        on_cancel: Callable[[], None],
        retry_base: float,
        retry_max: float,
    ) -> None:
        self._api = api
        self._task_id = task_id
        self._attempt = attempt
        self._on_cancel = on_cancel
        self._retry = (retry_base, retry_max)
        self._queue: asyncio.Queue[LogLine] = asyncio.Queue(MAX_PENDING_LINES)
        self._runner: asyncio.Task[None] | None = None
        # Set when the manager says this attempt no longer holds the task.
        self.stale = False
        self.last_sent_seq = -1

    async def __aenter__(self) -> LogShipper:
        self._runner = asyncio.create_task(self._run(), name=f"ship-{self._task_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def put(self, line: LogLine) -> None:
        if self.stale:
            return
        await self._queue.put(line)

    async def close(self) -> None:
        """Wait until every queued line was taken by the manager (or refused as stale)."""
        if self._runner is None:
            return
        if not self._runner.done():
            await self._queue.join()
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        self._runner = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].text) + _LINE_OVERHEAD
            while not self._queue.empty() and len(batch) < MAX_LOG_BATCH_LINES:
                line = self._queue.get_nowait()
                size += len(line.text.encode()) + _LINE_OVERHEAD
                batch.append(line)
                if size > MAX_LOG_BATCH_BYTES // 2:
                    break
            try:
                await self._send(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _send(self, lines: list[LogLine]) -> None:
        if self.stale:
            return
        body = LogBatch(attempt=self._attempt, lines=lines)
        try:
            async for attempt in _retrying(*self._retry):
                with attempt:
                    ack = await self._api.post_logs(self._task_id, body)
        except Rejected as exc:
            if exc.status in (404, 409, 410):
                log.warning(
                    "log batch refused; stopping the task", task_id=self._task_id, code=exc.code
                )
                self.stale = True
                self._on_cancel()
                return
            # A batch the manager cannot accept (a bug on one side): drop it loudly.
            log.error("log batch rejected", task_id=self._task_id, error=str(exc))
            return
        self.last_sent_seq = lines[-1].seq
        if ack.cancel:
            self._on_cancel()


async def post_result(
    api: ManagerApi, task_id: str, result: TaskResult, *, retry_base: float, retry_max: float
) -> ResultAck | None:
    """Report until the manager answers; None when it refused this attempt as stale."""
    try:
        async for attempt in _retrying(retry_base, retry_max):
            with attempt:
                return await api.post_result(task_id, result)
    except Rejected as exc:
        log.warning("result refused", task_id=task_id, code=exc.code)
        return None
    return None
