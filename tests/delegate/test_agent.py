"""The agent's slot accounting: free slots, capacity, a finished task's slot, draining.

The manager is the test double of ManagerApi from ``test_agent_secrets`` (logs and results
are recorded); assignments are handed to the agent as the channel does; tasks run as real
processes; the link holds no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from delegate.agent import Agent
from delegate.config import DelegateConfig
from delegate.link.stream import ChannelEvents
from shared.limits import Timings
from shared.masking import Masker
from shared.protocol import (
    HttpPayload,
    LogBatch,
    LogBatchAck,
    ResultAck,
    ShellPayload,
    TaskResult,
    TaskState,
    TaskType,
)
from tests.delegate.secret_helpers import DelegateKey, acquire, delegate_key
from tests.delegate.test_agent_secrets import FakeManager as RecordingManager

WAIT = 30.0
RUNS_UNTIL_CANCELLED = "echo up; sleep 300"


class FakeManager(RecordingManager):
    def __init__(self, key: DelegateKey) -> None:
        super().__init__(key, acquire(ShellPayload(script="true")))
        self.scripts: dict[str, str] = {}
        self.started: asyncio.Queue[str] = asyncio.Queue()
        self.ended: asyncio.Queue[tuple[str, TaskResult]] = asyncio.Queue()

    async def post_logs(self, task_id: str, batch: LogBatch) -> LogBatchAck:
        for line in batch.lines:
            if line.text == "up":
                self.started.put_nowait(task_id)
        return LogBatchAck(accepted=len(batch.lines))

    async def post_result(self, task_id: str, result: TaskResult) -> ResultAck:
        self.ended.put_nowait((task_id, result))
        return ResultAck(state=TaskState(result.status), recorded=True)


class IdleLink:
    """Holds no connection; counts the agent's pokes (a freed slot)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.poked = asyncio.Event()
        self.pokes = 0

    async def run(self, events: ChannelEvents) -> None:
        self.started.set()
        await asyncio.Event().wait()

    def poke(self) -> None:
        self.pokes += 1
        self.poked.set()


@dataclass
class Running:
    agent: Agent
    manager: FakeManager
    link: IdleLink
    stop: asyncio.Event
    runner: asyncio.Task[int]

    def free(self) -> int:
        return self.agent.heartbeat_state()[1]

    def assign(self, task_id: str, *, attempt: int = 1, type_: str = "shell") -> str | None:
        """Push ``task_id`` as the channel does: the agent takes it (None, acked, then run)
        or declines it (the reason)."""
        script = self.manager.scripts.get(task_id, "true")
        payload = ShellPayload(script=script)
        handed = acquire(payload, task_id=task_id, attempt=attempt)
        if type_ != "shell":
            handed = handed.model_copy(
                update={"task": handed.task.model_copy(update={"payload": _http()})}
            )
        why = self.agent.on_assigned(handed)
        if why is None:
            self.agent.run_assigned(handed)
        return why

    async def started(self) -> str:
        return await asyncio.wait_for(self.manager.started.get(), WAIT)

    async def result(self) -> tuple[str, TaskResult]:
        return await asyncio.wait_for(self.manager.ended.get(), WAIT)

    async def poked(self) -> None:
        await asyncio.wait_for(self.link.poked.wait(), WAIT)
        self.link.poked.clear()


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), WAIT)


@contextlib.asynccontextmanager
async def running_agent(
    data_dir: Path, *, max_tasks: int = 2, task_types: tuple[TaskType, ...] = tuple(TaskType)
) -> AsyncIterator[Running]:
    key = delegate_key()
    manager = FakeManager(key)
    link = IdleLink()
    config = DelegateConfig(
        manager_url=manager.base_url,
        token="t",
        name="d1",
        data_dir=data_dir,
        max_tasks=max_tasks,
        task_types=task_types,
    )
    agent = Agent(
        config,
        manager,
        link=link,
        private_key=key.private,
        timings=Timings().scaled(0.01),
        process_masker=Masker(),
    )
    stop = asyncio.Event()
    runner = asyncio.create_task(agent.run(stop, asyncio.Event()))
    await asyncio.wait_for(link.started.wait(), WAIT)
    try:
        yield Running(agent, manager, link, stop, runner)
    finally:
        stop.set()
        await asyncio.wait_for(runner, WAIT)


async def test_an_idle_agent_offers_every_slot(tmp_path: Path) -> None:
    async with running_agent(tmp_path, max_tasks=3) as r:
        assert r.agent.heartbeat_state() == ([], 3, 0.0)


async def test_an_assignment_taken_holds_its_slot_and_a_push_again_runs_it_once(
    tmp_path: Path,
) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        assert r.assign("t1") is None
        assert r.free() == 1
        # Pushed again (its ack was lost): acked again, not a second run.
        assert r.assign("t1") is None
        assert await r.started() == "t1"
        assert r.agent.heartbeat_state()[:2] == (["t1"], 1)
        # Another attempt of a task running here is not this one's to take.
        assert r.assign("t1", attempt=2) == "unfit"
        r.agent.on_cancel("t1")
        await r.result()
        assert r.manager.started.empty()


async def test_assignments_beyond_capacity_are_declined_as_full(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        for task_id in ("t1", "t2", "t3"):
            r.manager.scripts[task_id] = RUNS_UNTIL_CANCELLED
        assert [r.assign(t) for t in ("t1", "t2", "t3")] == [None, None, "full"]
        assert r.free() == 0
        assert {await r.started(), await r.started()} == {"t1", "t2"}
        running, free, load = r.agent.heartbeat_state()
        assert (sorted(running), free, load) == (["t1", "t2"], 0, 1.0)
        for task_id in ("t1", "t2"):
            r.agent.on_cancel(task_id)
        await r.result()
        await r.result()


async def test_a_task_of_a_type_this_delegate_does_not_run_is_declined_as_unfit(
    tmp_path: Path,
) -> None:
    async with running_agent(tmp_path, task_types=(TaskType.SHELL,)) as r:
        assert r.assign("t1", type_="http") == "unfit"
        assert r.free() == 2


async def test_a_finished_task_frees_its_slot_and_pokes_the_link(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = "echo up"
        r.assign("t1")
        assert r.free() == 1
        task_id, result = await r.result()
        await r.poked()
        assert (task_id, result.status) == ("t1", "succeeded")
        assert r.agent.heartbeat_state() == ([], 2, 0.0)
        assert r.link.pokes == 1


async def test_a_cancelled_task_frees_its_slot(tmp_path: Path) -> None:
    async with running_agent(tmp_path, max_tasks=1) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        r.assign("t1")
        assert await r.started() == "t1"
        assert r.agent.heartbeat_state() == (["t1"], 0, 1.0)
        r.agent.on_cancel("t1")
        task_id, result = await r.result()
        await r.poked()
        assert (task_id, result.status) == ("t1", "cancelled")
        assert r.free() == 1


async def test_a_drain_takes_no_new_task_until_resumed(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = "echo up"
        r.agent.on_drain()
        assert r.free() == 0
        assert r.assign("t1") == "draining"
        r.agent.on_resume()
        assert r.free() == 2
        await r.poked()  # a polling link asks for work again at once
        assert r.assign("t1") is None
        assert (await r.result())[0] == "t1"


async def test_a_drain_lets_running_tasks_finish(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        r.assign("t1")
        assert await r.started() == "t1"
        r.agent.on_drain()
        assert r.agent.heartbeat_state() == (["t1"], 0, 0.5)
        r.agent.on_cancel("t1")
        assert (await r.result())[1].status == "cancelled"
        await r.poked()
        assert r.agent.heartbeat_state() == ([], 0, 0.0)


async def test_the_managers_resume_does_not_lift_a_shutdowns_drain(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        r.agent.on_drain()
        r.stop.set()
        assert await asyncio.wait_for(r.runner, WAIT) == 0
        r.agent.on_resume()
        assert r.free() == 0
        assert r.assign("t1") == "draining"


@pytest.mark.parametrize("max_tasks", [1, 4])
async def test_load_is_running_over_capacity(tmp_path: Path, max_tasks: int) -> None:
    async with running_agent(tmp_path, max_tasks=max_tasks) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        r.assign("t1")
        assert await r.started() == "t1"
        assert r.agent.heartbeat_state() == (["t1"], max_tasks - 1, 1 / max_tasks)
        r.agent.on_cancel("t1")
        await r.result()


def _http() -> HttpPayload:
    return HttpPayload.model_validate({"type": "http", "url": "https://example.invalid/"})
