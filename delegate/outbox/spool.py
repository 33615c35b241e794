"""The delegate's disk spool: log lines and results the manager could not take yet.

When the manager cannot be reached, a task's lines (and at last its result) are written here
instead of piling up in memory; a drainer sends them in order once the manager answers
again, and what a stopped delegate left behind is sent by the next one.

This module is the policy: what is written, when it is sent, what is dropped over a bound.
The files themselves (one directory per task attempt, segments of length+CRC records, a
gap record that reads back as one explaining line) and their recovery after a crash are
:mod:`delegate.outbox.spool_format`.

What was sent is known in memory only: a segment is deleted once all of it was taken, and
after a restart the oldest remaining one is sent again from its start. The manager stores
lines by (task, attempt, seq) and takes a result idempotently, so a resend costs bandwidth,
never a doubled line; there is no index file to keep consistent with the segments.

Bounds: ``task_limit`` bytes per task attempt and ``total_limit`` in all. Over a bound the
oldest segment in the *middle* of a task's spool is replaced by a gap: the head (the first
segments, where the outage began) and the newest tail stay. The gap line takes the seq of
the first dropped line, so seqs stay in order and the missing ones are the range it names.
Adjacent drops merge into one gap. Only when no segment can be dropped (spools of a few
segments each) are the incoming lines themselves turned into a gap. Results are never
dropped.

Durability: a result is fsynced with every record before it (:meth:`TaskSpool.sync`); log
records are fsynced in batches by the caller. A process crash loses nothing written; a power
loss may lose the last unsynced log records, never a synced result.

All methods are synchronous and must be called from one thread (the event loop's);
:meth:`TaskSpool.sync` alone does its fsyncs in a worker thread, on paths, not descriptors.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Generator, Sequence
from pathlib import Path

import structlog

# Entry, Position, SpoolError and human_bytes are defined with the format and re-exported
# here, where the shipper and the tests have always imported them.
from delegate.outbox.spool_format import (
    HEADER,
    SUFFIX,
    Entry,
    Gap,
    Position,
    Segment,
    SpoolError,
    SpoolUnreadable,
    chunks,
    dir_name,
    dumps,
    entry_of,
    frame,
    fsync_paths,
    human_bytes,
    note_lines,
    records,
    recover,
    replace_file,
    sealed,
    write_all,
)
from delegate.outbox.spool_key import SpoolKey
from shared.limits import KIB, MAX_LOG_BATCH_BYTES, MIB, SPOOL_TASK_BYTES, SPOOL_TOTAL_BYTES
from shared.protocol import LogLine, TaskResult

__all__ = ["Entry", "Position", "Spool", "SpoolError", "TaskSpool", "human_bytes"]

log = structlog.get_logger("tether.spool")

# A task's budget is cut into this many segments: the unit of a middle drop.
_SEGMENTS_PER_TASK = 16
# The first segments of a task's spool are its head, never dropped: a quarter of the budget.
_HEAD_SEGMENTS = 4


class TaskSpool:
    """One task attempt's records, in order. Get one from :meth:`Spool.task`."""

    def __init__(
        self, spool: Spool, directory: Path, task_id: str, attempt: int, segments: list[Segment]
    ) -> None:
        self._spool = spool
        self.directory = directory
        self.task_id = task_id
        self.attempt = attempt
        self._segments = segments
        self._bytes = sum(s.size for s in segments)
        self._next_number = segments[-1].number + 1 if segments else 0
        first = segments[0] if segments else None
        self._acked = Position(first.number, first.data_start) if first else Position(0, 0)
        # The furthest record pending() handed out: it may be in flight, so it is not dropped.
        self._handed = Position(-1, 0)
        self._fd: int | None = None  # append descriptor of the newest segment
        self._dirty: set[Path] = set()
        self._unsynced = 0
        self.result_acked = False
        self.removed = False
        # Counts for the delegate's own log, and for tests.
        self.dropped_lines = 0
        self.dropped_bytes = 0

    # -- state ----------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk for this attempt; what its bound is measured against."""
        return self._bytes

    @property
    def unsynced_bytes(self) -> int:
        return self._unsynced

    @property
    def empty(self) -> bool:
        """Nothing left to send."""
        for seg in self._segments:
            start = self._acked.offset if seg.number == self._acked.segment else seg.data_start
            if seg.number >= self._acked.segment and seg.size > max(start, seg.data_start):
                return False
        return True

    @property
    def has_result(self) -> bool:
        """A result waits in the spool, not yet taken by the manager."""
        return any(
            s.result_end is not None and Position(s.number, s.result_end) > self._acked
            for s in self._segments
        )

    # -- writing --------------------------------------------------------------------------

    def append_lines(self, lines: Sequence[LogLine]) -> None:
        """Add lines, in seq order after those already here; over a bound, drop a middle."""
        self._check_usable()
        for chunk, raws in chunks(lines, self._spool.record_bytes):
            payload = b'{"k":"lines","lines":[' + b",".join(raws) + b"]}"
            if self._spool.admit(self, HEADER.size + len(payload)):
                seg = self._writable()
                self._write(seg, payload)
                note_lines(seg, chunk)
            else:
                self._drop_incoming(_gap_of(chunk))

    def append_result(self, result: TaskResult) -> None:
        """Add the attempt's result after its lines. Call :meth:`sync` before relying on it."""
        self._check_usable()
        payload = dumps({"k": "result", "result": result.model_dump(mode="json")})
        seg = self._writable()
        self._write(seg, payload)
        seg.result_end = seg.size

    async def sync(self) -> None:
        """fsync every file and directory written since the last sync."""
        paths = sorted(self._dirty, key=lambda p: len(p.parts), reverse=True)
        self._dirty.clear()
        self._unsynced = 0
        if paths:
            await asyncio.to_thread(fsync_paths, paths)

    # -- reading --------------------------------------------------------------------------

    def pending(self) -> Generator[Entry, None, None]:
        """Records not yet acknowledged, oldest first.

        The iterator reads the files as it goes: consume it before the next append or ack
        (the drainer takes a batch, then awaits the post).
        """
        for seg in list(self._segments):
            if seg.number < self._acked.segment:
                continue
            start = self._acked.offset if seg.number == self._acked.segment else seg.data_start
            start = max(start, seg.data_start)
            if start >= seg.size:
                continue
            if seg.gap is not None:
                self._hand(Position(seg.number, seg.size))
                yield Entry(Position(seg.number, seg.size), lines=(seg.gap.line(),))
                continue
            with open(seg.path, "rb") as f:
                f.seek(start)
                where = (self.directory.name, seg.number)
                for _, end, rec in records(f, start, seg.size, self._spool.key, where):
                    pos = Position(seg.number, end)
                    self._hand(pos)
                    yield entry_of(rec, pos, seg.path)

    def ack(self, upto: Position) -> None:
        """Everything up to ``upto`` was taken: forget it, and delete spent segments."""
        if upto <= self._acked:
            return
        self._acked = upto
        if any(
            s.result_end is not None and Position(s.number, s.result_end) <= upto
            for s in self._segments
        ):
            self.result_acked = True
        while self._segments:
            seg = self._segments[0]
            spent = seg.number < upto.segment or (
                seg.number == upto.segment and upto.offset >= seg.size
            )
            if not spent:
                break
            self._delete(seg)

    def _hand(self, pos: Position) -> None:
        self._handed = max(self._handed, pos)

    # -- removal --------------------------------------------------------------------------

    def remove(self) -> None:
        """Delete this attempt's files (everything was sent, or the manager refused it)."""
        if self.removed:
            return
        self.removed = True
        self._close_fd()
        self._spool.forget(self, self._bytes)
        self._bytes = 0
        self._segments.clear()
        self._dirty.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    def close(self) -> None:
        """Let go of open files; the records stay for the next start."""
        self._close_fd()

    # -- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.removed:
            raise SpoolError(f"the spool of task {self.task_id} was removed")

    def _writable(self) -> Segment:
        last = self._segments[-1] if self._segments else None
        if (
            last is not None
            and self._fd is not None
            and last.gap is None
            and last.size < self._spool.segment_bytes
        ):
            return last
        return self._new_segment()

    def _new_segment(self) -> Segment:
        self._close_fd()
        if not self.directory.exists():
            self.directory.mkdir(mode=0o700)
            self._dirty.add(self.directory.parent)
        number = self._next_number
        self._next_number += 1
        path = self.directory / f"{number:08d}{SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, 0o600)
        seg = Segment(number, path)
        self._segments.append(seg)
        self._dirty.add(self.directory)
        self._write(seg, self._head(number))
        seg.data_start = seg.size
        return seg

    def _head(self, number: int) -> bytes:
        return dumps({"k": "head", "task": self.task_id, "attempt": self.attempt, "n": number})

    def _sealed(self, seg: Segment, payload: bytes) -> bytes:
        return sealed(payload, self._spool.key, (self.directory.name, seg.number))

    def _write(self, seg: Segment, payload: bytes) -> None:
        assert self._fd is not None
        data = frame(self._sealed(seg, payload))
        write_all(self._fd, data)
        seg.size += len(data)
        self._bytes += len(data)
        self._spool.grew(len(data))
        self._dirty.add(seg.path)
        self._unsynced += len(data)

    def _protected_upto(self) -> int:
        """Segments numbered up to this may be in flight (handed out or partly acked)."""
        return max(self._handed.segment, self._acked.segment)

    def droppable(self) -> Segment | None:
        """The oldest segment in the middle: past the head, before the newest, not in flight."""
        if len(self._segments) < 3:
            return None
        head = 0
        protect = self._protected_upto()
        for seg in self._segments[:-1]:
            if seg.gap is not None:
                continue
            if head < _HEAD_SEGMENTS:
                head += 1
                continue
            if seg.number <= protect or seg.result_end is not None or not seg.lines:
                continue
            return seg
        return None

    def drop_middle(self) -> bool:
        """Replace the oldest middle segment by a gap; False when there is none to drop."""
        seg = self.droppable()
        if seg is None:
            return False
        gap = seg.as_gap("full")
        self._count_drop(gap)
        index = self._segments.index(seg)
        before = self._segments[index - 1]
        if self._can_extend(before, gap):
            assert before.gap is not None
            self._rewrite_gap(before, before.gap.merged(gap))
            self._delete(seg)
        else:
            self._rewrite_gap(seg, gap)
            log.warning(
                "log spool full; dropping the middle of a task's log",
                task_id=self.task_id,
                attempt=self.attempt,
                first_seq=gap.first,
                task_limit=self._spool.task_limit,
            )
        return True

    def _drop_incoming(self, gap: Gap) -> None:
        self._count_drop(gap)
        last = self._segments[-1] if self._segments else None
        if last is not None and self._can_extend(last, gap):
            assert last.gap is not None
            self._rewrite_gap(last, last.gap.merged(gap))
            return
        log.warning(
            "log spool full; dropping new lines of a task's log",
            task_id=self.task_id,
            attempt=self.attempt,
            first_seq=gap.first,
        )
        seg = self._new_segment()
        self._close_fd()
        self._rewrite_gap(seg, gap)

    def _count_drop(self, gap: Gap) -> None:
        self.dropped_lines += gap.lines
        self.dropped_bytes += gap.bytes

    def _can_extend(self, seg: Segment, gap: Gap) -> bool:
        return (
            seg.gap is not None
            and seg.gap.why == gap.why
            and seg.gap.last + 1 == gap.first
            and seg.number > self._protected_upto()
        )

    def _rewrite_gap(self, seg: Segment, gap: Gap) -> None:
        """Make ``seg`` a gap-only segment, atomically (write aside, then rename)."""
        data = frame(self._sealed(seg, self._head(seg.number)))
        start = len(data)
        data += frame(self._sealed(seg, dumps(gap.record())))
        replace_file(seg.path, data)
        self._dirty.update((seg.path, self.directory))
        self._bytes += len(data) - seg.size
        self._spool.grew(len(data) - seg.size)
        seg.size = len(data)
        seg.data_start = start
        seg.gap = gap
        seg.first_seq, seg.last_seq, seg.first_ts = gap.first, gap.last, gap.ts
        seg.lines, seg.text_bytes = gap.lines, gap.bytes

    def _delete(self, seg: Segment) -> None:
        if self._segments and seg is self._segments[-1]:
            self._close_fd()
        self._segments.remove(seg)
        self._bytes -= seg.size
        self._spool.grew(-seg.size)
        self._dirty.discard(seg.path)
        seg.path.unlink(missing_ok=True)
        self._dirty.add(self.directory)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Spool:
    """Every task attempt's spool under ``root``, and the bound over all of them."""

    def __init__(
        self,
        root: Path,
        *,
        task_limit: int = SPOOL_TASK_BYTES,
        total_limit: int = SPOOL_TOTAL_BYTES,
        segment_bytes: int | None = None,
        key: bytes | None = None,
    ) -> None:
        if task_limit <= 0 or total_limit <= 0:
            raise ValueError("spool limits must be positive")
        self.root = root
        # The delegate's own spool key (delegate.outbox.spool_key); None writes plaintext.
        self.key = None if key is None else SpoolKey(key)
        self.task_limit = task_limit
        self.total_limit = total_limit
        self.segment_bytes = segment_bytes or max(4 * KIB, task_limit // _SEGMENTS_PER_TASK)
        # A record is a fraction of a segment, so a full spool has segments to drop.
        self.record_bytes = max(KIB, min(self.segment_bytes // 4, MAX_LOG_BATCH_BYTES // 2))
        # Backlog a reachable manager is given to catch up before the task is slowed down.
        self.catch_up_bytes = min(4 * MIB, task_limit // 4)
        self._tasks: dict[tuple[str, int], TaskSpool] = {}
        self._recovered: list[TaskSpool] = []
        # Task attempts' directories that did not open with this delegate's key.
        self.unreadable: list[Path] = []
        self._total = 0

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        task_limit: int = SPOOL_TASK_BYTES,
        total_limit: int = SPOOL_TOTAL_BYTES,
        segment_bytes: int | None = None,
        key: bytes | None = None,
    ) -> Spool:
        """Make ``root`` (0700) and read back what an earlier run left there."""
        spool = cls(
            root,
            task_limit=task_limit,
            total_limit=total_limit,
            segment_bytes=segment_bytes,
            key=key,
        )
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if root.stat().st_mode & 0o777 != 0o700:
            root.chmod(0o700)
        for directory in sorted(p for p in root.iterdir() if p.is_dir()):
            task = spool._recover(directory)
            if task is not None:
                spool._tasks[(task.task_id, task.attempt)] = task
                spool._recovered.append(task)
        return spool

    @property
    def total_bytes(self) -> int:
        return self._total

    def recovered(self) -> list[TaskSpool]:
        """Task spools an earlier run left, still to be sent."""
        return [t for t in self._recovered if not t.removed]

    def task(self, task_id: str, attempt: int) -> TaskSpool:
        """The spool of one task attempt; its directory is made at the first write."""
        key = (task_id, attempt)
        found = self._tasks.get(key)
        if found is None or found.removed:
            found = TaskSpool(self, self.root / dir_name(task_id, attempt), task_id, attempt, [])
            self._tasks[key] = found
        return found

    def close(self) -> None:
        for task in self._tasks.values():
            task.close()

    # -- bounds (called by TaskSpool) -----------------------------------------------------

    def admit(self, task: TaskSpool, size: int) -> bool:
        """Make room for ``size`` more bytes of ``task``; False when there is none to make."""
        while task.pending_bytes + size > self.task_limit:
            if not task.drop_middle():
                return False
        while self._total + size > self.total_limit:
            victims = [t for t in self._tasks.values() if t.droppable() is not None]
            if not victims:
                return False
            max(victims, key=lambda t: t.pending_bytes).drop_middle()
        return True

    def grew(self, delta: int) -> None:
        self._total += delta

    def forget(self, task: TaskSpool, size: int) -> None:
        self._total -= size
        if self._tasks.get((task.task_id, task.attempt)) is task:
            del self._tasks[(task.task_id, task.attempt)]

    # -- recovery -------------------------------------------------------------------------

    def _recover(self, directory: Path) -> TaskSpool | None:
        try:
            found = recover(directory, self.key)
        except SpoolUnreadable as exc:
            # Another host's spool (another key): useless here, and not ours to delete.
            log.warning("spool does not open with this delegate's key; left as it is", why=str(exc))
            self.unreadable.append(directory)
            return None
        if found is None:
            return None
        (task_id, attempt), segments = found
        task = TaskSpool(self, directory, task_id, attempt, segments)
        self._total += task.pending_bytes
        return task


def _gap_of(lines: Sequence[LogLine]) -> Gap:
    nbytes = sum(line.nbytes for line in lines)
    return Gap(lines[0].seq, lines[-1].seq, len(lines), nbytes, lines[0].ts, "full")
