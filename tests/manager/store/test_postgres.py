"""What only the PostgreSQL store does: replicas racing, migrations under a lock, NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from manager.records import AttemptRecord
from manager.store.base import StoreError
from manager.store.postgres import PostgresStore
from manager.store.postgres_listen import Listener
from manager.store.sql.dialect import Dialect, render
from manager.store.sql.tasks import tasks_in_states_sql
from shared.protocol import TaskState
from tests.manager.conftest import StoreMaker
from tests.manager.store.test_store import ACQUIRE, WINDOW, task

# Every wait is bounded: a lost notification fails the test instead of hanging it.
WAIT = 5.0


@asynccontextmanager
async def opened(pg: StoreMaker, **kwargs: Any) -> AsyncIterator[PostgresStore]:
    store = pg.postgres(**kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def collect(into: list[str], when: asyncio.Event) -> Callable[[str], None]:
    def callback(payload: str) -> None:
        into.append(payload)
        when.set()

    return callback


# --- claims across replicas ----------------------------------------------------------------


async def test_twenty_concurrent_acquires_across_two_replicas_let_exactly_one_win(
    pg: StoreMaker,
) -> None:
    async with opened(pg) as a, opened(pg) as b:
        await a.insert_task(task(), idempotency_window=WINDOW)
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).update_task(
                    "task_1",
                    expect_state=TaskState.QUEUED,
                    expect_attempt=0,
                    changes={**ACQUIRE, "delegate_id": f"dlg_{i}"},
                    start_attempt=AttemptRecord("task_1", 1, f"dlg_{i}", 1_010.0),
                )
                for i in range(20)
            )
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert [x.delegate_id for x in await b.attempts("task_1")] == [winners[0].delegate_id]


async def test_concurrent_submits_with_one_idempotency_key_make_one_task(pg: StoreMaker) -> None:
    async with opened(pg) as a, opened(pg) as b:
        results = await asyncio.gather(
            *(
                (a if i % 2 else b).insert_task(
                    task(f"task_{i}", idempotency_key="deploy-42"), idempotency_window=WINDOW
                )
                for i in range(10)
            )
        )
    assert sum(created for _, created in results) == 1
    assert len({t.id for t, _ in results}) == 1
    assert len(await pg.fetch("SELECT id FROM tasks")) == 1


async def test_open_tasks_are_read_through_the_partial_index(pg: StoreMaker) -> None:
    async with opened(pg) as store:
        await store.insert_task(task("task_q"), idempotency_window=WINDOW)
    await pg.fetch(
        "INSERT INTO tasks(id, type, state, payload, selectors, timeout_s, queue_timeout_s,"
        " max_attempts, created_at)"
        " SELECT 'done_' || g, 'shell', 'succeeded', '{}', '[]', 600, 300, 1, g"
        " FROM generate_series(1, 20000) AS g"
    )
    await pg.fetch("ANALYZE tasks")
    sql, _ = render(tasks_in_states_sql([TaskState.QUEUED, TaskState.RUNNING]), Dialect.POSTGRES)
    plan = "\n".join(r[0] for r in await pg.fetch(f"EXPLAIN {sql}"))
    assert "tasks_open" in plan, plan


# --- migrations ----------------------------------------------------------------------------


async def test_stores_opening_together_on_an_empty_schema_all_succeed(pg: StoreMaker) -> None:
    stores = [pg.postgres() for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await stores[0].get_setting("x") is None
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert await pg.schema_versions() == [v for v, _ in pg.migrations]


# --- errors --------------------------------------------------------------------------------


async def test_open_with_no_server_raises_store_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(StoreError):
        await store.open()


async def test_a_database_failure_is_a_store_error(pg: StoreMaker) -> None:
    async with opened(pg) as store:
        await pg.fetch("DROP TABLE settings")
        with pytest.raises(StoreError):
            await store.get_setting("x")


# --- LISTEN / NOTIFY -----------------------------------------------------------------------


async def test_notify_from_one_store_reaches_a_listener_on_another(pg: StoreMaker) -> None:
    got: list[str] = []
    arrived = asyncio.Event()
    channel = f"wake_{pg.schema}"
    async with opened(pg) as listener, opened(pg) as sender:
        await listener.listen(channel, collect(got, arrived))
        await sender.notify(channel, "task_1")
        async with asyncio.timeout(WAIT):
            await arrived.wait()
    assert got == ["task_1"]


async def test_listener_ignores_other_channels(pg: StoreMaker) -> None:
    got: list[str] = []
    arrived = asyncio.Event()
    async with opened(pg) as store:
        await store.listen(f"a_{pg.schema}", collect(got, arrived))
        await store.notify(f"b_{pg.schema}", "not for you")
        await store.notify(f"a_{pg.schema}", "for you")
        async with asyncio.timeout(WAIT):
            await arrived.wait()
    assert got == ["for you"]


async def test_a_failing_callback_does_not_stop_the_others(pg: StoreMaker) -> None:
    def broken(_payload: str) -> None:
        raise RuntimeError("boom")

    got: list[str] = []
    arrived = asyncio.Event()
    channel = f"wake_{pg.schema}"
    async with opened(pg) as store:
        await store.listen(channel, broken)
        await store.listen(channel, collect(got, arrived))
        await store.notify(channel, "x")
        async with asyncio.timeout(WAIT):
            await arrived.wait()
    assert got == ["x"]


async def test_listener_reconnects_after_its_connection_is_killed(pg: StoreMaker) -> None:
    restored = asyncio.Event()
    got: list[str] = []
    arrived = asyncio.Event()
    channel = f"wake_{pg.schema}"
    async with opened(
        pg, on_listen_reconnect=restored.set, listen_reconnect_delays=(0.01,)
    ) as store:
        await store.listen(channel, collect(got, arrived))
        pid = store._listener.server_pid
        assert pid is not None
        await pg.fetch("SELECT pg_terminate_backend($1)", pid)
        async with asyncio.timeout(WAIT):
            await restored.wait()
        assert store._listener.server_pid not in (None, pid)
        await store.notify(channel, "after")
        async with asyncio.timeout(WAIT):
            await arrived.wait()
    assert got == ["after"]


async def test_listen_before_open_raises_store_error(pg: StoreMaker) -> None:
    with pytest.raises(StoreError):
        await pg.postgres().listen("x", lambda _payload: None)


async def test_close_ends_the_listen_connection(pg: StoreMaker) -> None:
    async with opened(pg) as store:
        await store.listen(f"wake_{pg.schema}", lambda _payload: None)
        assert store._listener.server_pid is not None
    assert store._listener.server_pid is None


# --- the LISTEN supervisor, with a connection that stops answering -------------------------


class SilentConnection:
    """Accepts LISTEN, then never answers a query: a peer gone without closing the socket."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.terminated = False

    async def add_listener(self, channel: str, callback: Any) -> None:
        pass

    def add_termination_listener(self, callback: Any) -> None:
        pass

    async def fetchval(self, sql: str) -> Any:
        await asyncio.Event().wait()

    def get_server_pid(self) -> int:
        return self.pid

    def terminate(self) -> None:
        self.terminated = True


async def test_listener_replaces_a_connection_that_stops_answering_probes() -> None:
    made: list[SilentConnection] = []

    async def connect() -> SilentConnection:
        made.append(SilentConnection(pid=len(made) + 1))
        return made[-1]

    restored = asyncio.Event()
    listener = Listener(
        connect, check_interval=0.01, reconnect_delays=(0.0,), on_reconnect=restored.set
    )
    try:
        assert await listener.listen("wake", lambda _payload: None)
        async with asyncio.timeout(WAIT):
            await restored.wait()
        assert made[0].terminated
        assert listener.server_pid == 2
    finally:
        await listener.close()
