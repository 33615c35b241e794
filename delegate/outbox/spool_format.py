"""The spool's bytes on disk: record framing, the record kinds, reading them back, and
recovering a task attempt's segments after a crash.

:mod:`delegate.outbox.spool` decides what is written, sent and dropped; this module knows how it
is stored. Its public names other modules use (:class:`Entry`, :class:`Position`,
:class:`SpoolError`, :func:`human_bytes`) are re-exported there.

Layout, under ``<data_dir>/spool`` (directories 0700, files 0600)::

    spool/
      <task>.<attempt>.<digest>/     one task attempt
        00000000.seg                 segments, oldest first; only the newest is appended to
        00000001.seg

A segment is a run of records, each ``length (u32, big-endian) | CRC-32 | JSON``. The first
record of every segment names its task attempt and number, so a directory is read back
without trusting its name. After a crash the last record may be torn: its CRC (or length)
gives it away and the file is cut back to the last whole record.

Records: ``head``; ``lines`` (``[seq, stream, ts, text]`` each, and the line's base64
``data`` fifth when its bytes are not text); ``gap`` (lines dropped or lost, which the
manager receives as one system line in their place); ``result``.
A record that does not read back while the delegate runs raises :class:`SpoolError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import structlog
from pydantic import ValidationError

from delegate.outbox.spool_key import SpoolKey, SpoolKeyMismatch, is_sealed_record
from shared.limits import MIB
from shared.protocol import LogLine, TaskResult

__all__ = [
    "HEADER",
    "SUFFIX",
    "Entry",
    "Gap",
    "Position",
    "Segment",
    "SpoolError",
    "SpoolUnreadable",
    "Why",
    "chunks",
    "dir_name",
    "dumps",
    "entry_of",
    "frame",
    "fsync_paths",
    "human_bytes",
    "line_of",
    "note_lines",
    "records",
    "recover",
    "replace_file",
    "sealed",
    "write_all",
]

# The same logger as delegate.outbox.spool: to whoever reads the log, it is all the spool.
log = structlog.get_logger("tether.spool")


HEADER = struct.Struct(">II")  # payload length, CRC-32 of the payload
# A record larger than this is damage, not data (records are a few hundred KiB at most).
_MAX_RECORD = 16 * MIB
SUFFIX = ".seg"
_NAME = re.compile(r"[^A-Za-z0-9_-]")

Why = Literal["full", "damaged"]


class SpoolError(Exception):
    """A spool file that cannot be read back (damaged while the delegate ran)."""


class SpoolUnreadable(SpoolError):
    """A task attempt's spool sealed with another key (copied from another host)."""


# Where a record lies, which its sealing is bound to: its directory's name, its segment.
Where = tuple[str, int]


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in a task's spool: a segment's number and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One record to send: lines (a gap reads as one system line) or the result.

    ``end`` is where the record ends: pass it to :meth:`delegate.outbox.spool.TaskSpool.ack` once
    it was taken.
    """

    end: Position
    lines: tuple[LogLine, ...] = ()
    result: TaskResult | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """Lines ``first`` to ``last`` that are not in the spool: dropped for room, or lost."""

    first: int
    last: int
    lines: int
    bytes: int
    ts: float
    why: Why

    def merged(self, later: Gap) -> Gap:
        return Gap(
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
    def from_record(cls, rec: dict[str, Any]) -> Gap:
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
class Segment:
    """What the spool knows of one segment file, so bounds are kept without reading it."""

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
    gap: Gap | None = None
    # Where the result record ends, when this segment holds one.
    result_end: int | None = None

    def note_range(self, first: int, last: int, lines: int, nbytes: int, ts: float) -> None:
        if self.first_seq is None:
            self.first_seq = first
            self.first_ts = ts
        self.last_seq = last
        self.lines += lines
        self.text_bytes += nbytes

    def as_gap(self, why: Why) -> Gap:
        assert self.first_seq is not None
        assert self.last_seq is not None
        return Gap(self.first_seq, self.last_seq, self.lines, self.text_bytes, self.first_ts, why)


# --- records ------------------------------------------------------------------------------


def dumps(obj: object) -> bytes:
    # "replace": a lone surrogate cannot be stored as UTF-8, nor sent as JSON.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def sealed(payload: bytes, key: SpoolKey | None, where: Where) -> bytes:
    """``payload`` as stored: sealed with the delegate's spool key when it has one."""
    return payload if key is None else key.seal(payload, *where)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_file(path: Path, data: bytes) -> None:
    """Make ``path`` hold ``data`` atomically: written to a ``.tmp`` beside it, then renamed.

    A crash can leave the ``.tmp`` behind; :func:`recover` deletes it.
    """
    tmp = path.with_suffix(".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def chunks(lines: Sequence[LogLine], limit: int) -> Iterator[tuple[list[LogLine], list[bytes]]]:
    """Lines with their JSON arrays, grouped into records of ``limit`` bytes at most
    (or one line, when a single line is larger)."""
    chunk: list[LogLine] = []
    raws: list[bytes] = []
    size = 0
    for line in lines:
        item: list[object] = [line.seq, line.stream, line.ts, line.text]
        if line.data is not None:
            item.append(line.data)
        raw = dumps(item)
        if chunk and size + len(raw) > limit:
            yield chunk, raws
            chunk, raws, size = [], [], 0
        chunk.append(line)
        raws.append(raw)
        size += len(raw) + 1
    if chunk:
        yield chunk, raws


def line_of(item: Any) -> LogLine:
    # [seq, stream, ts, text], and the line's data (base64) after them when it has some.
    seq, stream, ts, text, *data = item
    return LogLine(seq=seq, stream=stream, ts=ts, text=text, data=data[0] if data else None)


def note_lines(seg: Segment, lines: Sequence[LogLine]) -> None:
    nbytes = sum(line.nbytes for line in lines)
    seg.note_range(lines[0].seq, lines[-1].seq, len(lines), nbytes, lines[0].ts)


class _Damaged(SpoolError):
    """A record that is torn or fails its checks; a SpoolError, so callers that handle
    spool failures also handle a segment damaged while the delegate runs."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class _Unopened(_Damaged):
    """A sealed record that does not open with this delegate's key."""


def _opened(payload: bytes, pos: int, key: SpoolKey | None, where: Where) -> bytes:
    if not is_sealed_record(payload):
        return payload  # written before sealing, or by a spool without a key
    if key is None:
        raise _Unopened(pos, "the record is sealed and this spool has no key")
    try:
        return key.open(payload, *where)
    except SpoolKeyMismatch as exc:
        raise _Unopened(pos, str(exc)) from None


def records(
    f: BinaryIO,
    start: int,
    end: int | None,
    key: SpoolKey | None = None,
    where: Where = ("", 0),
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(offset, end offset, record) from ``start`` to ``end`` (None: the end of the file),
    each opened with ``key`` when sealed (``where``: its directory's name and segment).

    Raises :class:`_Damaged` at the first record that is torn or does not check out.
    """
    pos = start
    while end is None or pos < end:
        header = f.read(HEADER.size)
        if not header and end is None:
            return
        if len(header) < HEADER.size:
            raise _Damaged(pos, "torn record header")
        length, crc = HEADER.unpack(header)
        if length > _MAX_RECORD:
            raise _Damaged(pos, "record length out of range")
        payload = f.read(length)
        if len(payload) < length:
            raise _Damaged(pos, "torn record")
        if zlib.crc32(payload) != crc:
            raise _Damaged(pos, "record checksum mismatch")
        payload = _opened(payload, pos, key, where)
        try:
            rec = json.loads(payload)
        except ValueError:
            raise _Damaged(pos, "record is not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("k"), str):
            raise _Damaged(pos, "record has no kind")
        nxt = pos + HEADER.size + length
        yield pos, nxt, rec
        pos = nxt


def entry_of(rec: dict[str, Any], end: Position, path: Path) -> Entry:
    try:
        kind = rec["k"]
        if kind == "lines":
            return Entry(end, lines=tuple(line_of(item) for item in rec["lines"]))
        if kind == "gap":
            return Entry(end, lines=(Gap.from_record(rec).line(),))
        if kind == "result":
            return Entry(end, result=TaskResult.model_validate(rec["result"]))
    except (KeyError, TypeError, ValueError, ValidationError) as exc:
        raise SpoolError(f"{path}: record at {end.offset} does not read back: {exc}") from None
    raise SpoolError(f"{path}: unexpected {kind!r} record")


# --- files --------------------------------------------------------------------------------


def fsync_paths(paths: Sequence[Path]) -> None:
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


def dir_name(task_id: str, attempt: int) -> str:
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


# --- recovery -----------------------------------------------------------------------------


def recover(
    directory: Path, key: SpoolKey | None = None
) -> tuple[tuple[str, int], list[Segment]] | None:
    """Read back a task attempt's directory: (its owner, its segments), or None when nothing
    in it is left to send (the directory is then deleted).

    Torn tails are cut; a segment that does not read back is deleted, and the lines lost
    with it are named by a gap record appended to the segment before. A segment whose head
    does not open with ``key`` (another host's spool) raises :class:`SpoolUnreadable`, and
    nothing is changed.
    """
    for tmp in directory.glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    paths = sorted(
        (p for p in directory.glob(f"*{SUFFIX}") if p.stem.isdigit()),
        key=lambda p: int(p.stem),
    )
    owner: tuple[str, int] | None = None
    segments: list[Segment] = []
    cut = False
    for path in paths:
        seg, seg_owner, seg_cut = _scan(path, owner, key)
        if seg is None or seg.size <= seg.data_start:
            path.unlink(missing_ok=True)
            cut = cut or seg_cut
            continue
        owner = seg_owner
        if segments and cut:
            _explain_loss(segments[-1], seg, key)
        segments.append(seg)
        cut = seg_cut
    if owner is None or not segments:
        shutil.rmtree(directory, ignore_errors=True)
        return None
    return owner, segments


def _scan(
    path: Path, owner: tuple[str, int] | None, key: SpoolKey | None
) -> tuple[Segment | None, tuple[str, int], bool]:
    """Read a segment back, cutting a damaged tail: (segment or None, its owner, was cut)."""
    seg = Segment(int(path.stem), path)
    found = owner or ("", 0)
    cut = True
    with open(path, "r+b") as f:
        try:
            for _, end, rec in records(f, 0, None, key, (path.parent.name, seg.number)):
                if seg.data_start == 0:
                    found = _owner(rec, seg.number, owner)
                    seg.data_start = end
                else:
                    _account(seg, rec, end)
                seg.size = end
            cut = False
        except _Unopened as exc:
            if seg.data_start == 0:
                # Not damage: the whole segment is another key's. Left as it is.
                raise SpoolUnreadable(f"{path}: {exc.reason}") from None
            _cut(f, path, exc, seg)
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


def _cut(f: BinaryIO, path: Path, exc: _Damaged, seg: Segment) -> None:
    log.warning(
        "spool segment damaged; cut back", path=str(path), offset=exc.offset, why=exc.reason
    )
    f.truncate(seg.size)
    f.flush()
    os.fsync(f.fileno())


def _account(seg: Segment, rec: dict[str, Any], end: int) -> None:
    kind = rec["k"]
    # A segment is gap-only when its one record after the head is a gap.
    alone = seg.first_seq is None and seg.result_end is None
    seg.gap = None
    if kind == "lines":
        lines = [line_of(item) for item in rec["lines"]]
        if lines:
            note_lines(seg, lines)
    elif kind == "gap":
        gap = Gap.from_record(rec)
        seg.note_range(gap.first, gap.last, gap.lines, gap.bytes, gap.ts)
        seg.gap = gap if alone else None
    elif kind == "result":
        TaskResult.model_validate(rec["result"])
        seg.result_end = end
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def _explain_loss(before: Segment, after: Segment, key: SpoolKey | None) -> None:
    """Lines lost between two segments (a damaged one was cut): a gap record says so."""
    if before.last_seq is None or after.first_seq is None:
        return
    if after.first_seq <= before.last_seq + 1 or before.result_end is not None:
        return
    first, last = before.last_seq + 1, after.first_seq - 1
    gap = Gap(first, last, last - first + 1, 0, after.first_ts, "damaged")
    data = frame(sealed(dumps(gap.record()), key, (before.path.parent.name, before.number)))
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(before.path, flags)
    try:
        write_all(fd, data)
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
