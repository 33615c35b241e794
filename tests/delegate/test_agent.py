"""The agent's slot accounting: free slots, capacity, a finished task's slot, draining.

The manager is the test double of ManagerApi from ``test_agent_secrets`` (acquire answers
what a test says, logs and results are recorded); tasks run as real processes; the link
holds no connection.
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
from delegate.link.api import Rejected, Unreachable
from delegate.link.stream import ChannelEvents
from shared.limits import Timings
from shared.masking import Masker
from shared.protocol import (
    AcquireResponse,
    LogBatch,
    LogBatchAck,
    ResultAck,
    ShellPayload,
    TaskResult,
    TaskState,
)
from tests.delegate.secret_helpers import DelegateKey, acquire, delegate_key
from tests.delegate.test_agent_secrets import FakeManager as RecordingManager

WAIT = 30.0
RUNS_UNTIL_CANCELLED = "echo up; sleep 300"


class FakeManager(RecordingManager):
    def __init__(self, key: DelegateKey) -> None:
        super().__init__(key, acquire(ShellPayload(script="true")))
        self.scripts: dict[str, str] = {}
        self.acquired: list[str] = []
        # An acquire for a task listed here waits until its event is set.
        self.gates: dict[str, asyncio.Event] = {}
        self.refuse: set[str] = set()
        # An acquire of a task listed here is handed out, but its answer is lost once.
        self.lose_answer: set[str] = set()
        self.keys: list[str | None] = []
        self.started: asyncio.Queue[str] = asyncio.Queue()
        self.ended: asyncio.Queue[tuple[str, TaskResult]] = asyncio.Queue()

    async def acquire(self, task_id: str, key: str | None = None) -> AcquireResponse:
        self.acquired.append(task_id)
        self.keys.append(key)
        if task_id in self.lose_answer:
            self.lose_answer.discard(task_id)
            raise Unreachable("ServerDisconnectedError: the answer was lost")
        gate = self.gates.get(task_id)
        if gate is not None:
            await gate.wait()
        if task_id in self.refuse:
            raise Rejected(409, "taken", "another delegate took it")
        return acquire(ShellPayload(script=self.scripts[task_id]), task_id=task_id)

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
async def running_agent(data_dir: Path, *, max_tasks: int = 2) -> AsyncIterator[Running]:
    key = delegate_key()
    manager = FakeManager(key)
    link = IdleLink()
    config = DelegateConfig(
        manager_url=manager.base_url, token="t", name="d1", data_dir=data_dir, max_tasks=max_tasks
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


async def test_an_acquire_in_flight_holds_its_slot_and_a_refusal_gives_it_back(
    tmp_path: Path,
) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.gates["t1"] = gate = asyncio.Event()
        r.manager.refuse.add("t1")
        r.agent.on_task_available("t1")
        assert r.free() == 1
        r.agent.on_task_available("t1")  # the same hint again is not a second acquire
        await asyncio.sleep(0)  # the one acquire starts and waits at the gate
        assert r.manager.acquired == ["t1"]
        gate.set()
        await until(lambda: r.free() == 2)  # the agent's acquire task handles the refusal
        assert r.agent.heartbeat_state() == ([], 2, 0.0)


async def test_an_acquire_whose_answer_was_lost_is_asked_again_with_the_same_key(
    tmp_path: Path,
) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = "echo up"
        r.manager.lose_answer.add("t1")
        r.agent.on_task_available("t1")
        assert (await r.result())[0] == "t1"
        assert r.manager.acquired == ["t1", "t1"]
        first, again = r.manager.keys
        assert first is not None
        assert again == first


async def test_each_acquire_names_itself_with_a_key_of_its_own(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        for task_id in ("t1", "t2"):
            r.manager.scripts[task_id] = "echo up"
            r.agent.on_task_available(task_id)
        await r.result()
        await r.result()
        assert len(set(r.manager.keys)) == 2


async def test_hints_beyond_capacity_are_not_acquired(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        for task_id in ("t1", "t2", "t3"):
            r.manager.scripts[task_id] = RUNS_UNTIL_CANCELLED
            r.agent.on_task_available(task_id)
        assert r.free() == 0  # two acquires in flight hold both slots
        assert {await r.started(), await r.started()} == {"t1", "t2"}
        running, free, load = r.agent.heartbeat_state()
        assert (sorted(running), free, load) == (["t1", "t2"], 0, 1.0)
        assert r.manager.acquired == ["t1", "t2"]
        r.agent.on_task_available("t3")
        assert r.manager.acquired == ["t1", "t2"]


async def test_a_finished_task_frees_its_slot_and_pokes_the_link(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = "echo up"
        r.agent.on_task_available("t1")
        assert r.free() == 1
        task_id, result = await r.result()
        await r.poked()
        assert (task_id, result.status) == ("t1", "succeeded")
        assert r.agent.heartbeat_state() == ([], 2, 0.0)
        assert r.link.pokes == 1


async def test_a_cancelled_task_frees_its_slot(tmp_path: Path) -> None:
    async with running_agent(tmp_path, max_tasks=1) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        r.agent.on_task_available("t1")
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
        r.agent.on_task_available("t1")
        assert r.manager.acquired == []
        r.agent.on_resume()
        assert r.free() == 2
        await r.poked()  # a polling link asks for work again at once
        r.agent.on_task_available("t1")
        assert (await r.result())[0] == "t1"


async def test_a_drain_lets_running_tasks_finish(tmp_path: Path) -> None:
    async with running_agent(tmp_path) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        r.agent.on_task_available("t1")
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
        r.agent.on_task_available("t1")
        assert r.manager.acquired == []


@pytest.mark.parametrize("max_tasks", [1, 4])
async def test_load_is_running_over_capacity(tmp_path: Path, max_tasks: int) -> None:
    async with running_agent(tmp_path, max_tasks=max_tasks) as r:
        r.manager.scripts["t1"] = RUNS_UNTIL_CANCELLED
        r.agent.on_task_available("t1")
        assert await r.started() == "t1"
        assert r.agent.heartbeat_state() == (["t1"], max_tasks - 1, 1 / max_tasks)
        r.agent.on_cancel("t1")
        await r.result()
