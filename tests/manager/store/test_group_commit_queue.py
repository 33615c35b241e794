"""The loop's side of group commit, fed batches by a runner of the test's own: which calls
go together, in what order, and who is answered with what (no database, no thread)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from manager.store.group_commit import Failed, GroupCommit, Outcome


class Runner:
    """Answers each batch at once; ``short`` batches answer only their first call (as a
    transaction lost under it would)."""

    def __init__(self, *, short: int = 0, refuse: int = 0) -> None:
        self.batches: list[list[str]] = []
        self._short = short
        self._refuse = refuse

    def __call__(self, calls: list[str]) -> asyncio.Future[Sequence[Outcome]]:
        self.batches.append(list(calls))
        done: asyncio.Future[Sequence[Outcome]] = asyncio.get_running_loop().create_future()
        if self._refuse:
            self._refuse -= 1
            done.set_exception(RuntimeError("batch refused"))
        elif self._short:
            self._short -= 1
            done.set_result([Failed(ValueError(calls[0]))])
        else:
            done.set_result([f"done {c}" for c in calls])
        return done


async def test_calls_made_together_form_one_batch_cut_at_the_bound() -> None:
    runner = Runner()
    group = GroupCommit(runner, max_batch=2)
    answers = await asyncio.gather(*(group.submit(c) for c in "abcde"))
    assert answers == [f"done {c}" for c in "abcde"]
    assert runner.batches == [["a", "b"], ["c", "d"], ["e"]]


async def test_calls_a_lost_batch_did_not_reach_go_first_into_the_next() -> None:
    runner = Runner(short=1)
    group = GroupCommit(runner)
    answers = await asyncio.gather(*(group.submit(c) for c in "abc"), return_exceptions=True)
    assert isinstance(answers[0], ValueError)
    assert answers[1:] == ["done b", "done c"]
    assert runner.batches == [["a", "b", "c"], ["b", "c"]]


async def test_a_refused_batch_fails_each_of_its_callers_and_the_next_goes_on() -> None:
    runner = Runner(refuse=1)
    group = GroupCommit(runner)
    answers = await asyncio.gather(*(group.submit(c) for c in "ab"), return_exceptions=True)
    assert [type(a) for a in answers] == [RuntimeError, RuntimeError]
    assert await group.submit("c") == "done c"


async def test_a_caller_gone_before_its_batch_starts_writes_nothing() -> None:
    runner = Runner()
    group = GroupCommit(runner)
    kept = asyncio.ensure_future(group.submit("kept"))
    gone = asyncio.ensure_future(group.submit("gone"))
    await asyncio.sleep(0)  # both queued, the batch not started yet (it starts a turn later)
    gone.cancel()
    assert await kept == "done kept"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert runner.batches == [["kept"]]


async def test_drain_returns_once_every_call_is_answered() -> None:
    runner = Runner()
    group = GroupCommit(runner)
    pending = [asyncio.ensure_future(group.submit(c)) for c in "ab"]
    await asyncio.sleep(0)
    await group.drain()
    assert all(p.done() for p in pending)
    await group.drain()  # idle: returns at once
