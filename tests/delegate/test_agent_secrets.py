"""The agent's task pipeline with managed secrets: assignment, resolve, mask, run, report.

The manager is a test double of ManagerApi; the agent is handed a prepared assignment
and records what the agent ships; the channel holds no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from delegate.agent import Agent
from delegate.config import DelegateConfig
from delegate.link.api import ManagerApi
from delegate.link.stream import ChannelEvents
from shared.limits import Timings
from shared.masking import MASK, Masker
from shared.protocol import (
    AcquireResponse,
    LogBatch,
    LogBatchAck,
    LogLine,
    RegisterRequest,
    ResultAck,
    ShellPayload,
    TaskResult,
    TaskState,
)
from shared.sealing import seal
from shared.workload_identity import request_context
from tests.delegate.secret_helpers import DelegateKey, acquire, builtin, delegate_key

MASKED = MASK.decode()
SECRET = "agent-s3cret-value"


class FakeManager(ManagerApi):
    def __init__(self, key: DelegateKey, answer: AcquireResponse) -> None:
        registration = RegisterRequest(
            name="d1",
            hostname="host",
            version="test",
            protocol_version=1,
            capacity=1,
            task_types=[],
            public_key=key.public,
        )
        super().__init__(
            "https://manager.invalid",
            token="t",
            registration=registration,
            ssl_context=ssl.create_default_context(),
        )
        self.answer = answer
        self.lines: list[LogLine] = []
        self.results: asyncio.Queue[TaskResult] = asyncio.Queue()

    async def post_logs(self, task_id: str, batch: LogBatch) -> LogBatchAck:
        self.lines.extend(batch.lines)
        return LogBatchAck(accepted=len(batch.lines))

    async def post_result(self, task_id: str, result: TaskResult) -> ResultAck:
        self.results.put_nowait(result)
        return ResultAck(state=TaskState(result.status), recorded=True)


class IdleLink:
    """Holds no connection; says when the agent has started it (its outbox is ready)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def run(self, events: ChannelEvents) -> None:
        self.started.set()
        await asyncio.Event().wait()

    def poke(self) -> None:
        pass


@dataclass
class Running:
    manager: FakeManager
    process_masker: Masker

    async def result(self) -> TaskResult:
        return await asyncio.wait_for(self.manager.results.get(), 30)

    def texts(self) -> list[str]:
        return [line.text for line in self.manager.lines]


@contextlib.asynccontextmanager
async def agent_with(
    key: DelegateKey, answer: AcquireResponse, data_dir: Path
) -> AsyncIterator[Running]:
    manager = FakeManager(key, answer)
    process_masker = Masker()
    timings = Timings().scaled(0.01)
    config = DelegateConfig(manager_url=manager.base_url, token="t", name="d1", data_dir=data_dir)
    channel = IdleLink()
    agent = Agent(
        config,
        manager,
        link=channel,
        private_key=key.private,
        timings=timings,
        process_masker=process_masker,
    )
    stop, force = asyncio.Event(), asyncio.Event()
    runner = asyncio.create_task(agent.run(stop, force))
    await channel.started.wait()
    # As the channel does with a pushed assignment: take its slot, ack, then run it.
    assert agent.on_assigned(answer) is None
    agent.run_assigned(answer)
    try:
        yield Running(manager, process_masker)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


@pytest.fixture
def key() -> DelegateKey:
    return delegate_key()


async def test_resolved_secret_runs_masked_and_joins_the_process_masker(
    key: DelegateKey, tmp_path: Path
) -> None:
    payload = ShellPayload(
        script='echo "${secrets.getValue("db-pass")}"; printf %s "$PW" | base64',
        env={"PW": '${secrets.getValue("db-pass")}'},
    )
    answer = acquire(payload, [builtin(key, "db-pass", SECRET.encode())])

    async with agent_with(key, answer, tmp_path) as running:
        result = await running.result()

    assert (result.status, result.exit_code) == ("succeeded", 0)
    assert running.texts() == [MASKED, MASKED]
    assert running.process_masker.mask_text(SECRET) == MASKED


async def test_unavailable_secret_fails_the_task_before_it_runs(
    key: DelegateKey, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    payload = ShellPayload(script=f'touch {marker}; echo ${{secrets.getValue("db-pass")}}')
    answer = acquire(payload, [], unavailable={"db-pass": "no such secret"})

    async with agent_with(key, answer, tmp_path / "data") as running:
        result = await running.result()

    assert result.status == "failed"
    assert result.error == 'secret "db-pass": no such secret'
    assert result.exit_code is None
    assert not marker.exists()


async def test_value_too_short_to_mask_is_warned_about_in_the_task_log(
    key: DelegateKey, tmp_path: Path
) -> None:
    payload = ShellPayload(script='test "${secrets.getValue("pin")}" = 123')
    answer = acquire(payload, [builtin(key, "pin", b"123")])

    async with agent_with(key, answer, tmp_path) as running:
        result = await running.result()

    assert result.status == "succeeded"
    assert running.texts() == [
        "warning: a value of 3 bytes is too short to mask and may show in this log"
    ]


async def test_task_directories_left_by_an_earlier_run_are_removed_at_start(
    key: DelegateKey, tmp_path: Path
) -> None:
    left = tmp_path / "work" / "task-abc123" / "secrets"
    left.mkdir(parents=True)
    (left / "TETHER_SSH_DEPLOY_KEY_FILE").write_text("old key")
    answer = acquire(ShellPayload(script="true"))

    async with agent_with(key, answer, tmp_path) as running:
        result = await running.result()

    assert result.status == "succeeded"
    assert list((tmp_path / "work").iterdir()) == []


async def test_an_attempts_identity_credential_leaves_the_process_masker_when_it_is_over(
    key: DelegateKey, tmp_path: Path
) -> None:
    # The delegate's own log masks an attempt's workload-identity credential while it runs;
    # kept after, the process masker grew by one credential per attempt ever run.
    value = "attempt-scoped-credential-9f2c"
    answer = acquire(ShellPayload(script='printf %s "$TETHER_ID_TOKEN_REQUEST_TOKEN"'))
    answer = answer.model_copy(
        update={
            "id_token_request": seal(
                key.public,
                value.encode(),
                context=request_context(answer.task.id, answer.attempt),
            )
        }
    )
    async with agent_with(key, answer, tmp_path) as running:
        baseline = running.process_masker.patterns
        result = await running.result()

    assert (result.status, result.exit_code) == ("succeeded", 0)
    assert running.texts() == [MASKED]  # masked in the task's log while it ran
    assert running.process_masker.mask_text(value) == value
    assert running.process_masker.patterns == baseline
