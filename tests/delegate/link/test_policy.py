"""The link's decisions, fed events and times: no socket, no sleep, no clock."""

from __future__ import annotations

import random

import pytest

from delegate.exit_codes import EXIT_AUTH, EXIT_VERSION
from delegate.link.policy import (
    FATAL_TOKEN_CODES,
    STALL_CLOSE_CODE,
    Assign,
    Cancel,
    CloseStream,
    Drain,
    LinkPolicy,
    Meaning,
    OpenStream,
    Poll,
    Register,
    Resume,
    SendHeartbeat,
    Stop,
    Wait,
    backoff_delay,
    meaning,
)
from shared.limits import Timings
from shared.protocol import (
    AcquireResponse,
    CloseCode,
    HeartbeatAck,
    ShellPayload,
    StreamReply,
    TaskAssigned,
    TaskCancel,
    TaskDrain,
    TaskSpec,
)

HANDED = AcquireResponse(
    task=TaskSpec(id="t9", payload=ShellPayload(script="true"), timeout_s=10), attempt=3
)

HB = 1.0  # heartbeat interval: a stream that lives under 2 s died young
LOST = 3.0
RETRY = 7.0
BASE = 1.0
CAP = 100.0


def half() -> float:
    return 0.5


def policy() -> LinkPolicy:
    # rng 0.5 makes every jittered wait exact: attempt n waits min(CAP, BASE * 2**n) / 2.
    return LinkPolicy(
        rng=half,
        reconnect_base=BASE,
        reconnect_max=CAP,
        heartbeat_interval=HB,
        lost_after=LOST,
        stream_retry=RETRY,
        poll_wait=5.0,
    )


def wait(attempt: int) -> Wait:
    return Wait(min(CAP, BASE * 2.0**attempt) / 2)


def held_for(
    p: LinkPolicy, lived: float, code: int | None, *, at: float = 100.0
) -> tuple[object, ...]:
    assert p.next_step(at) == OpenStream()
    p.stream_held(at)
    return p.stream_closed(code, at + lived)


# -- what an HTTP answer means --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "token_revoked", Meaning.TOKEN_REFUSED),
        (401, "invalid_token", Meaning.TOKEN_REFUSED),
        (401, "session_expired", Meaning.REREGISTER),
        (401, "", Meaning.REREGISTER),
        (426, "", Meaning.UNSUPPORTED),
        (429, "rate_limited", Meaning.RETRY),
        (500, "", Meaning.RETRY),
        (502, "", Meaning.RETRY),
        (503, "", Meaning.RETRY),
        (400, "bad_request", Meaning.REJECTED),
        (403, "forbidden", Meaning.REJECTED),
        (404, "not_found", Meaning.REJECTED),
        (409, "stale_attempt", Meaning.REJECTED),
        (410, "gone", Meaning.REJECTED),
    ],
)
def test_each_http_status_has_one_meaning(status: int, code: str, expected: Meaning) -> None:
    assert meaning(status, code) is expected


def test_a_fatal_token_code_is_fatal_only_on_a_401() -> None:
    assert {"token_revoked", "invalid_token"} == FATAL_TOKEN_CODES
    assert {meaning(403, c) for c in FATAL_TOKEN_CODES} == {Meaning.REJECTED}


# -- what a close code means ----------------------------------------------------------------

CLOSES: dict[int | None, tuple[object, ...]] = {
    CloseCode.REVOKED: (Stop(EXIT_AUTH, "the manager revoked this delegate's token"),),
    CloseCode.SUPERSEDED: (
        Stop(EXIT_AUTH, "another process connected as this delegate (same key)"),
    ),
    CloseCode.UNSUPPORTED_VERSION: (
        Stop(EXIT_VERSION, "the manager no longer accepts this protocol version"),
    ),
    CloseCode.RESTART: (Wait(BASE * 0.5),),
    CloseCode.BAD_FRAME: (wait(1),),
    CloseCode.LOST: (wait(1),),
    CloseCode.SESSION_EXPIRED: (Register(), wait(1)),
    1000: (wait(1),),
    1001: (wait(1),),
    1006: (wait(1),),
    1011: (wait(1),),
    None: (wait(1),),
}


def test_the_close_table_covers_every_application_close_code() -> None:
    assert set(CloseCode) <= set(CLOSES)


@pytest.mark.parametrize(("code", "expected"), CLOSES.items(), ids=[str(c) for c in CLOSES])
def test_each_close_code_has_one_action(code: int | None, expected: tuple[object, ...]) -> None:
    p = policy()
    assert held_for(p, 0.5, code) == expected
    assert p.mode == "connecting"


# -- what a refused or failed open means ----------------------------------------------------

OPENS: list[tuple[int | None, str, tuple[object, ...]]] = [
    (None, "", (wait(1),)),  # no connection, or no answer to the hello
    (401, "token_revoked", (Stop(EXIT_AUTH, "the manager refused the token (token_revoked)"),)),
    (401, "invalid_token", (Stop(EXIT_AUTH, "the manager refused the token (invalid_token)"),)),
    (401, "session_expired", (Register(), wait(1))),
    (426, "", (Stop(EXIT_VERSION, "the manager no longer accepts this protocol version"),)),
    (403, "", (wait(1),)),  # a proxy that refuses upgrades: poll soon
    (404, "", (wait(1),)),
    (429, "", (wait(1),)),
    (502, "", (wait(1),)),
]


@pytest.mark.parametrize(("status", "code", "expected"), OPENS)
def test_each_failed_open_has_one_action(
    status: int | None, code: str, expected: tuple[object, ...]
) -> None:
    p = policy()
    assert p.next_step(0.0) == OpenStream()
    assert p.open_failed(status, code) == expected


@pytest.mark.parametrize(("status", "code", "expected"), OPENS)
def test_a_failed_probe_while_polling_waits_for_the_next_probe(
    status: int | None, code: str, expected: tuple[object, ...]
) -> None:
    p = polling()
    fatal = tuple(a for a in expected if isinstance(a, Stop))
    again = (Register(),) if code == "session_expired" else ()
    assert p.open_failed(status, code) == (fatal or again)
    assert p.mode == "polling"


# -- falling back to polling, and moving back -----------------------------------------------


def polling() -> LinkPolicy:
    p = policy()
    for _ in range(2):
        assert p.next_step(0.0) == OpenStream()
        p.open_failed()
    assert p.next_step(0.0) == Poll(probe_every=RETRY)
    return p


def test_two_failed_opens_fall_back_to_polling_after_a_growing_wait() -> None:
    p = policy()
    assert p.next_step(0.0) == OpenStream()
    assert p.open_failed() == (wait(1),)
    assert p.next_step(1.0) == OpenStream()
    assert p.open_failed() == (wait(2),)
    assert p.next_step(3.0) == Poll(probe_every=RETRY)
    assert (p.mode, p.last_ack) == ("polling", 3.0)


def test_three_streams_that_die_young_fall_back_to_polling() -> None:
    p = policy()
    assert held_for(p, 0.1, 1006) == (wait(1),)
    assert held_for(p, 1.9, 1006) == (wait(2),)
    assert p.next_step(0.0) == OpenStream()
    p.stream_held(10.0)
    assert p.stream_closed(1006, 10.5) == (wait(3),)
    assert p.next_step(11.0) == Poll(probe_every=RETRY)


def test_a_stream_that_lived_resets_the_drop_count() -> None:
    p = policy()
    held_for(p, 0.1, 1006)
    held_for(p, 0.1, 1006)
    assert held_for(p, 2 * HB, 1006) == (wait(1),)
    assert p.drops == 1
    assert p.next_step(0.0) == OpenStream()


def test_a_restart_resets_the_drop_count() -> None:
    p = policy()
    held_for(p, 0.1, 1006)
    held_for(p, 0.1, 1006)
    assert held_for(p, 0.1, CloseCode.RESTART) == (Wait(BASE * 0.5),)
    assert p.drops == 0
    held_for(p, 0.1, 1006)
    assert p.next_step(0.0) == OpenStream()


def test_a_stream_held_after_polling_moves_back_and_starts_counting_afresh() -> None:
    p = policy()
    for _ in range(3):
        held_for(p, 0.1, 1006)
    assert isinstance(p.next_step(0.0), Poll)
    p.stream_held(50.0)
    assert (p.mode, p.drops, p.open_failures) == ("stream", 0, 0)
    # One short-lived stream after moving back is one drop, not a fourth: no polling yet.
    assert p.stream_closed(1006, 50.1) == (wait(1),)
    assert p.next_step(51.0) == OpenStream()


def test_a_stream_held_resets_the_open_failures_but_not_the_drops() -> None:
    p = policy()
    p.next_step(0.0)
    p.open_failed()
    held_for(p, 0.1, 1006)
    assert (p.open_failures, p.drops) == (0, 1)
    p.next_step(0.0)
    assert p.open_failed() == (wait(1),)


def test_the_thresholds_are_keyword_arguments() -> None:
    p = LinkPolicy(rng=half, open_failures_before_polling=1, drops_before_polling=1)
    assert p.next_step(0.0) == OpenStream()
    p.open_failed()
    assert isinstance(p.next_step(0.0), Poll)


# -- stall detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_ack", "now", "expected"),
    [
        (None, 1_000.0, SendHeartbeat()),  # no ack yet: nothing to judge by
        (10.0, 10.0 + HB, SendHeartbeat()),
        (10.0, 10.0 + LOST, SendHeartbeat()),  # exactly lost_after is still alive
        (10.0, 10.0 + LOST + 0.001, CloseStream(STALL_CLOSE_CODE, "no heartbeat ack")),
        (10.0, 10.0 + 10 * LOST, CloseStream(STALL_CLOSE_CODE, "no heartbeat ack")),
    ],
)
def test_a_stream_whose_acks_stop_is_left(
    last_ack: float | None, now: float, expected: SendHeartbeat | CloseStream
) -> None:
    p = policy()
    if last_ack is not None:
        p.frame_received(HeartbeatAck(seq=1), last_ack)
    assert p.heartbeat_due(now) == expected


def test_each_ack_moves_the_stall_deadline() -> None:
    p = policy()
    p.frame_received(HeartbeatAck(seq=1), 0.0)
    p.frame_received(HeartbeatAck(seq=2), 2.0)
    assert p.heartbeat_due(4.0) == SendHeartbeat()
    assert p.heartbeat_due(5.5) == CloseStream(STALL_CLOSE_CODE, "no heartbeat ack")


def test_polling_starts_the_ack_clock() -> None:
    p = polling()
    assert p.last_ack == 0.0


# -- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (HeartbeatAck(seq=3), (Resume(),)),
        (HeartbeatAck(seq=3, drain=True), (Drain(),)),
        (HeartbeatAck(seq=3, cancel=["t1", "t2"]), (Cancel("t1"), Cancel("t2"), Resume())),
        (TaskAssigned(assignment=HANDED), (Assign(HANDED),)),
        (StreamReply(id=1), ()),
        (TaskCancel(task_id="t8"), (Cancel("t8"),)),
        (TaskDrain(), (Drain(),)),
    ],
)
def test_each_frame_asks_one_thing_of_the_agent(
    frame: HeartbeatAck | TaskAssigned | TaskCancel | TaskDrain | StreamReply,
    expected: tuple[object, ...],
) -> None:
    p = policy()
    assert p.frame_received(frame, 42.0) == expected
    assert p.last_ack == (42.0 if isinstance(frame, HeartbeatAck) else None)


# -- registration and the polling loops -----------------------------------------------------


@pytest.mark.parametrize(
    ("what", "fatal"),
    [
        (Meaning.TOKEN_REFUSED, Stop(EXIT_AUTH, "why")),
        (Meaning.UNSUPPORTED, Stop(EXIT_VERSION, "why")),
        (Meaning.RETRY, None),
        (Meaning.REJECTED, None),
        (Meaning.REREGISTER, None),
    ],
)
def test_failures_of_register_heartbeat_and_long_poll(what: Meaning, fatal: Stop | None) -> None:
    p = policy()
    if fatal is not None:
        assert p.register_failed(what, "why") == fatal
        assert p.poll_heartbeat_failed(what, "why") == fatal
        assert p.long_poll_failed(what, "why") == fatal
        return
    assert [p.register_failed(what, "why") for _ in range(3)] == [wait(1), wait(2), wait(3)]
    # A polled heartbeat is retried within an interval: the leases depend on it. So is a
    # long-poll: new work is picked up within an interval of the manager's return.
    assert [p.poll_heartbeat_failed(what, "why") for _ in range(2)] == [wait(1), Wait(HB)]
    assert [p.long_poll_failed(what, "why") for _ in range(3)] == [wait(1), Wait(HB), Wait(HB)]


def test_success_resets_each_failure_count() -> None:
    p = policy()
    for _ in range(4):
        p.register_failed(Meaning.RETRY, "down")
        p.long_poll_failed(Meaning.RETRY, "down")
        p.poll_heartbeat_failed(Meaning.RETRY, "down")
    p.registered(heartbeat_interval=HB, lost_after=LOST, poll_wait=5.0, stream_retry=RETRY)
    p.long_poll_answered()
    assert p.poll_heartbeat_sent() == Wait(HB)
    assert p.register_failed(Meaning.RETRY, "down") == wait(1)
    assert p.long_poll_failed(Meaning.RETRY, "down") == wait(1)
    assert p.poll_heartbeat_failed(Meaning.RETRY, "down") == wait(1)


def test_entering_polling_resets_the_polling_loops_counts() -> None:
    p = polling()
    p.long_poll_failed(Meaning.RETRY, "down")
    p.poll_heartbeat_failed(Meaning.RETRY, "down")
    p.stream_held(1.0)
    for _ in range(3):
        held_for(p, 0.1, 1006)
    assert isinstance(p.next_step(2.0), Poll)
    assert p.long_poll_failed(Meaning.RETRY, "down") == wait(1)
    assert p.poll_heartbeat_failed(Meaning.RETRY, "down") == wait(1)


def test_the_managers_timings_replace_the_defaults() -> None:
    p = LinkPolicy(rng=half)
    d = Timings()
    assert (p.heartbeat_interval, p.lost_after, p.poll_wait, p.stream_retry) == (
        d.heartbeat_interval,
        d.lost_after,
        d.poll_wait,
        d.stream_retry,
    )
    assert (p.reconnect_base, p.reconnect_max) == (d.reconnect_base, d.reconnect_max)
    p.registered(heartbeat_interval=0.2, lost_after=0.6, poll_wait=0.5, stream_retry=1.5)
    assert p.poll_heartbeat_sent() == Wait(0.2)
    p.frame_received(HeartbeatAck(seq=1), 0.0)
    assert isinstance(p.heartbeat_due(0.7), CloseStream)
    # Die-young is judged against the new interval: 0.5 s is long-lived at 0.2 s beats.
    held_for(p, 0.1, 1006)
    held_for(p, 0.5, 1006)
    assert p.drops == 1
    p = LinkPolicy(rng=half, open_failures_before_polling=0)
    p.registered(heartbeat_interval=0.2, lost_after=0.6, poll_wait=0.5, stream_retry=1.5)
    assert p.next_step(0.0) == Poll(probe_every=1.5)


# -- backoff --------------------------------------------------------------------------------


def test_backoff_stays_within_its_bounds_with_jitter() -> None:
    rng = random.Random(1234)
    delays = [
        (attempt, backoff_delay(attempt, base=0.5, cap=60.0, rng=rng.random))
        for attempt in range(1, 41)
        for _ in range(25)
    ]
    assert all(0.0 <= d <= min(60.0, 0.5 * 2**a) for a, d in delays)
    # Full jitter: the same attempt spreads across its range rather than landing together.
    late = [d for a, d in delays if a >= 10]
    assert max(late) > 50.0
    assert min(late) < 10.0
    assert len({round(d, 6) for d in late}) == len(late)


def test_a_seeded_random_gives_the_same_waits() -> None:
    def run(seed: int) -> list[float]:
        p = LinkPolicy(rng=random.Random(seed).random, reconnect_base=0.5, reconnect_max=60)
        return [p.backoff(n) for n in range(1, 20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (1, 1.0, 1.0),
        (3, 1.0, 4.0),
        (7, 1.0, 60.0),  # capped
        (10_000, 1.0, 60.0),  # no overflow on a long outage
        (5, 0.0, 0.0),
        (2, 0.25, 0.5),
    ],
)
def test_backoff_is_exponential_and_capped(attempt: int, jitter: float, expected: float) -> None:
    assert backoff_delay(attempt, base=0.5, cap=60.0, rng=lambda: jitter) == expected
