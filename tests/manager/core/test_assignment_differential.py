"""The indexed Assigner against the linear one it replaced: the same actions, event for event.

The linear reference (linear_assigner.py) scans every delegate to place a task and the whole
queue to fill a slot, which is the specification of the choice (least loaded, then least
recently pushed, then id; the oldest task a freed slot may take). The indexed one keeps
delegates in heaps per eligibility class and the queue per task class; any stale entry, a
missed re-index or a wrong class verdict shows here as a different action.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from manager.core.assignment import Action, Assigner, Push, Queued
from manager.core.eligibility import (
    NOTHING,
    DelegateFacts,
    DelegateScope,
    Place,
    TaskFacts,
    refusal_of,
)
from tests.manager.core.linear_assigner import LinearAssigner

ACK_WITHIN = 5.0
NAMES = ("a", "b", "c", "d", "e")

SCOPES = (
    DelegateScope(),
    DelegateScope(apps=frozenset({"app_1"})),
    DelegateScope(envs=frozenset({"env_3"})),
    DelegateScope(env_types=frozenset({"production"})),
    NOTHING,
)
PLACES = (
    None,
    Place("app_1", "env_1", "non_production", False),
    Place("app_1", "env_2", "production", True),
    Place("app_2", "env_3", "production", False),
)
# Selectors a task may ask for: offered ones, a delegate's name, a delegate's id.
TASK_SELECTORS = ((), ("gpu",), ("eu",), ("gpu", "eu"), ("c",), ("dlg_b",), ("gpu", "d"))

facts_variant = st.tuples(
    st.sets(st.sampled_from(("gpu", "eu"))),
    st.sampled_from(range(len(SCOPES))),
    st.booleans(),  # also runs "capability" tasks
)

pick = st.integers(0, 60)
op = st.one_of(
    st.tuples(
        st.just("connect"),
        st.sampled_from(NAMES),
        st.integers(0, 1),  # which of its two fact variants
        st.sampled_from(("k1", "k2")),
        st.lists(st.one_of(pick, st.just(-1)), max_size=2),  # tasks its hello lists
    ),
    st.tuples(st.just("lost"), st.sampled_from(NAMES)),
    st.tuples(st.just("disconnect"), st.sampled_from(NAMES)),
    st.tuples(st.just("capacity"), st.sampled_from(NAMES), st.integers(0, 3)),
    st.tuples(st.just("drain"), st.sampled_from(NAMES), st.booleans()),
    st.tuples(
        st.just("queue"),
        st.sampled_from(range(len(TASK_SELECTORS))),
        st.sampled_from(range(len(PLACES))),
        st.sampled_from(("shell", "shell", "capability")),
    ),
    st.tuples(st.just("ack"), pick, st.integers(-1, 1)),
    st.tuples(st.just("decline"), pick, st.booleans()),
    st.tuples(st.just("result"), pick, st.integers(-1, 1)),
    st.tuples(st.just("lease_lost"), pick),
    st.tuples(st.just("stale_notice"), pick),
    st.tuples(st.just("gone"), pick),
    st.tuples(st.just("tick"), st.floats(0.0, 4.0)),
)


def _facts(name: str, variant: tuple[set[str], int, bool]) -> DelegateFacts:
    selectors, scope, capability = variant
    types = {"shell", "capability"} if capability else {"shell"}
    return DelegateFacts(
        id=f"dlg_{name}",
        name=name,
        selectors=frozenset(selectors),
        task_types=frozenset(types),
        scope=SCOPES[scope],
    )


def _no_task_left_behind(a: Assigner) -> None:
    """The invariant, read from the indexed one's own state: no queued task that an open,
    eligible delegate which has not let it pass this round could take."""
    for task in a._queue.values():
        for seat in a._seats.values():
            if not seat.open() or task.passed.get(seat.facts.id) == seat.epoch:
                continue
            f = task.facts
            assert refusal_of(seat.facts, f.type, f.selectors, f.place) is not None, (
                task.id,
                seat.facts.id,
            )


@settings(max_examples=250, deadline=None)
@given(
    st.lists(op, min_size=20, max_size=120),
    st.fixed_dictionaries({n: st.tuples(facts_variant, facts_variant) for n in NAMES}),
)
def test_the_indexed_assigner_acts_as_the_linear_one(
    ops: list[tuple[Any, ...]], variants: dict[str, tuple[Any, Any]]
) -> None:
    new = Assigner(ack_within=ACK_WITHIN)
    ref = LinearAssigner(ack_within=ACK_WITHIN)
    now = 0.0
    capacity = dict.fromkeys(NAMES, 2)
    facts: dict[str, DelegateFacts] = {n: _facts(n, variants[n][0]) for n in NAMES}
    queued: dict[str, Queued] = {}
    sent: list[Push] = []

    def both(call: str, *args: Any, **kwargs: Any) -> None:
        got: list[Action] = getattr(new, call)(*args, **kwargs)
        want: list[Action] = getattr(ref, call)(*args, **kwargs)
        assert got == want, (call, args)
        sent.extend(x for x in got if isinstance(x, Push))

    def push(i: int) -> Push | None:
        return sent[i % len(sent)] if sent else None

    for step in ops:
        kind = step[0]
        if kind == "connect":
            name, variant, key, listed = step[1:]
            facts[name] = _facts(name, variants[name][variant])
            held = []
            for i in listed:
                p = push(i) if i >= 0 else None
                held.append(p.task_id if p is not None else f"tsk_old_{name}")
            both("connected", facts[name], capacity[name], key, now, held=held)
        elif kind == "lost":
            both("stream_lost", f"dlg_{step[1]}", now)
        elif kind == "disconnect":
            both("disconnected", f"dlg_{step[1]}", now)
        elif kind == "capacity":
            capacity[step[1]] = step[2]
            both("capacity", f"dlg_{step[1]}", step[2], now)
        elif kind == "drain":
            both("drain", f"dlg_{step[1]}", step[2], now)
        elif kind == "queue":
            selectors, place, type_ = TASK_SELECTORS[step[1]], PLACES[step[2]], step[3]
            q = Queued(f"tsk_{len(queued)}", TaskFacts(type_, selectors, place))
            queued[q.id] = q
            both("queued", q, now)
        elif kind == "tick":
            now += step[1]
            both("tick", now)
        elif (p := push(step[1])) is not None:
            if kind in ("ack", "result"):
                # Sometimes from an attempt before or after the one pushed.
                both(kind, p.task_id, p.delegate_id, p.attempt + step[2], now)
            elif kind == "decline":
                both("decline", p.task_id, p.delegate_id, p.attempt, now, full=step[2])
            elif kind == "lease_lost":
                both("queued", Queued(p.task_id, queued[p.task_id].facts, p.attempt), now)
            elif kind == "stale_notice":
                both("queued", Queued(p.task_id, queued[p.task_id].facts, 0), now)
            elif kind == "gone":
                both("gone", p.task_id, now)
        assert new.queue() == ref.queue()
        for task_id in queued:
            assert new.phase(task_id) == ref.phase(task_id)
            assert new.holder(task_id) == ref.holder(task_id)
            assert new.attempt(task_id) == ref.attempt(task_id)
        for name in NAMES:
            assert new.load(f"dlg_{name}") == ref.load(f"dlg_{name}")
        _no_task_left_behind(new)


def test_many_delegates_of_few_classes_agree_on_a_long_run() -> None:
    """Hundreds of delegates in a handful of classes, saturated: the heaps' order of choice
    (load ratio, last push, id) over many equal loads is the linear scan's."""
    new = Assigner(ack_within=ACK_WITHIN)
    ref = LinearAssigner(ack_within=ACK_WITHIN)
    for n in range(200):
        f = DelegateFacts(
            id=f"dlg_{n:03d}",
            name=f"d{n}",
            selectors=frozenset({f"pool{n % 4}"}),
            task_types=frozenset({"shell"}),
            scope=SCOPES[n % 3],
        )
        assert new.connected(f, 1 + n % 3, f"k{n}", 0.0) == ref.connected(
            f, 1 + n % 3, f"k{n}", 0.0
        )
    pending: list[Push] = []
    for i in range(3000):
        facts = TaskFacts("shell", (f"pool{i % 4}",), PLACES[i % len(PLACES)])
        q = Queued(f"tsk_{i}", facts)
        got = new.queued(q, i * 0.001)
        assert got == ref.queued(q, i * 0.001)
        pending += [x for x in got if isinstance(x, Push)]
        if i % 3 == 0 and pending:
            p = pending.pop(0)
            got = new.result(p.task_id, p.delegate_id, p.attempt, i * 0.001)
            assert got == ref.result(p.task_id, p.delegate_id, p.attempt, i * 0.001)
            pending += [x for x in got if isinstance(x, Push)]
    assert new.queue() == ref.queue()
    assert len(new.queue()) > 0  # it ran saturated
