"""The delegate's disk spool: log lines and results the manager could not take yet.

When the manager cannot be reached, a task's lines (and at last its result) are written here
instead of piling up in memory; a drainer sends them in order once the manager answers
again, and what a stopped delegate left behind is sent by the next one.

Layout, under ``<data_dir>/spool`` (directories 0700, files 0600)::

    spool/
      <task>.<attempt>.<digest>/     one task attempt
        00000000.seg                 segments, oldest first; only the newest is appended to
        00000001.seg

A segment is a run of records, each ``length (u32, big-endian) | CRC-32 | JSON``. The first
record of every segment names its task attempt and number, so a directory is read back
without trusting its name. After a crash the last record may be torn: its CRC (or length)
gives it away and the file is cut back to the last whole record.

Records: ``head``; ``lines`` (``[seq, stream, ts, text]`` each); ``gap`` (lines dropped or
lost, which the manager receives as one system line in their place); ``result``.

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
import hashlib
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import structlog
from pydantic import ValidationError

from shared.limits import KIB, MAX_LOG_BATCH_BYTES, MIB, SPOOL_TASK_BYTES, SPOOL_TOTAL_BYTES
from shared.protocol import LogLine, TaskResult

__all__ = ["Entry", "Position", "Spool", "SpoolError", "TaskSpool", "human_bytes"]

log = structlog.get_logger("tether.spool")

_HEADER = struct.Struct(">II")  # payload length, CRC-32 of the payload
# A record larger than this is damage, not data (records are a few hundred KiB at most).
_MAX_RECORD = 16 * MIB
_SUFFIX = ".seg"
# A task's budget is cut into this many segments: the unit of a middle drop.
_SEGMENTS_PER_TASK = 16
# The first segments of a task's spool are its head, never dropped: a quarter of the budget.
_HEAD_SEGMENTS = 4
_NAME = re.compile(r"[^A-Za-z0-9_-]")

Why = Literal["full", "damaged"]


class SpoolError(Exception):
    """A spool file that cannot be read back (damaged while the delegate ran)."""


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in a task's spool: a segment's number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One record to send: lines (a gap reads as one system line) or the result.

    ``end`` is where the record ends: pass it to :meth:`TaskSpool.ack` once it was taken.
    """

    end: Position
    lines: tuple[LogLine, ...] = ()
    result: TaskResult | None = None


@dataclass(frozen=True, slots=True)
class _Gap:
    first: int
    last: int
    lines: int
    bytes: int
    ts: float
    why: Why

    def merged(self, later: _Gap) -> _Gap:
        return _Gap(
            self.first,
            later.last,
            self.lines + later.lines,
            self.bytes + later.bytes,
            self.ts,
            self.why,
        )

    def record(self) -> dict[str, Any]:
        return {
            "k": "gap",
            "first": self.first,
            "last": self.last,
            "lines": self.lines,
            "bytes": self.bytes,
            "ts": self.ts,
            "why": self.why,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> _Gap:
        why = rec["why"]
        if why not in ("full", "damaged"):
            raise ValueError(f"unknown gap reason {why!r}")
        gap = cls(
            int(rec["first"]),
            int(rec["last"]),
            int(rec["lines"]),
            int(rec["bytes"]),
            float(rec["ts"]),
            why,
        )
        if gap.first < 0 or gap.last < gap.first:
            raise ValueError("gap range out of order")
        return gap

    def line(self) -> LogLine:
        seqs = f"seq {self.first} to {self.last}"
        if self.why == "full":
            text = (
                f"[tether] {self.lines} lines ({human_bytes(self.bytes)}) dropped here, {seqs}:"
                " the delegate's log spool was full while the manager was unreachable"
            )
        else:
            text = (
                f"[tether] {self.lines} lines lost here, {seqs}: the delegate's log spool"
                " was damaged (the delegate may have stopped while writing it)"
            )
        return LogLine(seq=self.first, stream="system", ts=self.ts, text=text)


@dataclass(eq=False)
class _Segment:
    number: int
    path: Path
    # Bytes of whole records in the file; a reader never goes past it.
    size: int = 0
    # Where the first record after the head starts.
    data_start: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_ts: float = 0.0
    # Lines this segment stands for (a gap counts the lines it replaced) and their text bytes.
    lines: int = 0
    text_bytes: int = 0
    # The segment holds nothing but one gap record.
    gap: _Gap | None = None
    # Where the result record ends, when this segment holds one.
    result_end: int | None = None

    def note_range(self, first: int, last: int, lines: int, nbytes: int, ts: float) -> None:
        if self.first_seq is None:
            self.first_seq = first
            self.first_ts = ts
        self.last_seq = last
        self.lines += lines
        self.text_bytes += nbytes

    def as_gap(self, why: Why) -> _Gap:
        assert self.first_seq is not None
        assert self.last_seq is not None
        return _Gap(self.first_seq, self.last_seq, self.lines, self.text_bytes, self.first_ts, why)


class TaskSpool:
    """One task attempt's records, in order. Get one from :meth:`Spool.task`."""

    def __init__(
        self, spool: Spool, directory: Path, task_id: str, attempt: int, segments: list[_Segment]
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
        for chunk, raws in _chunks(lines, self._spool.record_bytes):
            payload = b'{"k":"lines","lines":[' + b",".join(raws) + b"]}"
            if self._spool.admit(self, _HEADER.size + len(payload)):
                seg = self._writable()
                self._write(seg, payload)
                _note_lines(seg, chunk)
            else:
                self._drop_incoming(_gap_of(chunk))

    def append_result(self, result: TaskResult) -> None:
        """Add the attempt's result after its lines. Call :meth:`sync` before relying on it."""
        self._check_usable()
        payload = _dumps({"k": "result", "result": result.model_dump(mode="json")})
        seg = self._writable()
        self._write(seg, payload)
        seg.result_end = seg.size

    async def sync(self) -> None:
        """fsync every file and directory written since the last sync."""
        paths = sorted(self._dirty, key=lambda p: len(p.parts), reverse=True)
        self._dirty.clear()
        self._unsynced = 0
        if paths:
            await asyncio.to_thread(_fsync_paths, paths)

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
                for _, end, rec in _records(f, start, seg.size):
                    pos = Position(seg.number, end)
                    self._hand(pos)
                    yield _entry(rec, pos, seg.path)

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

    def _writable(self) -> _Segment:
        last = self._segments[-1] if self._segments else None
        if (
            last is not None
            and self._fd is not None
            and last.gap is None
            and last.size < self._spool.segment_bytes
        ):
            return last
        return self._new_segment()

    def _new_segment(self) -> _Segment:
        self._close_fd()
        if not self.directory.exists():
            self.directory.mkdir(mode=0o700)
            self._dirty.add(self.directory.parent)
        number = self._next_number
        self._next_number += 1
        path = self.directory / f"{number:08d}{_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, 0o600)
        seg = _Segment(number, path)
        self._segments.append(seg)
        self._dirty.add(self.directory)
        self._write(seg, self._head(number))
        seg.data_start = seg.size
        return seg

    def _head(self, number: int) -> bytes:
        return _dumps({"k": "head", "task": self.task_id, "attempt": self.attempt, "n": number})

    def _write(self, seg: _Segment, payload: bytes) -> None:
        assert self._fd is not None
        data = _frame(payload)
        _write_all(self._fd, data)
        seg.size += len(data)
        self._bytes += len(data)
        self._spool.grew(len(data))
        self._dirty.add(seg.path)
        self._unsynced += len(data)

    def _protected_upto(self) -> int:
        """Segments numbered up to this may be in flight (handed out or partly acked)."""
        return max(self._handed.segment, self._acked.segment)

    def droppable(self) -> _Segment | None:
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

    def _drop_incoming(self, gap: _Gap) -> None:
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

    def _count_drop(self, gap: _Gap) -> None:
        self.dropped_lines += gap.lines
        self.dropped_bytes += gap.bytes

    def _can_extend(self, seg: _Segment, gap: _Gap) -> bool:
        return (
            seg.gap is not None
            and seg.gap.why == gap.why
            and seg.gap.last + 1 == gap.first
            and seg.number > self._protected_upto()
        )

    def _rewrite_gap(self, seg: _Segment, gap: _Gap) -> None:
        """Make ``seg`` a gap-only segment, atomically (write aside, then rename)."""
        data = _frame(self._head(seg.number))
        start = len(data)
        data += _frame(_dumps(gap.record()))
        tmp = seg.path.with_suffix(".tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, seg.path)
        self._dirty.update((seg.path, self.directory))
        self._bytes += len(data) - seg.size
        self._spool.grew(len(data) - seg.size)
        seg.size = len(data)
        seg.data_start = start
        seg.gap = gap
        seg.first_seq, seg.last_seq, seg.first_ts = gap.first, gap.last, gap.ts
        seg.lines, seg.text_bytes = gap.lines, gap.bytes

    def _delete(self, seg: _Segment) -> None:
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
    ) -> None:
        if task_limit <= 0 or total_limit <= 0:
            raise ValueError("spool limits must be positive")
        self.root = root
        self.task_limit = task_limit
        self.total_limit = total_limit
        self.segment_bytes = segment_bytes or max(4 * KIB, task_limit // _SEGMENTS_PER_TASK)
        # A record is a fraction of a segment, so a full spool has segments to drop.
        self.record_bytes = max(KIB, min(self.segment_bytes // 4, MAX_LOG_BATCH_BYTES // 2))
        # Backlog a reachable manager is given to catch up before the task is slowed down.
        self.catch_up_bytes = min(4 * MIB, task_limit // 4)
        self._tasks: dict[tuple[str, int], TaskSpool] = {}
        self._recovered: list[TaskSpool] = []
        self._total = 0

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        task_limit: int = SPOOL_TASK_BYTES,
        total_limit: int = SPOOL_TOTAL_BYTES,
        segment_bytes: int | None = None,
    ) -> Spool:
        """Make ``root`` (0700) and read back what an earlier run left there."""
        spool = cls(
            root, task_limit=task_limit, total_limit=total_limit, segment_bytes=segment_bytes
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
            found = TaskSpool(self, self.root / _dir_name(task_id, attempt), task_id, attempt, [])
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
        for tmp in directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        paths = sorted(
            (p for p in directory.glob(f"*{_SUFFIX}") if p.stem.isdigit()),
            key=lambda p: int(p.stem),
        )
        owner: tuple[str, int] | None = None
        segments: list[_Segment] = []
        cut = False
        for path in paths:
            seg, seg_owner, seg_cut = _scan(path, owner)
            if seg is None or seg.size <= seg.data_start:
                path.unlink(missing_ok=True)
                cut = cut or seg_cut
                continue
            owner = seg_owner
            if segments and cut:
                _explain_loss(segments[-1], seg)
            segments.append(seg)
            cut = seg_cut
        if owner is None or not segments:
            shutil.rmtree(directory, ignore_errors=True)
            return None
        task = TaskSpool(self, directory, owner[0], owner[1], segments)
        self._total += task.pending_bytes
        return task


# --- records ------------------------------------------------------------------------------


def _dumps(obj: object) -> bytes:
    # "replace": a lone surrogate cannot be stored as UTF-8, nor sent as JSON.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _chunks(lines: Sequence[LogLine], limit: int) -> Iterator[tuple[list[LogLine], list[bytes]]]:
    """Lines with their JSON arrays, grouped into records of ``limit`` bytes at most
    (or one line, when a single line is larger)."""
    chunk: list[LogLine] = []
    raws: list[bytes] = []
    size = 0
    for line in lines:
        raw = _dumps([line.seq, line.stream, line.ts, line.text])
        if chunk and size + len(raw) > limit:
            yield chunk, raws
            chunk, raws, size = [], [], 0
        chunk.append(line)
        raws.append(raw)
        size += len(raw) + 1
    if chunk:
        yield chunk, raws


def _line(item: Any) -> LogLine:
    seq, stream, ts, text = item
    return LogLine(seq=seq, stream=stream, ts=ts, text=text)


def _note_lines(seg: _Segment, lines: Sequence[LogLine]) -> None:
    nbytes = sum(len(line.text.encode("utf-8", "replace")) for line in lines)
    seg.note_range(lines[0].seq, lines[-1].seq, len(lines), nbytes, lines[0].ts)


def _gap_of(lines: Sequence[LogLine]) -> _Gap:
    nbytes = sum(len(line.text.encode("utf-8", "replace")) for line in lines)
    return _Gap(lines[0].seq, lines[-1].seq, len(lines), nbytes, lines[0].ts, "full")


class _Damaged(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


def _records(f: BinaryIO, start: int, end: int | None) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset, end offset, record) from ``start`` to ``end`` (None: the end of the file).

    Raises :class:`_Damaged` at the first record that is torn or does not check out.
    """
    pos = start
    while end is None or pos < end:
        header = f.read(_HEADER.size)
        if not header and end is None:
            return
        if len(header) < _HEADER.size:
            raise _Damaged(pos, "torn record header")
        length, crc = _HEADER.unpack(header)
        if length > _MAX_RECORD:
            raise _Damaged(pos, "record length out of range")
        payload = f.read(length)
        if len(payload) < length:
            raise _Damaged(pos, "torn record")
        if zlib.crc32(payload) != crc:
            raise _Damaged(pos, "record checksum mismatch")
        try:
            rec = json.loads(payload)
        except ValueError:
            raise _Damaged(pos, "record is not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("k"), str):
            raise _Damaged(pos, "record has no kind")
        nxt = pos + _HEADER.size + length
        yield pos, nxt, rec
        pos = nxt


def _entry(rec: dict[str, Any], end: Position, path: Path) -> Entry:
    try:
        kind = rec["k"]
        if kind == "lines":
            return Entry(end, lines=tuple(_line(item) for item in rec["lines"]))
        if kind == "gap":
            return Entry(end, lines=(_Gap.from_record(rec).line(),))
        if kind == "result":
            return Entry(end, result=TaskResult.model_validate(rec["result"]))
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise SpoolError(f"{path}: record at {end.offset} does not read back: {exc}") from None
    raise SpoolError(f"{path}: unexpected {kind!r} record")


def _scan(
    path: Path, owner: tuple[str, int] | None
) -> tuple[_Segment | None, tuple[str, int], bool]:
    """Read a segment back, cutting a damaged tail: (segment or None, its owner, was cut)."""
    seg = _Segment(int(path.stem), path)
    found = owner or ("", 0)
    cut = True
    with open(path, "r+b") as f:
        try:
            for _, end, rec in _records(f, 0, None):
                if seg.data_start == 0:
                    found = _owner(rec, seg.number, owner)
                    seg.data_start = end
                else:
                    _account(seg, rec, end)
                seg.size = end
            cut = False
        except _Damaged as exc:
            _cut(f, path, exc, seg)
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            _cut(f, path, _Damaged(seg.size, f"record does not read back: {exc}"), seg)
    if seg.data_start == 0:
        return None, found, cut
    return seg, found, cut


def _owner(rec: dict[str, Any], number: int, expected: tuple[str, int] | None) -> tuple[str, int]:
    if rec["k"] != "head" or rec.get("n") != number:
        raise _Damaged(0, "segment does not start with its head")
    owner = (str(rec["task"]), int(rec["attempt"]))
    if expected is not None and owner != expected:
        raise _Damaged(0, "segment of another task attempt")
    return owner


def _cut(f: BinaryIO, path: Path, exc: _Damaged, seg: _Segment) -> None:
    log.warning(
        "spool segment damaged; cut back", path=str(path), offset=exc.offset, why=exc.reason
    )
    f.truncate(seg.size)
    f.flush()
    os.fsync(f.fileno())


def _account(seg: _Segment, rec: dict[str, Any], end: int) -> None:
    kind = rec["k"]
    # A segment is gap-only when its one record after the head is a gap.
    alone = seg.first_seq is None and seg.result_end is None
    seg.gap = None
    if kind == "lines":
        lines = [_line(item) for item in rec["lines"]]
        if lines:
            _note_lines(seg, lines)
    elif kind == "gap":
        gap = _Gap.from_record(rec)
        seg.note_range(gap.first, gap.last, gap.lines, gap.bytes, gap.ts)
        seg.gap = gap if alone else None
    elif kind == "result":
        TaskResult.model_validate(rec["result"])
        seg.result_end = end
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def _explain_loss(before: _Segment, after: _Segment) -> None:
    """Lines lost between two segments (a damaged one was cut): a gap record says so."""
    if before.last_seq is None or after.first_seq is None:
        return
    if after.first_seq <= before.last_seq + 1 or before.result_end is not None:
        return
    first, last = before.last_seq + 1, after.first_seq - 1
    gap = _Gap(first, last, last - first + 1, 0, after.first_ts, "damaged")
    data = _frame(_dumps(gap.record()))
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(before.path, flags)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    log.error(
        "spooled log lines lost to a damaged spool file",
        path=str(before.path),
        first_seq=first,
        last_seq=last,
    )
    before.size += len(data)
    before.note_range(first, last, gap.lines, 0, gap.ts)
    before.gap = None


def _fsync_paths(paths: Sequence[Path]) -> None:
    for path in paths:
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if path.is_dir() else 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            continue  # sent and deleted meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dir_name(task_id: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{task_id}\n{attempt}".encode()).hexdigest()[:12]
    return f"{_NAME.sub('_', task_id)[:80]}.{attempt}.{digest}"


def human_bytes(n: int) -> str:
    """``812.0 MiB``: sizes in a log line people read."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
