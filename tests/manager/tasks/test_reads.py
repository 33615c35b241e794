"""Log reads take turns: a page is counted until it has been written out."""

from __future__ import annotations

import pytest

from manager.errors import Unavailable
from manager.store.base import Store
from manager.tasks.reads import TaskReads


async def test_a_reader_past_the_turns_is_told_to_come_back_and_a_turn_frees(
    store: Store,
) -> None:
    reads = TaskReads(store, log_reads_at_once=1, log_read_wait=0.01)
    async with reads.log_page("task_1", after=None, limit=10):
        # The one turn is held while the first page is being written out.
        with pytest.raises(Unavailable) as refused:
            async with reads.log_page("task_1", after=None, limit=10):
                pass
        assert refused.value.code == "busy"
    async with reads.log_page("task_1", after=None, limit=10) as lines:
        assert lines == []
