"""The assigner's own cost: process CPU per task of :class:`~manager.core.assignment.Assigner`.

In-process, no store and no sockets: N delegates spread over several eligibility classes
(selectors, and token scopes over an application or an environment type), and a loop of
queued -> push -> ack -> result per task. Two loads:

- **saturated**: more tasks than slots. Every slot is busy and as many tasks again wait;
  each result frees a slot (a fill: the oldest waiting task that delegate may take), and a
  new task is queued (a place that finds no free slot and waits).
- **unsaturated**: every delegate holds half its capacity in leases listed at connect; each
  new task is placed at once, then acked and finished.

Tasks are spread over the classes at random (seeded); one in 50 names a delegate by id. The
clock moves 1 ms a task and the assigner is ticked every 100 tasks, as the manager would.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from manager.bench.common import load_average
from manager.bench.options import AssignerOptions
from manager.core.assignment import Action, Assigner, Push, Queued
from manager.core.eligibility import DelegateFacts, DelegateScope, Place, TaskFacts
from manager.schemas.grants import EnvType

__all__ = ["run_assigner_bench"]

ACK_WITHIN = 30.0
TICK_EVERY = 100
PINNED_EVERY = 50
ENV_TYPE: EnvType = "non_production"


def _delegate(n: int, classes: int) -> DelegateFacts:
    c = n % classes
    if c == 0:
        selectors: frozenset[str] = frozenset()
        scope = DelegateScope()
    else:
        selectors = frozenset({f"pool{c}"})
        scope = (
            DelegateScope(),
            DelegateScope(apps=frozenset({f"app_{c}"})),
            DelegateScope(env_types=frozenset({ENV_TYPE})),
        )[c % 3]
    return DelegateFacts(
        id=f"dlg_{n}",
        name=f"d{n}",
        selectors=selectors,
        task_types=frozenset({"shell"}),
        scope=scope,
    )


class _Tasks:
    """New tasks of random classes: class 0 runs on any account-wide delegate, class c on
    the delegates offering ``pool<c>`` whose scope covers ``env_<c>`` (non-production)."""

    def __init__(self, opts: AssignerOptions) -> None:
        self._rng = random.Random(opts.seed)
        self._opts = opts
        self._n = 0
        self._facts = [TaskFacts("shell", (), None)] + [
            TaskFacts("shell", (f"pool{c}",), Place(f"app_{c}", f"env_{c}", ENV_TYPE, False))
            for c in range(1, opts.classes)
        ]

    def next(self) -> Queued:
        self._n += 1
        if self._n % PINNED_EVERY == 0:
            named = self._rng.randrange(self._opts.delegates)
            facts = TaskFacts("shell", (f"dlg_{named}",), None)  # by id: a name pins nothing
        else:
            facts = self._facts[self._rng.randrange(self._opts.classes)]
        return Queued(f"tsk_{self._n}", facts)


def _pushes(actions: list[Action], into: deque[Push]) -> None:
    into.extend(a for a in actions if isinstance(a, Push))


def _connect(opts: AssignerOptions, a: Assigner, held: int) -> None:
    for n in range(opts.delegates):
        leases = [f"old_{n}_{i}" for i in range(held)]
        a.connected(_delegate(n, opts.classes), opts.capacity, f"key_{n}", 0.0, held=leases)


def _saturated(opts: AssignerOptions) -> tuple[float, int]:
    a = Assigner(ack_within=ACK_WITHIN)
    _connect(opts, a, 0)
    tasks = _Tasks(opts)
    sent: deque[Push] = deque()
    for _ in range(2 * opts.delegates * opts.capacity):
        _pushes(a.queued(tasks.next(), 0.0), sent)
    done = 0
    now = 0.0
    c0 = time.process_time()
    for i in range(opts.tasks):
        if not sent:
            break  # nothing running: every task left was judged ineligible everywhere
        now += 0.001
        p = sent.popleft()
        a.ack(p.task_id, p.delegate_id, p.attempt, now)
        _pushes(a.result(p.task_id, p.delegate_id, p.attempt, now), sent)
        _pushes(a.queued(tasks.next(), now), sent)
        done += 1
        if i % TICK_EVERY == 0:
            _pushes(a.tick(now), sent)
    return time.process_time() - c0, done


def _unsaturated(opts: AssignerOptions) -> tuple[float, int]:
    a = Assigner(ack_within=ACK_WITHIN)
    _connect(opts, a, opts.capacity // 2)
    tasks = _Tasks(opts)
    sent: deque[Push] = deque()
    done = 0
    now = 0.0
    c0 = time.process_time()
    for i in range(opts.tasks):
        now += 0.001
        _pushes(a.queued(tasks.next(), now), sent)
        while sent:
            p = sent.popleft()
            a.ack(p.task_id, p.delegate_id, p.attempt, now)
            _pushes(a.result(p.task_id, p.delegate_id, p.attempt, now), sent)
            done += 1
        if i % TICK_EVERY == 0:
            _pushes(a.tick(now), sent)
    return time.process_time() - c0, done


def run_assigner_bench(opts: AssignerOptions) -> dict[str, Any]:
    load_start = load_average()
    out: dict[str, Any] = {
        "bench": "assigner",
        "delegates": opts.delegates,
        "classes": opts.classes,
        "capacity": opts.capacity,
        "tasks": opts.tasks,
    }
    for name, loop in (("saturated", _saturated), ("unsaturated", _unsaturated)):
        cpu, done = loop(opts)
        out[f"{name}_completed"] = done
        # CPU, not wall time: on a shared machine the wall clock mostly measures neighbours.
        out[f"{name}_us_per_task"] = round(cpu / max(done, 1) * 1e6, 2)
    out["loadavg_1m"] = {"start": load_start, "end": load_average()}
    return out
