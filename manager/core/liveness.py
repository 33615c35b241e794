"""Session liveness, heartbeat evidence for leases, and when the manager may judge either.

Plain objects over the times passed in, which are the manager's **monotonic** clock: a jump
of the wall clock, either way, changes no duration here. Heartbeats touch only these maps,
never the database.

Two rules hold every lease decision to what the delegates did rather than to what the
manager managed to write:

- A lease is vouched for by the holder's last heartbeat that listed the task (running, or
  with a result or log lines waiting in the delegate's spool), for ``lost_after`` less one
  sweep after that heartbeat and not a moment longer, so the sweep that finds it ran out
  comes within ``lost_after``. A heartbeat renews a lease once: after a renewal was written
  from it, only a heartbeat received since may renew that delegate's leases again. Any
  other call keeps the session (status, hand-out) but never a lease, so a delegate whose
  heartbeats stopped is never renewed, whatever else reaches the manager in its name.
- The manager judges nothing (no lost session, no lost lease, no timeout) while it may have
  missed heartbeats: after its start, and after any gap in the sweep loop's own ticks (the
  process was frozen, the machine starved it), until one heartbeat interval and a margin
  have passed with the loop turning. Delegates' heartbeats sent meanwhile are counted first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Claim", "Leases", "Liveness", "Renewals"]


@dataclass(frozen=True, slots=True)
class Claim:
    """A delegate's heartbeat vouches for ``task_id``: its lease may run ``lease_for`` more
    seconds. ``running``: listed as running (not only waiting in the spool). ``beat``: which
    heartbeat it stands on; once a renewal from it is written (``Liveness.written``), that
    heartbeat renews nothing more."""

    task_id: str
    delegate_id: str
    lease_for: float
    running: bool
    # Bookkeeping, not part of what is claimed.
    beat: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class _Beat:
    at: float
    # Counts the heartbeats this process heard: two may come at the same clock reading.
    number: int
    running: frozenset[str]
    spooled: frozenset[str]


# An idle delegate lists nothing: its beats share one empty set (a frozenset is 216 bytes,
# even empty, and CPython makes a new one each time).
_NOTHING: frozenset[str] = frozenset()


def _frozen(tasks: tuple[str, ...] | list[str]) -> frozenset[str]:
    return frozenset(tasks) if tasks else _NOTHING


class Liveness:
    def __init__(
        self,
        *,
        lost_after: float,
        heartbeat_interval: float | None = None,
        tick: float = 1.0,
    ) -> None:
        self._lost_after = lost_after
        # How long a heartbeat vouches for a lease: a sweep short of lost_after, so the
        # sweep that finds the lease ran out comes within lost_after of the heartbeat.
        self.lease = lost_after - tick if tick < lost_after / 2 else lost_after
        interval = lost_after / 3 if heartbeat_interval is None else heartbeat_interval
        # A gap in the loop's ticks past this may have hidden a heartbeat's arrival.
        self.stall_after = max(2 * tick, interval / 2)
        # After a stall (or the start), nothing is judged for this long: every live delegate
        # sends a heartbeat within an interval, and the margin covers its way in.
        self.grace = interval + max(tick, interval / 2)
        self._last_seen: dict[str, float] = {}
        self._beats: dict[str, _Beat] = {}
        # The heartbeat each delegate's last written renewal came from: it renews no more.
        self._written: dict[str, int] = {}
        self._heard = 0
        # The last heartbeat of a delegate whose session was dropped, until it beats again:
        # the lost-lease decision that usually follows in the same pass still says how long
        # it had been silent.
        self._gone: dict[str, float] = {}
        self._last_tick: float | None = None
        self._judge_from = float("-inf")
        # Set at a start until the first heartbeat comes back (see started()).
        self._started_at: float | None = None

    # -- what the delegates did -----------------------------------------------------------

    def seen(self, delegate_id: str, now: float) -> None:
        """Any authenticated call: the session is alive (for status and dispatch)."""
        self._last_seen[delegate_id] = now

    def beat(
        self,
        delegate_id: str,
        now: float,
        running: tuple[str, ...] | list[str] = (),
        spooled: tuple[str, ...] | list[str] = (),
    ) -> None:
        """A heartbeat (or a stream's hello): the only evidence that renews leases."""
        self._last_seen[delegate_id] = now
        self._heard += 1
        self._gone.pop(delegate_id, None)
        self._beats[delegate_id] = _Beat(now, self._heard, _frozen(running), _frozen(spooled))
        if self._started_at is not None:
            # The first delegate is back: the others get a full lost_after from now (the
            # way back was slow for all, a starved machine or a network that took its
            # time), though never past twice lost_after from the start.
            cap = self._started_at + 2 * self._lost_after
            self._judge_from = max(self._judge_from, min(now + self._lost_after, cap))
            self._started_at = None

    def forget(self, delegate_id: str) -> None:
        self._last_seen.pop(delegate_id, None)
        beat = self._beats.pop(delegate_id, None)
        if beat is not None:
            self._gone[delegate_id] = beat.at
        self._written.pop(delegate_id, None)

    def last_seen(self, delegate_id: str) -> float | None:
        return self._last_seen.get(delegate_id)

    def last_beat(self, delegate_id: str) -> float | None:
        beat = self._beats.get(delegate_id)
        return None if beat is None else beat.at

    # -- the manager's own pace -----------------------------------------------------------

    @property
    def start_grace(self) -> float:
        """How long after a start nothing is judged, at least: a full ``lost_after`` for the
        delegates to come back, and the grace of a stall for their way back (they notice,
        back off, reconnect, then beat). The stored leases are extended by as much."""
        return self._lost_after + self.grace

    def started(self, now: float) -> None:
        """The manager (re)started: no judgment for ``start_grace``, nor before the
        delegates had ``lost_after`` from the first heartbeat that came back."""
        self._judge_from = max(self._judge_from, now + self.start_grace)
        self._started_at = now
        self._last_tick = now

    def tick(self, now: float) -> float | None:
        """A pass of the sweep loop. Returns the gap when it was a stall (to log)."""
        last, self._last_tick = self._last_tick, now
        if last is None or now - last <= self.stall_after:
            return None
        self._judge_from = max(self._judge_from, now + self.grace)
        return now - last

    def judging(self, now: float) -> bool:
        """Whether lost sessions, leases and timeouts may be judged now: not within a grace,
        and not long after the loop's last tick either (the process froze in the middle of
        a pass, and the tick that would notice has not come yet)."""
        if self._last_tick is not None and now - self._last_tick > self.stall_after:
            return False
        return now >= self._judge_from

    # -- judgments ------------------------------------------------------------------------

    def lost(self, now: float) -> list[str]:
        """Delegates silent for longer than ``lost_after``; the caller drops their sessions.
        None while the manager may have missed their heartbeats."""
        if not self.judging(now):
            return []
        return [d for d, t in self._last_seen.items() if now - t > self._lost_after]

    def vouches(self, delegate_id: str, task_id: str, now: float) -> bool:
        """The delegate's last heartbeat, within a lease (``lost_after`` less a sweep),
        listed the task."""
        beat = self._beats.get(delegate_id)
        return (
            beat is not None
            and now - beat.at <= self.lease
            and (task_id in beat.running or task_id in beat.spooled)
        )

    def lease_left(self, delegate_id: str, now: float) -> float:
        """How long a lease granted now (at an acquire) may run: what is left of the
        delegate's last heartbeat's, so even a delegate frozen right after an acquire loses
        the task within ``lost_after`` of its last heartbeat. Its next heartbeat, due within
        an interval, lists the task and carries the lease on. A full lease before a first."""
        beat = self._beats.get(delegate_id)
        if beat is None:
            return self.lease
        return max(0.0, self.lease - (now - beat.at))

    def claims(self, now: float) -> list[Claim]:
        """The leases to renew: those listed by each delegate's last heartbeat, when no
        renewal was written from that heartbeat yet, each until a lease after it (not after
        the renewal that writes it). A heartbeat already written renews nothing again: the
        lease it gave is in the store, and writing it again would only move it on by the
        write's own delay."""
        out: list[Claim] = []
        for delegate_id, beat in self._beats.items():
            left = self.lease - (now - beat.at)
            if left < 0 or self._written.get(delegate_id) == beat.number:
                continue
            out.extend(Claim(t, delegate_id, left, True, beat.number) for t in sorted(beat.running))
            out.extend(
                Claim(t, delegate_id, left, False, beat.number)
                for t in sorted(beat.spooled - beat.running)
            )
        return out

    def written(self, claims: list[Claim]) -> None:
        """The renewal of ``claims`` was written: their heartbeats renew nothing more. A
        heartbeat that came while it was being written is newer, and still renews. A renewal
        that failed is not told here, so its heartbeats are tried again."""
        for claim in claims:
            beat = self._beats.get(claim.delegate_id)
            if beat is not None and beat.number == claim.beat:
                self._written[claim.delegate_id] = claim.beat

    def silent_for(self, delegate_id: str, now: float) -> float | None:
        """Seconds since the delegate's last heartbeat heard here, its session dropped or
        not; None when none is known."""
        beat = self._beats.get(delegate_id)
        at = self._gone.get(delegate_id) if beat is None else beat.at
        return None if at is None else now - at


class Renewals:
    """When the batched lease renewal is due: every ``every`` seconds, and at the next pass
    when the last one failed or a delegate brought leases this process has not renewed."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._last: float | None = None
        self._urgent = True
        # Failed renewals in a row: an outage is logged when it starts and when it ends,
        # not once a pass.
        self.failures = 0

    def due(self, now: float) -> bool:
        return self._urgent or self._last is None or now - self._last >= self._every

    def done(self, now: float) -> int:
        """A renewal was written; returns how many failed before it."""
        self._last = now
        self._urgent = False
        failed, self.failures = self.failures, 0
        return failed

    def failed(self) -> None:
        self._urgent = True
        self.failures += 1

    def hasten(self) -> None:
        self._urgent = True


class Leases:
    """Which delegate holds which running task, as far as this process granted them.

    A local index for counting load and routing cancels. The leases themselves (until when
    a holder may keep a task) live in the store, renewed in batches from heartbeats, so
    every replica judges them alike.
    """

    def __init__(self) -> None:
        self._holder: dict[str, str] = {}
        self._by_delegate: dict[str, set[str]] = {}

    def grant(self, task_id: str, delegate_id: str) -> None:
        self.release(task_id)
        self._holder[task_id] = delegate_id
        self._by_delegate.setdefault(delegate_id, set()).add(task_id)

    def release(self, task_id: str) -> None:
        delegate_id = self._holder.pop(task_id, None)
        if delegate_id is not None:
            held = self._by_delegate.get(delegate_id)
            if held is not None:
                held.discard(task_id)
                if not held:
                    del self._by_delegate[delegate_id]

    def holder(self, task_id: str) -> str | None:
        return self._holder.get(task_id)

    def held_by(self, delegate_id: str) -> set[str]:
        return set(self._by_delegate.get(delegate_id, ()))

    def count(self, delegate_id: str) -> int:
        return len(self._by_delegate.get(delegate_id, ()))
