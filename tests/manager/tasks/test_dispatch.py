from __future__ import annotations

import pytest

from manager.records import DelegateRecord
from manager.tasks.dispatch import FIRST_FANOUT, Dispatcher, QueuedTask
from manager.tasks.hub import Hub, Session

LOST_AFTER = 30.0
WIDEN_AFTER = 0.5


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    return Hub(lost_after=LOST_AFTER, clock=clock)


@pytest.fixture
def dispatcher(hub: Hub, clock: FakeClock) -> Dispatcher:
    return Dispatcher(hub, widen_after=WIDEN_AFTER, tick=1.0, clock=clock)


def connect(
    hub: Hub,
    name: str,
    *,
    capacity: int = 4,
    running: int = 0,
    selectors: tuple[str, ...] = ("linux",),
    task_types: tuple[str, ...] = ("shell",),
) -> Session:
    """A polling session (no WebSocket), so hints land in ``session.inbox``."""
    record = DelegateRecord(
        id=f"dlg_{name}",
        name=name,
        token_id="tok_1",
        hostname=f"{name}.internal",
        version="0.1.0",
        protocol_version=1,
        selectors=selectors,
        task_types=task_types,
        capacity=capacity,
        public_key=f"{name:x<44}",
        created_at=0.0,
        last_seen=0.0,
    )
    session = hub.session(record)
    for i in range(running):
        hub.leases.grant(f"task_held_{name}_{i}", session.id)
    return session


def queued(
    task_id: str = "task_1",
    *,
    created_at: float = 900.0,
    selectors: tuple[str, ...] = (),
    type: str = "shell",
) -> QueuedTask:
    return QueuedTask(id=task_id, type=type, selectors=selectors, created_at=created_at)


def hinted(*sessions: Session) -> dict[str, list[str]]:
    return {s.delegate.name: list(s.inbox) for s in sessions}


# --- offer ---------------------------------------------------------------------------------


def test_new_task_is_hinted_to_the_first_fanout_least_loaded(
    hub: Hub, dispatcher: Dispatcher
) -> None:
    busy = connect(hub, "busy", running=3)
    idle = connect(hub, "idle", running=0)
    half = connect(hub, "half", running=2)
    light = connect(hub, "light", running=1)
    dispatcher.enqueue(queued())
    dispatcher.offer()
    assert FIRST_FANOUT == 2
    assert hinted(busy, idle, half, light) == {
        "busy": [],
        "idle": ["task_1"],
        "half": [],
        "light": ["task_1"],
    }


def test_hint_to_a_polling_delegate_wakes_its_long_poll(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued())
    dispatcher.offer()
    assert session.wake.is_set()


def test_task_is_not_hinted_again_before_widen_after(
    hub: Hub, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    sessions = [connect(hub, name) for name in ("a", "b", "c")]
    dispatcher.enqueue(queued())
    dispatcher.offer()
    clock.now += WIDEN_AFTER - 0.01
    dispatcher.offer()
    assert sum(len(s.inbox) for s in sessions) == FIRST_FANOUT


def test_task_not_taken_is_hinted_to_everyone_eligible_after_widen_after(
    hub: Hub, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    sessions = [connect(hub, name, capacity=8, running=i) for i, name in enumerate("abcde")]
    dispatcher.enqueue(queued())
    dispatcher.offer()
    for s in sessions:
        s.inbox.clear()
    clock.now += WIDEN_AFTER
    dispatcher.offer()
    assert hinted(*sessions) == {name: ["task_1"] for name in "abcde"}


def test_widening_leaves_out_ineligible_delegates(
    hub: Hub, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    connect(hub, "a")
    wrong_selectors = connect(hub, "win", selectors=("windows",))
    wrong_type = connect(hub, "http", task_types=("http",))
    full = connect(hub, "full", capacity=2, running=2)
    draining = connect(hub, "drain")
    draining.draining = True
    dispatcher.enqueue(queued(selectors=("linux",)))
    dispatcher.offer()
    clock.now += WIDEN_AFTER
    dispatcher.offer()
    assert hinted(wrong_selectors, wrong_type, full, draining) == {
        "win": [],
        "http": [],
        "full": [],
        "drain": [],
    }


def test_task_pinned_by_delegate_name_is_hinted_only_to_it(
    hub: Hub, dispatcher: Dispatcher
) -> None:
    a, b = connect(hub, "build-01"), connect(hub, "build-02")
    dispatcher.enqueue(queued(selectors=("build-02",)))
    dispatcher.offer()
    assert hinted(a, b) == {"build-01": [], "build-02": ["task_1"]}


def test_silent_delegate_gets_no_hints(hub: Hub, dispatcher: Dispatcher, clock: FakeClock) -> None:
    gone = connect(hub, "gone")
    clock.now += LOST_AFTER + 1.0
    alive = connect(hub, "alive")
    dispatcher.enqueue(queued())
    dispatcher.offer()
    assert hinted(gone, alive) == {"gone": [], "alive": ["task_1"]}


def test_one_round_hints_no_more_tasks_than_a_delegate_has_free_slots(
    hub: Hub, dispatcher: Dispatcher
) -> None:
    session = connect(hub, "a", capacity=3, running=1)
    for i in range(4):
        dispatcher.enqueue(queued(f"task_{i}", created_at=900.0 + i))
    dispatcher.offer()
    assert list(session.inbox) == ["task_0", "task_1"]


def test_tasks_beyond_free_slots_go_to_other_delegates(hub: Hub, dispatcher: Dispatcher) -> None:
    small = connect(hub, "small", capacity=1)
    big = connect(hub, "big", capacity=8)
    for i in range(3):
        dispatcher.enqueue(queued(f"task_{i}", created_at=900.0 + i))
    dispatcher.offer()
    assert hinted(small, big) == {"small": ["task_0"], "big": ["task_0", "task_1", "task_2"]}


def test_task_without_an_eligible_delegate_waits_for_one(hub: Hub, dispatcher: Dispatcher) -> None:
    dispatcher.enqueue(queued(selectors=("gpu",)))
    dispatcher.offer()
    gpus = [connect(hub, f"gpu{i}", selectors=("gpu",)) for i in range(3)]
    dispatcher.offer()
    # Still its first round: a few delegates, not all, although time did not pass.
    assert sum(len(s.inbox) for s in gpus) == FIRST_FANOUT


def test_kick_does_not_hint_a_task_again_while_its_hint_is_fresh(
    hub: Hub, dispatcher: Dispatcher
) -> None:
    sessions = [connect(hub, name) for name in "abc"]
    dispatcher.enqueue(queued())
    dispatcher.offer()
    dispatcher.kick()
    dispatcher.offer()
    assert sum(len(s.inbox) for s in sessions) == FIRST_FANOUT


def test_a_freed_hint_lets_the_next_task_go_out(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a", capacity=1)
    dispatcher.enqueue(queued("task_1", created_at=100.0))
    dispatcher.enqueue(queued("task_2", created_at=101.0))
    dispatcher.offer()
    assert list(session.inbox) == ["task_1"]
    dispatcher.dequeue("task_1")  # acquired and finished elsewhere: its hint is spent
    dispatcher.offer()
    assert list(session.inbox) == ["task_1", "task_2"]


def test_offer_hints_oldest_task_first(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a", capacity=1)
    dispatcher.enqueue(queued("task_old", created_at=100.0))
    dispatcher.enqueue(queued("task_new", created_at=200.0))
    dispatcher.offer()
    assert list(session.inbox) == ["task_old"]


def test_an_expired_hint_goes_back_ahead_of_newer_tasks(
    hub: Hub, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    session = connect(hub, "a", capacity=1)
    dispatcher.enqueue(queued("task_old", created_at=100.0))
    dispatcher.offer()
    for i in range(50):
        dispatcher.enqueue(queued(f"task_new_{i}", created_at=200.0 + i))
    dispatcher.offer()
    assert list(session.inbox) == ["task_old"]
    # Nobody took it: once the hint expires, the old task is offered again before the 50.
    session.inbox.clear()
    clock.now += WIDEN_AFTER
    dispatcher.offer()
    assert list(session.inbox) == ["task_old"]


def test_only_expired_hints_are_widened(hub: Hub, dispatcher: Dispatcher, clock: FakeClock) -> None:
    sessions = [connect(hub, name, capacity=8) for name in "abcd"]
    dispatcher.enqueue(queued("task_1"))
    dispatcher.offer()
    clock.now += WIDEN_AFTER / 2
    dispatcher.enqueue(queued("task_2"))
    dispatcher.offer()
    for s in sessions:
        s.inbox.clear()
    clock.now += WIDEN_AFTER / 2
    dispatcher.offer()
    # task_1's hint expired and went to everyone; task_2's is still fresh.
    assert hinted(*sessions) == {name: ["task_1"] for name in "abcd"}


# --- pick_for and dequeue ------------------------------------------------------------------


def test_pick_for_returns_a_hinted_task_first(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued("task_old", created_at=100.0))
    dispatcher.enqueue(queued("task_new", created_at=200.0))
    session.inbox.append("task_new")
    assert dispatcher.pick_for(session) == "task_new"
    assert list(session.inbox) == []


def test_pick_for_skips_hints_for_tasks_no_longer_queued(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued("task_1"))
    session.inbox.extend(["task_taken", "task_1"])
    assert dispatcher.pick_for(session) == "task_1"


def test_pick_for_without_hints_returns_the_oldest_eligible_task(
    hub: Hub, dispatcher: Dispatcher
) -> None:
    session = connect(hub, "a", selectors=("linux",))
    dispatcher.enqueue(queued("task_gpu", created_at=100.0, selectors=("gpu",)))
    dispatcher.enqueue(queued("task_http", created_at=150.0, type="http"))
    dispatcher.enqueue(queued("task_linux", created_at=200.0, selectors=("linux",)))
    dispatcher.enqueue(queued("task_any", created_at=300.0))
    assert dispatcher.pick_for(session) == "task_linux"


def test_pick_for_with_nothing_eligible_is_none(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued(selectors=("gpu",)))
    assert dispatcher.pick_for(session) is None


def test_pick_for_a_full_delegate_is_none(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a", capacity=1, running=1)
    dispatcher.enqueue(queued())
    assert dispatcher.pick_for(session) is None


def test_pick_for_a_lost_session_is_none(
    hub: Hub, dispatcher: Dispatcher, clock: FakeClock
) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued())
    clock.now += LOST_AFTER + 1.0
    assert dispatcher.pick_for(session) is None


def test_pick_for_does_not_remove_the_task_from_the_queue(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued())
    dispatcher.pick_for(session)
    assert "task_1" in dispatcher.queued


def test_dequeued_task_is_not_picked(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued())
    session.inbox.append("task_1")
    dispatcher.dequeue("task_1")
    assert dispatcher.pick_for(session) is None


def test_dequeued_task_is_not_offered(hub: Hub, dispatcher: Dispatcher) -> None:
    session = connect(hub, "a")
    dispatcher.enqueue(queued())
    dispatcher.dequeue("task_1")
    dispatcher.offer()
    assert list(session.inbox) == []


def test_dequeue_of_unknown_task_is_harmless(dispatcher: Dispatcher) -> None:
    dispatcher.enqueue(queued())
    dispatcher.dequeue("task_other")
    assert list(dispatcher.queued) == ["task_1"]
