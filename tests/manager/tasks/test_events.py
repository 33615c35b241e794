"""Task wake-ups: every listener wakes once per change, and nobody listening holds nothing."""

from __future__ import annotations

import gc

from manager.records import TaskRecord
from manager.tasks.events import TaskEvents
from shared.protocol import TaskState


async def test_listeners_of_one_task_share_its_event_and_wake_once() -> None:
    events = TaskEvents()
    first, second = events.listen("task_1"), events.listen("task_1")
    assert first is second
    events.notify("task_1")
    assert first.is_set()
    # The next change has an event of its own: a waiter that woke does not wake again at once.
    assert not events.listen("task_1").is_set()


async def test_an_event_nobody_waits_on_is_not_kept() -> None:
    """A follow listens before its permission check: a refused one (an unknown id of any
    length) or one whose task ended with no later notify must leave nothing behind."""
    events = TaskEvents()
    held = events.listen("task_held")
    for i in range(100):
        events.listen(f"nope_{i}_" + "x" * 4096)
    gc.collect()
    assert events.listened() == 1
    events.notify("task_held")
    assert held.is_set()
    assert events.listened() == 0


async def test_news_counts_every_log_notify_while_it_is_held() -> None:
    """Counted whether or not anyone listens at that moment (a follower between its wake and
    its next listen has no event to set), and only for log notifies."""
    events = TaskEvents()
    news = events.news("task_1")
    assert events.news("task_1") is news
    events.notify("task_1", logs=True)  # nobody listening
    events.notify("task_1", listed=True)  # a state change: no line
    woken = events.listen("task_1")
    events.notify("task_1", logs=True)
    assert woken.is_set()
    assert news.grown == 2
    del news
    gc.collect()
    # Not held, not kept: a later follow starts from a count of its own.
    assert events.news("task_1").grown == 0


def _task(task_id: str, state: TaskState) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        type="shell",
        state=state,
        payload={"script": "true"},
        selectors=(),
        timeout_s=60.0,
        queue_timeout_s=60.0,
        max_attempts=1,
        created_at=1.0,
    )


async def test_news_holds_the_task_as_last_written_here_until_another_replica_speaks() -> None:
    events = TaskEvents()
    events.wrote(_task("task_1", TaskState.RUNNING))  # nobody follows: nothing kept
    news = events.news("task_1")
    assert news.task is None  # written before the follower began: it reads the store
    running, done = _task("task_1", TaskState.RUNNING), _task("task_1", TaskState.SUCCEEDED)
    events.wrote(running)
    assert news.task is running
    events.wrote(_task("task_2", TaskState.RUNNING))  # another task's write
    assert news.task is running
    events.notify("task_1", logs=True)  # this process's own lines: the task is unchanged
    assert news.task is running
    events.wrote(done)
    assert news.task is done
    # Another replica's word: the store is read, and stays the one read even after a later
    # answer to a write made here (it may be older than what the other replica wrote).
    events.notify("task_1", listed=True, logs=True, remote=True)
    assert news.task is None
    assert news.grown == 2
    events.wrote(done)
    assert news.task is None
