"""Every decision of the delegate's link, as a plain object: events in, actions out.

No socket, no ``await``, no clock: the stream and polling adapters (``stream.py``,
``polling.py``) feed it what happened, with the time, and carry out what it returns (wait,
open the stream, poll, register again, stop with an exit status, hand a frame's meaning to
the agent). So the link's behaviour is tested table-style in milliseconds
(``tests/delegate/link/test_policy.py``), in the manner of python-websockets' sans-I/O
protocol.

Here, once each: which HTTP answers and close codes are fatal and with which exit status,
when the stream is given up for polling and when it is held again, the reconnect backoff,
and stall detection from heartbeat acks.

Frames map to deliveries in :meth:`LinkPolicy.frame_received`: an assignment (protocol v2's
``TaskAssigned``, which the stream adapter answers with ``TaskAck`` or ``TaskDecline`` as
the agent decides), a cancel, a drain or its end.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from delegate.exit_codes import EXIT_AUTH, EXIT_VERSION
from shared.limits import Timings
from shared.protocol import (
    AcquireResponse,
    CloseCode,
    HeartbeatAck,
    StreamReply,
    TaskAssigned,
    TaskCancel,
    TaskDrain,
)

__all__ = [
    "DROPS_BEFORE_POLLING",
    "FATAL_TOKEN_CODES",
    "OPEN_FAILURES_BEFORE_POLLING",
    "STALL_CLOSE_CODE",
    "Action",
    "Assign",
    "Cancel",
    "CloseStream",
    "Delivery",
    "Drain",
    "Fatal",
    "LinkPolicy",
    "Meaning",
    "Mode",
    "OpenStream",
    "Poll",
    "Register",
    "Resume",
    "SendHeartbeat",
    "Stop",
    "Wait",
    "backoff_delay",
    "meaning",
]

_DEFAULTS = Timings()

# Consecutive failed opens, or short-lived connections, before falling back to polling.
OPEN_FAILURES_BEFORE_POLLING = 2
DROPS_BEFORE_POLLING = 3
# Error codes of a 401 that re-registering cannot fix: the token itself is refused.
FATAL_TOKEN_CODES = frozenset({"token_revoked", "invalid_token"})
# "Going away": the delegate leaves a stream whose acks stopped coming.
STALL_CLOSE_CODE = 1001

Mode = Literal["connecting", "stream", "polling"]
FrameIn = HeartbeatAck | TaskAssigned | TaskCancel | TaskDrain | StreamReply


class Meaning(enum.Enum):
    """What an answer from the manager means for the delegate."""

    RETRY = "retry"  # network failure, timeout, 5xx, 429: try again after a backoff
    REJECTED = "rejected"  # a 4xx about this request (taken, gone, stale_attempt)
    REREGISTER = "reregister"  # the session credential ran out: register with the token
    TOKEN_REFUSED = "token_refused"  # noqa: S105 - revoked or unknown token: fatal
    UNSUPPORTED = "unsupported"  # the manager no longer speaks this protocol: fatal


def meaning(status: int, code: str) -> Meaning:
    """What an HTTP error ``status`` with the manager's error ``code`` means."""
    if status == 401:
        return Meaning.TOKEN_REFUSED if code in FATAL_TOKEN_CODES else Meaning.REREGISTER
    if status == 426:
        return Meaning.UNSUPPORTED
    if status >= 500 or status == 429:
        return Meaning.RETRY
    return Meaning.REJECTED


class Fatal(Exception):
    """The delegate must stop: retrying cannot help (revoked token, replaced, too old)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Register:
    """Register again with the token (its own failures go to ``register_failed``)."""


@dataclass(frozen=True, slots=True)
class Stop:
    exit_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class OpenStream:
    pass


@dataclass(frozen=True, slots=True)
class Poll:
    """Hold the link over HTTPS, trying the stream again every ``probe_every`` seconds."""

    probe_every: float


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    pass


@dataclass(frozen=True, slots=True)
class CloseStream:
    code: int
    reason: str


# What a frame asks of the agent.
@dataclass(frozen=True, slots=True)
class Assign:
    """A task claimed for this delegate: ack and run it, or decline it."""

    assignment: AcquireResponse


@dataclass(frozen=True, slots=True)
class Cancel:
    task_id: str


@dataclass(frozen=True, slots=True)
class Drain:
    pass


@dataclass(frozen=True, slots=True)
class Resume:
    pass


Action = Wait | Register | Stop
Delivery = Assign | Cancel | Drain | Resume

_VERSION_REFUSED = "the manager no longer accepts this protocol version"
_FATAL_CLOSES: dict[int, Stop] = {
    CloseCode.REVOKED: Stop(EXIT_AUTH, "the manager revoked this delegate's token"),
    CloseCode.SUPERSEDED: Stop(EXIT_AUTH, "another process connected as this delegate (same key)"),
    CloseCode.UNSUPPORTED_VERSION: Stop(EXIT_VERSION, _VERSION_REFUSED),
}


def _stop(what: Meaning, reason: str) -> Stop | None:
    if what is Meaning.TOKEN_REFUSED:
        return Stop(EXIT_AUTH, reason)
    if what is Meaning.UNSUPPORTED:
        return Stop(EXIT_VERSION, reason)
    return None


def backoff_delay(attempt: int, *, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with full jitter, so a fleet reconnecting at once spreads out."""
    return float(min(cap, base * (2.0 ** min(attempt, 30))) * rng())


class LinkPolicy:
    """The link's state: its mode, failure and drop counters, and the last ack's time.

    Timings default to ``shared.limits.Timings``; the manager's own (heartbeat, lost-after,
    poll wait, stream retry) replace them at each registration (:meth:`registered`).
    """

    def __init__(
        self,
        *,
        rng: Callable[[], float] = random.random,
        reconnect_base: float = _DEFAULTS.reconnect_base,
        reconnect_max: float = _DEFAULTS.reconnect_max,
        heartbeat_interval: float = _DEFAULTS.heartbeat_interval,
        lost_after: float = _DEFAULTS.lost_after,
        poll_wait: float = _DEFAULTS.poll_wait,
        stream_retry: float = _DEFAULTS.stream_retry,
        open_failures_before_polling: int = OPEN_FAILURES_BEFORE_POLLING,
        drops_before_polling: int = DROPS_BEFORE_POLLING,
    ) -> None:
        self._rng = rng
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self.heartbeat_interval = heartbeat_interval
        self.lost_after = lost_after
        self.poll_wait = poll_wait
        self.stream_retry = stream_retry
        self._max_open_failures = open_failures_before_polling
        self._max_drops = drops_before_polling
        self.mode: Mode = "connecting"
        # Set on every acknowledged heartbeat (and when polling starts): stall detection
        # and the service watchdog read it.
        self.last_ack: float | None = None
        self.open_failures = 0
        self.drops = 0
        self.lived: float = 0.0
        self._held_since = 0.0
        self._register_failures = 0
        self._beat_failures = 0
        self._poll_failures = 0

    def backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt, base=self.reconnect_base, cap=self.reconnect_max, rng=self._rng
        )

    # -- registration ----------------------------------------------------------------------

    def registered(
        self, *, heartbeat_interval: float, lost_after: float, poll_wait: float, stream_retry: float
    ) -> None:
        """The manager accepted the token and sent its timings."""
        self._register_failures = 0
        self.heartbeat_interval = heartbeat_interval
        self.lost_after = lost_after
        self.poll_wait = poll_wait
        self.stream_retry = stream_retry

    def register_failed(self, what: Meaning, reason: str) -> Stop | Wait:
        """Only a refusal retrying cannot fix stops the delegate; a manager that is not up
        yet (a reboot of both, an upgrade) is waited for."""
        stop = _stop(what, reason)
        if stop is not None:
            return stop
        self._register_failures += 1
        return Wait(self.backoff(self._register_failures))

    # -- holding the link ------------------------------------------------------------------

    def next_step(self, now: float) -> OpenStream | Poll:
        """The link is not held: open the stream, or poll when it keeps failing."""
        if self.open_failures < self._max_open_failures and self.drops < self._max_drops:
            return OpenStream()
        self.mode = "polling"
        # Polling starts the ack clock: the watchdog's "healthy" holds while acks come.
        self.last_ack = now
        self._beat_failures = self._poll_failures = 0
        return Poll(probe_every=self.stream_retry)

    def open_failed(self, status: int | None = None, code: str = "") -> tuple[Action, ...]:
        """The stream did not open: no connection, no answer to the hello, or the upgrade
        refused with HTTP ``status`` and the manager's error ``code``."""
        then: tuple[Action, ...] = ()
        if status is not None:
            what = meaning(status, code)
            if what is Meaning.TOKEN_REFUSED:
                return (Stop(EXIT_AUTH, f"the manager refused the token ({code})"),)
            if what is Meaning.UNSUPPORTED:
                return (Stop(EXIT_VERSION, _VERSION_REFUSED),)
            if what is Meaning.REREGISTER:
                then = (Register(),)
        if self.mode == "polling":
            # A failed probe: polling goes on, and the probe waits ``stream_retry`` anyway.
            return then
        self.open_failures += 1
        return (*then, Wait(self.backoff(self.open_failures)))

    def stream_held(self, now: float) -> None:
        """The stream opened and the manager answered the hello: the link is held."""
        if self.mode == "polling":
            self.drops = 0
        self.open_failures = 0
        self.mode = "stream"
        self._held_since = now

    def stream_closed(self, code: int | None, now: float) -> tuple[Action, ...]:
        """The stream closed with ``code`` (None: no close frame)."""
        self.mode = "connecting"
        self.lived = now - self._held_since
        stop = _FATAL_CLOSES.get(code) if code is not None else None
        if stop is not None:
            return (stop,)
        if code == CloseCode.RESTART:
            # The manager is restarting: come back soon, but not all delegates at once.
            self.drops = 0
            return (Wait(self.reconnect_base * self._rng()),)
        # A stream that dies young counts towards polling; one that lived resets the count.
        # Every reconnect waits, so a manager that accepts and drops causes no hot loop.
        self.drops = self.drops + 1 if self.lived < 2 * self.heartbeat_interval else 1
        then: tuple[Action, ...] = (Register(),) if code == CloseCode.SESSION_EXPIRED else ()
        return (*then, Wait(self.backoff(self.drops)))

    # -- on the stream ---------------------------------------------------------------------

    def heartbeat_due(self, now: float) -> SendHeartbeat | CloseStream:
        """An interval has passed on the stream: send a heartbeat, or leave a stalled path
        (frames go out but no ack has come back for ``lost_after``)."""
        if self.last_ack is not None and now - self.last_ack > self.lost_after:
            return CloseStream(STALL_CLOSE_CODE, "no heartbeat ack")
        return SendHeartbeat()

    def frame_received(self, frame: FrameIn, now: float) -> tuple[Delivery, ...]:
        """What a frame from the manager (on the stream, or a polled ack) asks of the agent."""
        if isinstance(frame, HeartbeatAck):
            self.last_ack = now
            state: Delivery = Drain() if frame.drain else Resume()
            return (*(Cancel(task_id) for task_id in frame.cancel), state)
        if isinstance(frame, TaskAssigned):
            return (Assign(frame.assignment),)
        if isinstance(frame, TaskCancel):
            return (Cancel(frame.task_id),)
        if isinstance(frame, StreamReply):
            return ()  # this delegate sends its log batches and results over HTTPS
        return (Drain(),)

    # -- polling ---------------------------------------------------------------------------

    def poll_heartbeat_sent(self) -> Wait:
        self._beat_failures = 0
        return Wait(self.heartbeat_interval)

    def poll_heartbeat_failed(self, what: Meaning, reason: str) -> Stop | Wait:
        # Retried within an interval: a missed heartbeat costs the leases of running tasks.
        stop = _stop(what, reason)
        if stop is not None:
            return stop
        self._beat_failures += 1
        return Wait(min(self.backoff(self._beat_failures), self.heartbeat_interval))

    def long_poll_answered(self) -> None:
        self._poll_failures = 0

    def long_poll_failed(self, what: Meaning, reason: str) -> Stop | Wait:
        # Capped at an interval, as heartbeats are: after an outage of any length new work
        # is asked for within an interval of the manager's return, not a minute later (the
        # polling loop also cuts the wait short once a heartbeat is answered again).
        stop = _stop(what, reason)
        if stop is not None:
            return stop
        self._poll_failures += 1
        return Wait(min(self.backoff(self._poll_failures), self.heartbeat_interval))
