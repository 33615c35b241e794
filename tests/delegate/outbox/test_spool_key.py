"""The spool sealed with the delegate's own key (delegate.outbox.spool_key): nothing of a
line is on disk in clear, it reads back and recovers with the same key, a spool copied to
another host (another key) is reported unreadable and left alone, and a spool written
before sealing still reads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from delegate.outbox.spool import Spool
from shared.limits import KIB
from shared.protocol import LogLine, TaskResult

TASK = "task_0123abc"
MARK = "zq-spool-marker"


def lines(first: int, count: int) -> list[LogLine]:
    return [
        LogLine(seq=s, stream="stdout", ts=1000.0 + s, text=f"{MARK} {s:06d}".ljust(100, "x"))
        for s in range(first, first + count)
    ]


def spool_at(
    root: Path, key: bytes | None, *, task_limit: int = 1024 * KIB, segment_bytes: int = 0
) -> Spool:
    return Spool.open(root, task_limit=task_limit, segment_bytes=segment_bytes or None, key=key)


def disk_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def sent(spool: Spool) -> tuple[list[LogLine], list[TaskResult]]:
    got: list[LogLine] = []
    results: list[TaskResult] = []
    for task in spool.recovered():
        for entry in task.pending():
            got.extend(entry.lines)
            if entry.result is not None:
                results.append(entry.result)
    return got, results


def test_sealed_records_hold_no_line_and_recover_with_the_same_key(tmp_path: Path) -> None:
    key = os.urandom(32)
    root = tmp_path / "spool"
    spool = spool_at(root, key, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 200))
    task.append_result(TaskResult(attempt=1, status="succeeded", outputs={"O": MARK}))
    assert [ln.seq for e in task.pending() for ln in e.lines] == list(range(200))
    spool.close()

    on_disk = disk_bytes(root)
    assert len(on_disk) > 200 * 100
    assert MARK.encode() not in on_disk
    assert TASK.encode() not in on_disk

    again = spool_at(root, key, segment_bytes=4 * KIB)
    got, results = sent(again)
    assert got == lines(0, 200)
    assert [r.outputs for r in results] == [{"O": MARK}]


def test_a_full_spool_drops_a_middle_into_a_sealed_gap(tmp_path: Path) -> None:
    key = os.urandom(32)
    root = tmp_path / "spool"
    spool = spool_at(root, key, task_limit=32 * KIB, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 1000, 50):
        task.append_lines(lines(first, 50))
    assert task.dropped_lines > 0
    spool.close()
    assert MARK.encode() not in disk_bytes(root)

    got, _ = sent(spool_at(root, key, task_limit=32 * KIB, segment_bytes=4 * KIB))
    assert any(ln.text.startswith("[tether]") for ln in got)
    assert got[-1].seq == 999


def test_a_spool_copied_to_another_host_is_reported_unreadable_and_left_alone(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    spool = spool_at(root, os.urandom(32))
    spool.task(TASK, 1).append_lines(lines(0, 20))
    spool.close()
    copy = tmp_path / "other-host" / "spool"
    shutil.copytree(root, copy)
    before = disk_bytes(copy)

    elsewhere = spool_at(copy, os.urandom(32))

    assert elsewhere.recovered() == []
    assert [p.parent for p in elsewhere.unreadable] == [copy]
    assert disk_bytes(copy) == before
    # And a delegate without a key cannot read it either.
    assert spool_at(copy, None).recovered() == []


def test_a_spool_written_before_sealing_still_reads(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    plain = spool_at(root, None)
    plain.task(TASK, 1).append_lines(lines(0, 20))
    plain.close()
    assert MARK.encode() in disk_bytes(root)

    keyed = spool_at(root, os.urandom(32))
    got, _ = sent(keyed)
    assert got == lines(0, 20)


def test_a_segment_copied_over_another_does_not_open(tmp_path: Path) -> None:
    key = os.urandom(32)
    root = tmp_path / "spool"
    spool = spool_at(root, key, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 100))
    spool.close()
    first, second, *_ = sorted(task.directory.glob("*.seg"))
    # The second segment's bytes under the first's name: its head names segment 1, and is
    # sealed for segment 1, so it does not open as segment 0 (nor reads as any).
    shutil.copy(second, first)
    again = spool_at(root, key, segment_bytes=4 * KIB)
    assert [p.name for p in again.unreadable] == [task.directory.name]
