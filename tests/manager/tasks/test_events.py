"""Task wake-ups: every listener wakes once per change, and nobody listening holds nothing."""

from __future__ import annotations

import gc

from manager.tasks.events import TaskEvents


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


async def test_a_log_tally_counts_every_log_notify_while_it_is_held() -> None:
    """Counted whether or not anyone listens at that moment (a follower between its wake and
    its next listen has no event to set), and only for log notifies."""
    events = TaskEvents()
    tally = events.tally("task_1")
    assert events.tally("task_1") is tally
    events.notify("task_1", logs=True)  # nobody listening
    events.notify("task_1", listed=True)  # a state change: no line
    woken = events.listen("task_1")
    events.notify("task_1", logs=True)
    assert woken.is_set()
    assert tally.grown == 2
    del tally
    gc.collect()
    # Not held, not kept: a later follow starts from a count of its own.
    assert events.tally("task_1").grown == 0
