from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from delegate.outbox.spool import Entry, Spool, TaskSpool, human_bytes
from shared.limits import KIB
from shared.protocol import LogLine, TaskResult

TASK = "task_0123abc"
GAP = re.compile(
    r"^\[tether\] (\d+) lines \(([^)]*)\) dropped here, seq (\d+) to (\d+): "
    r"the delegate's log spool was full while the manager was unreachable$"
)


def lines(first: int, count: int, width: int = 100) -> list[LogLine]:
    return [
        LogLine(seq=s, stream="stdout", ts=1000.0 + s, text=f"{s:08d}".ljust(width, "x"))
        for s in range(first, first + count)
    ]


def result(last_seq: int) -> TaskResult:
    return TaskResult(attempt=1, status="succeeded", exit_code=0, last_seq=last_seq)


def entries(task: TaskSpool) -> list[Entry]:
    return list(task.pending())


def sent_lines(task: TaskSpool) -> list[LogLine]:
    return [line for e in entries(task) for line in e.lines]


def open_spool(
    root: Path,
    *,
    task_limit: int = 64 * KIB,
    total_limit: int = 1024 * KIB,
    segment_bytes: int | None = None,
) -> Spool:
    return Spool.open(
        root, task_limit=task_limit, total_limit=total_limit, segment_bytes=segment_bytes
    )


def test_lines_come_back_in_order_across_segments_with_the_result_last(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool", task_limit=1024 * KIB, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 300, 30):
        task.append_lines(lines(first, 30))
    task.append_result(result(299))

    got = entries(task)

    assert len(list((task.directory).glob("*.seg"))) > 1
    assert [line.seq for e in got for line in e.lines] == list(range(300))
    assert got[-1].result == result(299)
    assert all(e.result is None for e in got[:-1])
    assert task.has_result


def test_ack_deletes_what_was_sent_and_pending_resumes_after_it(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool", task_limit=1024 * KIB, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 300, 30):
        task.append_lines(lines(first, 30))
    segments_before = len(list(task.directory.glob("*.seg")))
    first_half = [e for e in entries(task) if e.lines[-1].seq < 150]

    task.ack(first_half[-1].end)

    assert [line.seq for line in sent_lines(task)] == list(range(150, 300))
    assert len(list(task.directory.glob("*.seg"))) < segments_before
    task.ack(entries(task)[-1].end)
    assert task.empty
    assert sent_lines(task) == []
    assert spool.total_bytes == task.pending_bytes == 0


def test_the_result_counts_as_sent_only_once_acked(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 3))
    task.append_result(result(2))
    got = entries(task)

    task.ack(got[0].end)
    assert task.has_result
    assert not task.result_acked
    task.ack(got[1].end)

    assert task.result_acked
    assert not task.has_result
    assert task.empty


async def test_spooled_lines_and_result_survive_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root, task_limit=1024 * KIB, segment_bytes=4 * KIB)
    task = spool.task(TASK, 3)
    for first in range(0, 200, 50):
        task.append_lines(lines(first, 50))
    task.ack(entries(task)[0].end)  # the first 50 were sent before the crash
    task.append_result(result(199))
    await task.sync()
    spool.close()

    again = open_spool(root, task_limit=1024 * KIB, segment_bytes=4 * KIB)
    (recovered,) = again.recovered()

    assert (recovered.task_id, recovered.attempt) == (TASK, 3)
    assert recovered.has_result
    got = entries(recovered)
    # Sent lines may come again (the manager keeps one per seq); none is missing.
    seqs = [line.seq for e in got for line in e.lines]
    assert seqs == list(range(seqs[0], 200))
    assert seqs[0] <= 50
    assert got[-1].result == result(199)
    assert again.total_bytes == recovered.pending_bytes > 0


async def test_lines_of_bytes_come_back_exactly_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root)
    task = spool.task(TASK, 1)
    raws = [b"text", b"a\x00b\xffc", bytes(range(256)), b""]
    task.append_lines([LogLine.of_bytes(i, "stdout", 1.0, raw) for i, raw in enumerate(raws)])
    await task.sync()
    spool.close()

    (recovered,) = open_spool(root).recovered()
    got = sent_lines(recovered)

    assert [line.raw for line in got] == raws
    assert [line.data is None for line in got] == [True, False, False, True]
    # What a gap would count: the bytes the lines stand for, not their base64.
    assert sum(line.nbytes for line in got) == sum(map(len, raws))


def test_a_sent_spool_is_gone_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root)
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 10))
    task.append_result(result(9))
    for e in entries(task):
        task.ack(e.end)
    task.remove()

    assert open_spool(root).recovered() == []
    assert list(root.iterdir()) == []


def test_spool_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root)
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 10))
    task.append_result(result(9))

    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE(task.directory.stat().st_mode) == 0o700
    files = list(task.directory.iterdir())
    assert files
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_an_existing_spool_directory_is_narrowed_to_0700(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir(mode=0o755)
    root.chmod(0o755)

    open_spool(root)

    assert stat.S_IMODE(root.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b"\x00\x00\x01", id="torn-header"),
        pytest.param(b"\x00\x00\x00\x40\x12\x34\x56\x78{}", id="torn-record"),
    ],
)
def test_a_torn_tail_record_after_a_crash_is_cut_off_at_open(tmp_path: Path, tail: bytes) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root)
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 10))
    spool.close()
    seg = task.directory / "00000000.seg"
    whole = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(tail)

    (recovered,) = open_spool(root).recovered()

    assert seg.stat().st_size == whole
    assert [line.seq for line in sent_lines(recovered)] == list(range(10))
    recovered.append_lines(lines(10, 2))
    assert [line.seq for line in sent_lines(recovered)] == list(range(12))


def test_a_checksum_error_cuts_the_file_back_to_the_last_whole_record(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root)
    task = spool.task(TASK, 1)
    task.append_lines(lines(0, 5))
    seg = task.directory / "00000000.seg"
    intact = seg.stat().st_size
    task.append_lines(lines(5, 5))
    spool.close()
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x55
    seg.write_bytes(bytes(data))

    (recovered,) = open_spool(root).recovered()

    assert [line.seq for line in sent_lines(recovered)] == list(range(5))
    assert seg.stat().st_size == intact


def test_a_segment_damaged_in_the_middle_leaves_a_line_saying_what_was_lost(
    tmp_path: Path,
) -> None:
    root = tmp_path / "spool"
    spool = Spool.open(root, task_limit=1024 * KIB, total_limit=1024 * KIB, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 200, 10):
        task.append_lines(lines(first, 10))
    spool.close()
    segs = sorted(task.directory.glob("*.seg"))
    assert len(segs) >= 3
    data = bytearray(segs[1].read_bytes())
    data[-3] ^= 0x55
    segs[1].write_bytes(bytes(data))

    (recovered,) = Spool.open(root, task_limit=1024 * KIB, segment_bytes=4 * KIB).recovered()

    got = sent_lines(recovered)
    notes = [line for line in got if line.stream == "system"]
    assert len(notes) == 1
    assert "lost here" in notes[0].text
    seqs = [line.seq for line in got]
    assert seqs == sorted(seqs)
    lost = re.search(r"(\d+) lines lost here, seq (\d+) to (\d+)", notes[0].text)
    assert lost is not None
    count, first, last = map(int, lost.groups())
    assert notes[0].seq == first
    assert count == last - first + 1
    assert set(seqs) | set(range(first, last + 1)) == set(range(200))


def test_a_full_spool_keeps_head_and_tail_and_explains_the_dropped_middle(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path / "spool", task_limit=64 * KIB)
    task = spool.task(TASK, 1)
    total = 5000
    for first in range(0, total, 50):
        task.append_lines(lines(first, 50))
        assert task.pending_bytes <= 64 * KIB

    got = sent_lines(task)

    seqs = [line.seq for line in got]
    assert seqs[0] == 0  # the head
    assert seqs[-1] == total - 1  # the most recent line
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    (note,) = [line for line in got if line.stream == "system"]
    match = GAP.match(note.text)
    assert match is not None, note.text
    count, size, lo, hi = match.groups()
    # The note takes the seq of the first dropped line; the missing seqs are its range.
    assert note.seq == int(lo)
    assert int(count) == int(hi) - int(lo) + 1
    assert set(range(total)) - set(seqs) == set(range(int(lo) + 1, int(hi) + 1))
    assert size == human_bytes(int(count) * 100)
    assert task.dropped_lines == int(count)
    # A quarter of the budget is kept as head, and well over half of it as tail.
    head = [s for s in seqs if s < int(lo)]
    tail = [s for s in seqs if s > int(hi)]
    assert len(head) * 100 >= 12 * KIB
    assert len(tail) * 100 >= 32 * KIB


def test_the_dropped_middle_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    spool = open_spool(root, task_limit=64 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 3000, 50):
        task.append_lines(lines(first, 50))
    task.append_result(result(2999))
    before = entries(task)
    spool.close()

    (recovered,) = open_spool(root, task_limit=64 * KIB).recovered()

    assert entries(recovered) == before


def test_lines_handed_out_for_sending_are_never_dropped(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path / "spool", task_limit=64 * KIB, segment_bytes=4 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 300, 50):
        task.append_lines(lines(first, 50))
    # The drainer has read (and is posting) everything up to seq 299.
    in_flight = [line.seq for line in sent_lines(task)]
    assert in_flight == list(range(300))

    for first in range(300, 5000, 50):
        task.append_lines(lines(first, 50))

    seqs = [line.seq for line in sent_lines(task)]
    assert seqs[: len(in_flight)] == in_flight
    assert seqs[-1] == 4999


def test_results_are_never_dropped(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool", task_limit=16 * KIB, total_limit=16 * KIB)
    task = spool.task(TASK, 1)
    for first in range(0, 2000, 50):
        task.append_lines(lines(first, 50))
    task.append_result(result(1999))
    other = spool.task("task_other", 1)
    for first in range(0, 2000, 50):
        other.append_lines(lines(first, 50))

    assert entries(task)[-1].result == result(1999)


def test_the_overall_bound_drops_from_the_largest_spool(tmp_path: Path) -> None:
    spool = Spool.open(
        tmp_path / "spool", task_limit=256 * KIB, total_limit=320 * KIB, segment_bytes=16 * KIB
    )
    big = spool.task("task_big", 1)
    small = spool.task("task_small", 1)
    for first in range(0, 2000, 50):
        big.append_lines(lines(first, 50))
    small.append_lines(lines(0, 50))

    for first in range(50, 1000, 50):
        small.append_lines(lines(first, 50))

    assert spool.total_bytes <= 320 * KIB
    assert big.dropped_lines > 0
    assert small.dropped_lines == 0
    assert [line.seq for line in sent_lines(small)] == list(range(1000))


def test_with_nothing_in_the_middle_to_drop_new_lines_become_a_gap(tmp_path: Path) -> None:
    # Many small spools and a small overall bound: no spool has a middle segment to spare.
    spool = Spool.open(
        tmp_path / "spool", task_limit=64 * KIB, total_limit=24 * KIB, segment_bytes=8 * KIB
    )
    first = spool.task("task_a", 1)
    first.append_lines(lines(0, 100))
    second = spool.task("task_b", 1)

    for start in range(0, 400, 20):
        second.append_lines(lines(start, 20))

    assert spool.total_bytes <= 24 * KIB + 1 * KIB  # a gap record is tiny
    got = sent_lines(second)
    seqs = [line.seq for line in got]
    assert seqs == sorted(seqs)
    notes = [line for line in got if line.stream == "system"]
    assert notes
    dropped = 0
    for note in notes:
        match = GAP.match(note.text)
        assert match is not None
        dropped += int(match.group(1))
    assert dropped + len(got) - len(notes) == 400
    assert second.dropped_lines == dropped


def test_a_task_spool_makes_no_directory_until_it_is_written(tmp_path: Path) -> None:
    spool = open_spool(tmp_path / "spool")

    task = spool.task("task/../odd id", 2)

    assert not task.directory.exists()
    assert task.directory.parent == tmp_path / "spool"
    assert task.empty


def test_human_bytes_reads_like_a_person_would_write_it() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(812 * 1024 * 1024) == "812.0 MiB"
    assert human_bytes(3 * 1024**4) == "3072.0 GiB"
