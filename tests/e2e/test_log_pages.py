"""A log larger than a page: pages end on their byte bound, and every reader (the REST
client, ``tether task logs``, ``--follow``) gets each line once, in order, on both stores."""

from __future__ import annotations

from manager.client.client import TetherClient
from shared.limits import MAX_LOG_PAGE_BYTES
from tests.e2e.harness import Cluster

# 16,000 bytes a line: 270 lines are 4.3 MB, past one page's byte bound (4 MiB).
LINES = 270
WIDTH = 16_000
SCRIPT = f"for i in range({LINES}): print(str(i).ljust({WIDTH}, 'x'))"


def expected() -> list[str]:
    return [str(i).ljust(WIDTH, "x") for i in range(LINES)]


def joined(lines: list[str]) -> str:
    """The text, whatever the lines it came in: the delegate ships a part of a line that
    waited longer than its flush interval as a line of its own (timings are scaled here)."""
    return "".join(lines)


async def test_a_log_past_the_byte_bound_is_paged_whole_by_every_reader(running: Cluster) -> None:
    await running.start_delegate("pager")
    res = await running.tether("task", "submit", "--", "python3", "-c", SCRIPT)
    assert res.code == 0, res.stderr
    task_id = res.last_line
    followed = await running.tether("task", "logs", task_id, "--follow", timeout=120)
    assert followed.code == 0, followed.stderr
    assert joined(followed.stdout.splitlines()) == joined(expected())
    async with TetherClient(running.url, api_key=running.admin_key, ca_file=running.ca_file) as api:
        # Asked for every line at once, the page still stops at the byte bound...
        first = await api.get_logs(task_id, limit=LINES)
        assert 0 < len(first.lines) < LINES
        assert sum(len(ln.text.encode()) for ln in first.lines) <= MAX_LOG_PAGE_BYTES
        # ...and its cursor reads on from the line after its last one, to the end.
        second = await api.get_logs(task_id, after=first.cursor, limit=LINES)
        assert joined([ln.text for ln in first.lines + second.lines]) == joined(expected())
        last = await api.get_logs(task_id, after=second.cursor, limit=LINES)
        assert (last.lines, last.cursor) == ([], second.cursor)
    paged = await running.tether("task", "logs", task_id, timeout=120)
    assert paged.code == 0, paged.stderr
    assert joined(paged.stdout.splitlines()) == joined(expected())
