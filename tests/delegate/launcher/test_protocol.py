"""The launcher's requests: what parses, and every way a request is refused."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from delegate.launcher.protocol import (
    MAX_FDS,
    MAX_MESSAGE_BYTES,
    RECORD_BYTES,
    Assembler,
    Pool,
    Refused,
    Signal,
    Start,
    Sweep,
    encode,
    parse_request,
    records,
)

SLOTS = 2


def start(**changes: Any) -> dict[str, Any]:
    return {
        "id": 7,
        "op": "start",
        "slot": 1,
        "dir": "task-ab_12",
        "cwd": "sub/dir",
        "argv": ["bash", "/w/task-ab_12/script"],
        "env": {"PATH": "/usr/bin", "TOKEN": "s3cret-value"},
    } | changes


def parse(message: dict[str, Any], fds: int = 0) -> object:
    return parse_request(encode(message), fds=fds, slots=SLOTS)


def test_each_request_parses_into_its_type() -> None:
    assert parse({"id": 1, "op": "pool"}) == Pool(1)
    assert parse({"id": 2, "op": "signal", "signal": "TERM"}) == Signal(2, signal.SIGTERM)
    assert parse({"id": 3, "op": "sweep", "slot": 0, "dir": None}) == Sweep(3, 0, None)
    assert parse({"id": 4, "op": "sweep", "slot": 1, "dir": "task-x"}) == Sweep(4, 1, "task-x")
    got = parse(start(), fds=3)
    assert got == Start(
        id=7,
        slot=1,
        dir="task-ab_12",
        cwd="sub/dir",
        argv=("bash", "/w/task-ab_12/script"),
        env={"PATH": "/usr/bin", "TOKEN": "s3cret-value"},
    )
    here = parse(start(cwd="."), fds=1)
    assert isinstance(here, Start)
    assert here.cwd == "."


@pytest.mark.parametrize(
    ("message", "fds", "reason"),
    [
        ({"id": 1, "op": "exec"}, 0, "unknown op 'exec'"),
        ({"id": 1}, 0, "unknown op 'None'"),
        ({"op": "pool"}, 0, "id must be a whole number"),
        ({"id": True, "op": "pool"}, 0, "id must be a whole number"),
        ({"id": -1, "op": "pool"}, 0, "id must be a whole number"),
        ({"id": 1, "op": "pool", "uid": 0}, 0, "unknown fields for pool: uid"),
        ({"id": 1, "op": "pool"}, 1, "pool takes no descriptors"),
        ({"id": 1, "op": "signal", "signal": "STOP"}, 0, "signal must be one of TERM, KILL"),
        ({"id": 1, "op": "signal", "signal": 9}, 0, "signal must be one of"),
        ({"id": 1, "op": "signal", "signal": "KILL", "pid": 1}, 0, "unknown fields"),
        ({"id": 1, "op": "sweep", "slot": 2, "dir": None}, 0, "slot must be a whole number"),
        ({"id": 1, "op": "sweep", "slot": 0}, 0, "missing fields for sweep: dir"),
        ({"id": 1, "op": "sweep", "slot": 0, "dir": ".."}, 0, "dir must name"),
        ({"id": 1, "op": "sweep", "slot": 0, "dir": "a/b"}, 0, "dir must name"),
        (start(slot=2), 1, "slot must be a whole number from 0 to 1"),
        (start(slot=-1), 1, "slot must be"),
        (start(slot=True), 1, "slot must be"),
        (start(slot="0"), 1, "slot must be"),
        (start(uid=0), 1, "unknown fields for start: uid"),
        (start(user="root"), 1, "unknown fields for start: user"),
        (start(dir="../etc"), 1, "dir must name"),
        (start(dir="/etc"), 1, "dir must name"),
        (start(dir="."), 1, "dir must name"),
        (start(dir=""), 1, "dir must name"),
        (start(cwd="/root"), 1, "cwd must lie inside the task's directory"),
        (start(cwd="sub/../../other"), 1, "cwd must lie inside"),
        (start(cwd="a\0b"), 1, "cwd must be a string without NUL"),
        (start(argv=[]), 1, "argv must be a list of 1 to"),
        (start(argv="bash"), 1, "argv must be a list"),
        (start(argv=["bash", 3]), 1, "argv must be a string"),
        (start(argv=["a"] * 5000), 1, "argv must be a list of 1 to 4096"),
        (start(env=["A=1"]), 1, "env must be an object"),
        (start(env={"A=B": "x"}), 1, "env names must be non-empty, without = or NUL"),
        (start(env={"": "x"}), 1, "env names"),
        (start(), 0, "start takes 1 to"),
        (start(), MAX_FDS + 1, "start takes 1 to"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(
    message: dict[str, Any], fds: int, reason: str
) -> None:
    with pytest.raises(Refused) as caught:
        parse(message, fds)
    assert str(caught.value).startswith(reason)


def test_a_refusal_never_quotes_an_env_value() -> None:
    with pytest.raises(Refused) as caught:
        parse(start(env={"TOKEN": "s3cret\0value"}), fds=1)
    assert "s3cret" not in str(caught.value)
    assert caught.value.request_id == 7


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[1, 2]", b'"pool"', b"\xff\xfe", b"{" * 10000, b"null"]
)
def test_what_is_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(Refused, match="not a JSON object"):
        parse_request(data, fds=0, slots=SLOTS)


def test_records_reassemble_into_the_message_across_record_boundaries() -> None:
    message = encode(start(env={"BIG": "x" * (3 * RECORD_BYTES)}))
    parts = records(message)
    assert len(parts) == 4
    assert all(len(p) <= RECORD_BYTES + 1 for p in parts)
    assembler = Assembler()
    assert [assembler.feed(p) for p in parts[:-1]] == [None, None, None]
    assert assembler.midway
    assert assembler.feed(parts[-1]) == message
    assert not assembler.midway
    assert json.loads(message)["env"]["BIG"] == "x" * (3 * RECORD_BYTES)


def test_an_oversized_or_malformed_record_stream_is_refused() -> None:
    with pytest.raises(Refused, match="malformed record"):
        Assembler().feed(b"?{}")
    with pytest.raises(Refused, match="malformed record"):
        Assembler().feed(b"")
    with pytest.raises(Refused, match="record of"):
        Assembler().feed(b"+" + b"x" * (RECORD_BYTES + 1))
    assembler = Assembler()
    more = b"+" + b"x" * RECORD_BYTES
    for _ in range(MAX_MESSAGE_BYTES // RECORD_BYTES):
        assert assembler.feed(more) is None
    with pytest.raises(Refused, match=f"message longer than {MAX_MESSAGE_BYTES} bytes"):
        assembler.feed(more)
    with pytest.raises(Refused, match="at most"):
        records(b"x" * (MAX_MESSAGE_BYTES + 1))
