"""Soak: many delegates, many short tasks, random delegate kills, manager restarts and stalls.

Scale comes from ``TETHER_SOAK_SCALE``: ``ci`` (the default: 10 delegates, 500 tasks) or
``full`` (50 delegates, 5,000 tasks). ``TETHER_SOAK_SEED`` replays a run's kill plan.

Tasks go in through the API, concurrently, each with ``max_attempts`` 3 and an idempotency
key, so a submit retried across a manager restart can never make a second task. Each task
prints ``ran <its id> <nonce>`` once, then writes the nonce to ``$TETHER_OUTPUT``; every
tenth exits 3 on purpose, and every twentieth takes 3 s (longer than a lease) instead of a
moment. Faults come at fixed points of progress (tasks finished), not at
times, so a slow machine gets the same plan:

* a delegate is killed (SIGKILL) and a replacement started with its name and data dir,
  hence its key and delegate id: the running attempts' leases run out and they are retried;
* the manager is killed (SIGKILL) and restarted on the same data dir and port;
* the manager is frozen (SIGSTOP) until a delegate's stream notices that its heartbeats go
  unanswered (``lost_after``, longer than a lease), then let go (SIGCONT).

At the end, read back through the API, every task must be in a final state and consistent:
attempts numbered 1..n, every attempt but the last ended by a lost lease (nothing ran again
otherwise), at most one ``ran`` line per attempt, the last attempt's line present (and its
log without a gap in ``seq``) when it reported a result, and the recorded outputs carry that
attempt's nonce (the result is the last attempt's). No task exists that no submission
returned. The counts must add up, with ``lost`` (a task missing, not final, or missing a
line) and ``duplicated`` (a task or an attempt run twice without a lost lease) both 0, and
``healthy_failed`` too: an attempt may lose its lease only to a kill of its own delegate, never
to the manager's restarts or stalls.

The JSON summary line is printed even under capture. Delegates that exit on their own
(``delegate_crashes``) are listed there; they are not a failure of this test, whose subject
is tasks, but each one is a bug to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from manager.client import ApiError, ConnectionFailed, EndEvent, TetherClient
from manager.schemas.tasks import TaskSubmit, TaskView
from shared.protocol import FINAL_STATES, ShellPayload
from tests.e2e.harness import Cluster, Proc
from tests.faults.support import token, wait_for


@dataclass(frozen=True)
class Scale:
    delegates: int
    tasks: int
    delegate_kills: int
    manager_restarts: int
    manager_stalls: int
    timeout: float


SCALES = {
    "ci": Scale(
        delegates=10,
        tasks=500,
        delegate_kills=12,
        manager_restarts=3,
        manager_stalls=2,
        timeout=240,
    ),
    "full": Scale(
        delegates=50,
        tasks=5000,
        delegate_kills=40,
        manager_restarts=5,
        manager_stalls=5,
        timeout=3600,
    ),
}
SCALE_NAME = os.environ.get("TETHER_SOAK_SCALE", "ci")
SCALE = SCALES[SCALE_NAME]
SEED = int(os.environ.get("TETHER_SOAK_SEED", str(random.SystemRandom().randrange(1 << 30))))
MAX_ATTEMPTS = 3
FAIL_EXIT = 3
SUBMITTERS = 16
FOLLOWERS = 48
RAN = re.compile(r"^ran (\S+) (\d+)$")


def _script(fails: bool, long: bool) -> str:
    # A long task (3 s, twice the suite's lease) runs across a manager stall or restart.
    pause = "3" if long else "0.$((RANDOM % 4))"
    return (
        'n=$(( (RANDOM << 15) | RANDOM )); echo "ran $TETHER_TASK_ID $n"; '
        f'sleep {pause}; echo "NONCE=$n" >> "$TETHER_OUTPUT"; '
        f"exit {FAIL_EXIT if fails else 0}"
    )


def _fails(i: int) -> bool:
    return i % 10 == 7


def _long(i: int) -> bool:
    return i % 20 == 11


class Progress:
    """A counter that can be waited on: faults fire when enough tasks have finished."""

    def __init__(self) -> None:
        self.value = 0
        self._changed = asyncio.Condition()

    async def advance(self) -> None:
        async with self._changed:
            self.value += 1
            self._changed.notify_all()

    async def reach(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.value >= n)


@dataclass
class Fleet:
    """The delegates of the soak, each one replaceable under the same name and data dir."""

    cluster: Cluster
    tokens: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)
    # Delegates that exited on their own (not killed by the soak): name, status, last error.
    crashed: list[str] = field(default_factory=list)
    # When each name was killed (the wall clock, as the manager dates attempts).
    killed_at: dict[str, list[float]] = field(default_factory=dict)

    def note_crash(self, name: str) -> None:
        proc = self.procs[name]
        if proc.proc is not None and proc.proc.returncode is not None:
            errors = [e.get("error") for e in proc.events() if e.get("level") == "error"]
            self.crashed.append(f"{name} exited {proc.proc.returncode}: {errors[-1:]}")

    async def start(self, name: str) -> None:
        if name not in self.tokens:
            self.tokens[name] = await token(self.cluster, name)
        proc = await self.cluster.start_delegate(name, token=self.tokens[name], wait_mode=None)
        self.procs[name] = proc
        await wait_for(
            proc,
            "the delegate to hold its link",
            lambda e: e.get("event") == "channel mode" and e.get("mode") in ("stream", "polling"),
            timeout=120,
        )

    async def replace(self, name: str) -> None:
        self.note_crash(name)
        self.killed_at.setdefault(name, []).append(time.time())
        await self.procs[name].stop(signal.SIGKILL)
        await self.start(name)

    async def notice_a_stall(self) -> None:
        """Until one delegate says the manager stopped answering: a stream's heartbeats went
        unacknowledged for ``lost_after``, or a polled heartbeat failed."""
        marks = {name: len(proc.events()) for name, proc in self.procs.items()}
        noticed = {"no heartbeat ack; reconnecting", "heartbeat failed"}
        waits = [
            asyncio.create_task(
                wait_for(
                    proc,
                    "the manager's silence",
                    lambda e: e.get("event") in noticed,
                    after=marks[name],
                    timeout=120,
                )
            )
            for name, proc in self.procs.items()
        ]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            next(iter(done)).result()
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


@dataclass
class Run:
    cluster: Cluster
    api: TetherClient
    manager_up: asyncio.Event = field(default_factory=asyncio.Event)
    ids: dict[int, str] = field(default_factory=dict)
    finished: Progress = field(default_factory=Progress)
    kills: int = 0
    restarts: int = 0
    stalls: int = 0
    # Every fault with when it came (wall clock): a failure says which were near it.
    timeline: list[tuple[float, str]] = field(default_factory=list)

    async def retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``call`` until the manager answers it; failures while it restarts are expected."""
        for attempt in range(1, 1000):
            try:
                return await call()
            except (ConnectionFailed, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status < 500:
                    raise
                await self.manager_up.wait()
                # Retry backoff, not a wait for a condition: the manager is up again.
                await asyncio.sleep(min(1.0, 0.05 * attempt))
        raise AssertionError("the manager kept failing one call")

    async def submit(self, i: int) -> str:
        req = TaskSubmit(
            payload=ShellPayload(script=_script(_fails(i), _long(i))),
            max_attempts=MAX_ATTEMPTS,
            idempotency_key=f"soak-{SEED}-{i}",
            timeout_s=300,
            queue_timeout_s=3 * SCALE.timeout,
        )
        view: TaskView = await self.retrying(lambda: self.api.submit_task(req))
        self.ids[i] = view.id
        return view.id

    async def follow(self, task_id: str) -> None:
        """Until the task is final: its log stream ends with the task's final view."""

        async def until_end() -> None:
            async with contextlib.aclosing(self.api.follow_logs(task_id)) as events:
                async for event in events:
                    if isinstance(event, EndEvent):
                        return
            raise ConnectionFailed("the follow ended without the task's end")

        await self.retrying(until_end)
        await self.finished.advance()

    async def chaos(self, fleet: Fleet, rng: random.Random) -> None:
        plan = (
            ["delegate"] * SCALE.delegate_kills
            + ["manager"] * SCALE.manager_restarts
            + ["stall"] * SCALE.manager_stalls
        )
        rng.shuffle(plan)
        for k, fault in enumerate(plan):
            await self.finished.reach(int(SCALE.tasks * (0.05 + 0.8 * k / len(plan))))
            if fault == "manager":
                self.manager_up.clear()
                self.timeline.append((time.time(), "manager killed"))
                await self.cluster.restart_manager(signal.SIGKILL)
                self.timeline.append((time.time(), "manager up"))
                self.manager_up.set()
                self.restarts += 1
            elif fault == "stall":
                manager = self.cluster.manager
                assert manager is not None
                assert manager.proc is not None
                self.timeline.append((time.time(), "manager stopped"))
                manager.proc.send_signal(signal.SIGSTOP)
                try:
                    await fleet.notice_a_stall()
                finally:
                    manager.proc.send_signal(signal.SIGCONT)
                    self.timeline.append((time.time(), "manager continued"))
                self.stalls += 1
            else:
                name = rng.choice(sorted(fleet.procs))
                self.timeline.append((time.time(), f"{name} killed"))
                await fleet.replace(name)
                self.timeline.append((time.time(), f"{name} replaced"))
                self.kills += 1


@dataclass
class Tally:
    states: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    delegate_lost: int = 0
    lost_tasks: set[str] = field(default_factory=set)
    duplicated_tasks: set[str] = field(default_factory=set)
    # Tasks that lost a lease their own delegate's kill does not explain.
    healthy_failed_tasks: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.lost_tasks)

    @property
    def duplicated(self) -> int:
        return len(self.duplicated_tasks)

    def problem(self, kind: str, task_id: str, what: str) -> None:
        if kind == "lost":
            self.lost_tasks.add(task_id)
        elif kind == "duplicated":
            self.duplicated_tasks.add(task_id)
        elif kind == "healthy failed":
            self.healthy_failed_tasks.add(task_id)
        self.problems.append(f"{kind}: {task_id}: {what}")


def _check(
    i: int,
    task: TaskView,
    ran: dict[int, list[int]],
    seqs: dict[int, list[int]],
    tally: Tally,
    killed_at: dict[str, list[float]],
    timeline: list[tuple[float, str]],
) -> None:
    """One task's record against the guarantees; ``ran`` maps attempt -> the nonces it
    printed, ``seqs`` attempt -> the sequence numbers of its stored lines, ``killed_at``
    delegate name -> when it was killed."""
    tid = task.id
    for a in task.attempts:
        kills = killed_at.get(a.delegate_name or "", [])
        ended = a.finished_at if a.finished_at is not None else math.inf
        # A second of slack: the test's clock and the manager's are the same host's.
        if a.status == "lost" and not any(a.started_at - 1 <= k <= ended + 1 for k in kills):
            tally.problem(
                "healthy failed",
                tid,
                f"attempt {a.attempt} lost on {a.delegate_name}"
                + _near(timeline, a.started_at, ended, ran.get(a.attempt)),
            )
    if task.state not in FINAL_STATES:
        tally.problem("lost", tid, f"still {task.state.value}")
        return
    tally.states[task.state.value] += 1
    attempts = task.attempts
    if [a.attempt for a in attempts] != list(range(1, len(attempts) + 1)) or (
        task.attempt != len(attempts)
    ):
        tally.problem("inconsistent", tid, f"attempts {[a.attempt for a in attempts]}")
        return
    if len(attempts) > 1:
        tally.retried += 1
    # A withdrawn attempt was claimed and never acknowledged (declined, or its delegate's
    # process or session ended first): it never ran, and it does not count.
    counted = [a for a in attempts if a.status != "withdrawn"]
    if len(counted) > MAX_ATTEMPTS:
        tally.problem("duplicated", tid, f"{len(counted)} attempts")
    if any(a.status not in ("lost", "withdrawn") for a in attempts[:-1]):
        tally.problem("duplicated", tid, f"ran again without a lost lease: {attempts}")
    if any(ran.get(a.attempt) for a in attempts if a.status == "withdrawn"):
        tally.problem("duplicated", tid, f"a withdrawn attempt ran: {ran}")
    if sum(a.status == "succeeded" for a in attempts) > 1:
        tally.problem("duplicated", tid, "more than one attempt succeeded")
    if any(len(nonces) > 1 for nonces in ran.values()):
        tally.problem("duplicated", tid, f"an attempt ran more than once: {ran}")
    if set(ran) - {a.attempt for a in attempts}:
        tally.problem("inconsistent", tid, f"lines of unknown attempts: {sorted(ran)}")
    last = attempts[-1] if attempts else None
    if last is None:
        tally.problem("inconsistent", tid, f"{task.state.value} without an attempt")
    elif last.status == "lost":
        tally.delegate_lost += 1
        lost_for_good = ("failed", "delegate_lost", MAX_ATTEMPTS)
        if (task.state.value, task.error, len(counted)) != lost_for_good:
            tally.problem("inconsistent", tid, f"lost last attempt, yet {task.state.value}")
    else:
        # A result was recorded: it is the last attempt's, with its line and its nonce.
        expected = "failed" if _fails(i) else "succeeded"
        nonces = ran.get(last.attempt, [])
        if (task.state.value, last.status) != (expected, expected):
            tally.problem("inconsistent", tid, f"{task.state.value}/{last.status}, not {expected}")
        if len(nonces) != 1:
            tally.problem("lost", tid, f"the last attempt's 'ran' line is missing: {ran}")
        got = seqs.get(last.attempt, [])
        if got != list(range(len(got))):
            tally.problem("lost", tid, f"a gap in the last attempt's log: seqs {got}")
        elif task.outputs.get("NONCE") != str(nonces[0]):
            tally.problem("inconsistent", tid, "the recorded result is not the last attempt's")


def _near(
    timeline: list[tuple[float, str]], started: float, ended: float, ran: list[int] | None
) -> str:
    """What a healthy-failed attempt's message says of it, for the run that failed to be
    read without its processes' logs: whether it printed, and the faults around it, in
    seconds from the attempt's start."""
    near = [
        f"{at - started:+.2f}s {what}" for at, what in timeline if started - 5 <= at <= ended + 5
    ]
    return (
        f" (claimed, lost {ended - started:.2f}s later, it printed {len(ran or [])} line(s);"
        f" faults near: {', '.join(near) or 'none'})"
    )


async def _verify(run: Run, tally: Tally, killed_at: dict[str, list[float]]) -> None:
    slots = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with slots:
            tid = run.ids[i]
            task: TaskView = await run.retrying(lambda: run.api.get_task(tid))
            ran: dict[int, list[int]] = {}
            seqs: dict[int, list[int]] = {}
            cursor: str | None = None
            while True:
                page = await run.api.get_logs(tid, after=cursor)
                for line in page.lines:
                    seqs.setdefault(line.attempt, []).append(line.seq)
                    m = RAN.match(line.text)
                    if m is None:
                        continue
                    if m.group(1) != tid:
                        tally.problem("inconsistent", tid, f"a line of another task: {line.text}")
                    ran.setdefault(line.attempt, []).append(int(m.group(2)))
                if not page.lines or page.cursor == cursor:
                    break
                cursor = page.cursor
            _check(i, task, ran, seqs, tally, killed_at, run.timeline)

    await asyncio.gather(*(one(i) for i in sorted(run.ids)))
    for i in range(SCALE.tasks):
        if i not in run.ids:
            tally.problem("lost", f"#{i}", "never accepted by the manager")
    # Every task in the store is one of ours, once: a retried submit never made another.
    ours = set(run.ids.values())
    seen: set[str] = set()
    until: float | None = None
    while True:
        page = await run.api.list_tasks(until=until, limit=1000)
        fresh = [t for t in page if t.id not in seen]
        if not fresh:
            break
        seen.update(t.id for t in fresh)
        until = math.nextafter(min(t.created_at for t in page), math.inf)
    for extra in sorted(seen - ours):
        tally.problem("duplicated", extra, "a task no submission returned")
    for missing in sorted(ours - seen):
        tally.problem("lost", missing, "not in the task list")


@pytest.mark.timeout(SCALE.timeout + 60)
async def test_soak_loses_and_doubles_nothing_through_kills_and_restarts(
    running: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    fleet = Fleet(running)
    names = [f"soak-{n:02d}" for n in range(SCALE.delegates)]
    await asyncio.gather(*(fleet.start(name) for name in names))
    ready = time.monotonic()

    api = TetherClient(
        running.url,
        api_key=running.admin_key,
        ca_file=running.ca_file,
        follow_retries=1000,
        follow_backoff=0.05,
        follow_backoff_max=1.0,
    )
    async with api:
        run = Run(running, api)
        run.manager_up.set()
        submitting = asyncio.Semaphore(SUBMITTERS)
        following = asyncio.Semaphore(FOLLOWERS)

        async def one_task(i: int) -> None:
            async with submitting:
                task_id = await run.submit(i)
            async with following:
                await run.follow(task_id)

        timed_out = False
        try:
            async with asyncio.timeout(SCALE.timeout), asyncio.TaskGroup() as tg:
                tg.create_task(run.chaos(fleet, rng))
                for i in range(SCALE.tasks):
                    tg.create_task(one_task(i))
        except TimeoutError:
            # Count what is there: tasks not final by now are reported as lost below.
            timed_out = True
        ran_for = time.monotonic() - ready
        for name in sorted(fleet.procs):
            fleet.note_crash(name)
        tally = Tally()
        await _verify(run, tally, fleet.killed_at)

    summary = {
        "soak": SCALE_NAME,
        "seed": SEED,
        "delegates": SCALE.delegates,
        "submitted": len(run.ids),
        "succeeded": tally.states["succeeded"],
        "retried": tally.retried,
        "failed": tally.states["failed"],
        "failed_delegate_lost": tally.delegate_lost,
        "cancelled": tally.states["cancelled"],
        "timed_out": tally.states["timed_out"],
        "expired": tally.states["expired"],
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "healthy_failed": len(tally.healthy_failed_tasks),
        "delegate_kills": run.kills,
        "delegate_crashes": len(fleet.crashed),
        "manager_restarts": run.restarts,
        "manager_stalls": run.stalls,
        "timed_out_run": timed_out,
        "run_s": round(ran_for, 1),
        "total_s": round(time.monotonic() - started, 1),
    }
    with capsys.disabled():
        print("\nsoak summary " + json.dumps(summary), flush=True)
        for crash in fleet.crashed:
            print(f"soak: delegate crashed: {crash}", flush=True)
    assert not tally.problems, "\n".join(tally.problems[:50])
    assert tally.lost == 0
    assert tally.duplicated == 0
    assert len(run.ids) == SCALE.tasks
    # The counts add up: every submitted task ended in exactly one final state.
    finals = ("succeeded", "failed", "cancelled", "timed_out", "expired")
    assert len(run.ids) == sum(tally.states[k] for k in finals) == SCALE.tasks
    assert tally.retried > 0, "no kill caught a running task: the soak proved nothing"
    assert run.kills == SCALE.delegate_kills
    assert run.restarts == SCALE.manager_restarts
    assert run.stalls == SCALE.manager_stalls
