"""cancel_and_wait: the tasks it cancels end, and a cancel aimed at the caller while it waits
is not swallowed (the delegate that went on polling after SIGTERM lost exactly that one)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shared.aio import cancel_and_wait


def slow_to_stop(release: asyncio.Event) -> asyncio.Task[None]:
    """A task that, once cancelled, takes until ``release`` to finish."""

    async def body() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()
            raise

    return asyncio.create_task(body())


async def wait_old_way(task: asyncio.Task[None]) -> str:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return "went on"


async def wait_new_way(task: asyncio.Task[None]) -> str:
    await cancel_and_wait(task)
    return "went on"


@pytest.mark.parametrize(("waiter", "swallowed"), [(wait_old_way, True), (wait_new_way, False)])
async def test_a_cancel_of_the_caller_while_it_waits(waiter: object, swallowed: bool) -> None:
    release = asyncio.Event()
    inner = slow_to_stop(release)
    await asyncio.sleep(0)  # inner is now in its sleep
    outer = asyncio.create_task(waiter(inner))  # type: ignore[operator]
    await asyncio.sleep(0)  # outer cancelled inner and waits for it
    outer.cancel()  # the caller is told to stop, while it waits
    release.set()
    if swallowed:
        # The pattern this replaces: the caller carries on as if nobody had asked it to stop.
        assert await outer == "went on"
    else:
        with pytest.raises(asyncio.CancelledError):
            await outer
    assert inner.cancelled()


async def test_the_cancelled_tasks_errors_stay_theirs() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    await cancel_and_wait(task, None)
    assert isinstance(task.exception(), RuntimeError)
