"""What the delegate may ask the task launcher, and what it answers: pure, no I/O.

The launcher trusts nothing the delegate sends: a message is parsed here into one of four
typed requests or refused with a one-line reason (:class:`Refused`), and every field is
checked against what the launcher itself knows (how many slots, which names a task's
directory may have). The launcher never takes a uid, a pid or an absolute path from the
delegate: a slot number picks one of its own task users, a task's directory is a name in
its own work directory, and a signal goes to the process group it started itself.

Framing, over an ``AF_UNIX`` ``SOCK_SEQPACKET`` connection: a message is a UTF-8 JSON object
cut into records of at most :data:`RECORD_BYTES`, each led by one flag byte, ``+`` (more
records follow) or ``.`` (the last). Records keep the socket's own message boundaries, so
no length can be misread, and a large environment still fits the default socket buffers.
Descriptors (``SCM_RIGHTS``) travel with a message's first record only.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from shared.limits import KIB, MIB

__all__ = [
    "CD_THEN_EXEC",
    "MAX_FDS",
    "MAX_MESSAGE_BYTES",
    "RECORD_BYTES",
    "SIGNALS",
    "Assembler",
    "Pool",
    "Refused",
    "Request",
    "Signal",
    "Start",
    "Sweep",
    "encode",
    "parse_reply",
    "parse_request",
    "records",
]

# The task's user changes into its directory (the launcher may not enter it: it holds no
# CAP_DAC_*), then execs the program in the same process: pid, session and group stay.
CD_THEN_EXEC = 'cd -- "$0" && exec "$@"'
RECORD_BYTES = 64 * KIB
# Above what exec takes anyway (argv and environment together, ARG_MAX is 2 MiB by default).
MAX_MESSAGE_BYTES = 4 * MIB
# SCM_RIGHTS carries at most 253 descriptors in one message.
MAX_FDS = 250
MAX_ARGS = 4096
MORE, LAST = b"+", b"."
# What stopping a task takes (delegate/run/process.py); no other signal is sent for it.
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}
# A task's directory as the delegate names it (tempfile.mkdtemp(prefix="task-")).
_DIR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_MAX_ID = 2**53


class Refused(Exception):
    """The request is not one the launcher runs; ``str()`` is the one-line reason."""

    def __init__(self, reason: str, request_id: int | None = None) -> None:
        super().__init__(reason)
        self.request_id = request_id


@dataclass(frozen=True)
class Pool:
    """Which task users the slots are: the delegate's view of them comes from here."""

    id: int


@dataclass(frozen=True)
class Start:
    """Start ``argv`` as slot ``slot``'s user, in ``cwd`` (relative to the task's directory
    ``dir``), after handing it the objects whose descriptors came with the request (the
    first is the directory itself). One per connection: the task lives as long as it."""

    id: int
    slot: int
    dir: str
    cwd: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclass(frozen=True)
class Signal:
    """Signal the process group this connection started."""

    id: int
    signal: signal.Signals


@dataclass(frozen=True)
class Sweep:
    """Kill every process of slot ``slot``'s user and empty its directory ``dir``."""

    id: int
    slot: int
    dir: str | None


Request = Pool | Start | Signal | Sweep

_FIELDS: dict[str, set[str]] = {
    "pool": {"id", "op"},
    "start": {"id", "op", "slot", "dir", "cwd", "argv", "env"},
    "signal": {"id", "op", "signal"},
    "sweep": {"id", "op", "slot", "dir"},
}


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def records(message: bytes) -> list[bytes]:
    """``message`` as the records that carry it, flag byte first."""
    if len(message) > MAX_MESSAGE_BYTES:
        raise Refused(f"message of {len(message)} bytes; at most {MAX_MESSAGE_BYTES}")
    chunks = [message[i : i + RECORD_BYTES] for i in range(0, len(message), RECORD_BYTES)]
    chunks = chunks or [b""]
    return [(LAST if i == len(chunks) - 1 else MORE) + c for i, c in enumerate(chunks)]


class Assembler:
    """Joins records back into messages, refusing what no honest sender makes."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def midway(self) -> bool:
        """Some records of a message are in, not its last."""
        return bool(self._parts)

    def feed(self, record: bytes) -> bytes | None:
        """The whole message once its last record is in; None while more are due."""
        flag, body = record[:1], record[1:]
        if flag not in (MORE, LAST):
            raise Refused("malformed record")
        if len(body) > RECORD_BYTES:
            raise Refused(f"record of {len(body)} bytes; at most {RECORD_BYTES}")
        self._size += len(body)
        if self._size > MAX_MESSAGE_BYTES:
            raise Refused(f"message longer than {MAX_MESSAGE_BYTES} bytes")
        self._parts.append(body)
        if flag == MORE:
            return None
        message = b"".join(self._parts)
        self._parts, self._size = [], 0
        return message


def _object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused("not a JSON object") from None
    if not isinstance(value, dict):
        raise Refused("not a JSON object")
    return value


def _text(value: Any, what: str, rid: int) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise Refused(f"{what} must be a string without NUL", rid)
    return value


def _slot(value: Any, slots: int, rid: int) -> int:
    # bool is an int to Python, and not a slot.
    if type(value) is not int or not 0 <= value < slots:
        raise Refused(f"slot must be a whole number from 0 to {slots - 1}", rid)
    return value


def _dir(value: Any, rid: int) -> str:
    if not isinstance(value, str) or not _DIR_NAME.fullmatch(value) or value.strip(".") == "":
        raise Refused("dir must name a task directory (letters, digits, . _ -)", rid)
    return value


def _cwd(value: Any, rid: int) -> str:
    text = _text(value, "cwd", rid)
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts:
        raise Refused("cwd must lie inside the task's directory", rid)
    return str(path)


def parse_request(data: bytes, *, fds: int, slots: int) -> Request:
    """The request in ``data`` (which came with ``fds`` descriptors), for a launcher of
    ``slots`` slots; :class:`Refused` with the reason when it is none the launcher runs."""
    message = _object(data)
    rid = message.get("id")
    if type(rid) is not int or not 0 <= rid < _MAX_ID:
        raise Refused("id must be a whole number")
    op = message.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise Refused(f"unknown op {str(op)[:32]!r}", rid)
    unknown = set(message) - _FIELDS[op]
    if unknown:
        raise Refused(f"unknown fields for {op}: {', '.join(sorted(unknown))}", rid)
    missing = _FIELDS[op] - set(message)
    if missing:
        raise Refused(f"missing fields for {op}: {', '.join(sorted(missing))}", rid)
    if op != "start" and fds:
        raise Refused(f"{op} takes no descriptors", rid)
    if op == "pool":
        return Pool(rid)
    if op == "signal":
        sig = message["signal"]
        if sig not in SIGNALS:
            raise Refused(f"signal must be one of {', '.join(SIGNALS)}", rid)
        return Signal(rid, SIGNALS[sig])
    if op == "sweep":
        name = message["dir"]
        return Sweep(
            rid, _slot(message["slot"], slots, rid), None if name is None else _dir(name, rid)
        )
    if not 1 <= fds <= MAX_FDS:
        raise Refused(f"start takes 1 to {MAX_FDS} descriptors (the task's directory first)", rid)
    argv = message["argv"]
    if not isinstance(argv, list) or not 1 <= len(argv) <= MAX_ARGS:
        raise Refused(f"argv must be a list of 1 to {MAX_ARGS} strings", rid)
    env = message["env"]
    if not isinstance(env, dict):
        raise Refused("env must be an object of strings", rid)
    for key in env:
        if not key or "=" in key or "\0" in key:
            raise Refused("env names must be non-empty, without = or NUL", rid)
    return Start(
        id=rid,
        slot=_slot(message["slot"], slots, rid),
        dir=_dir(message["dir"], rid),
        cwd=_cwd(message["cwd"], rid),
        argv=tuple(_text(a, "argv", rid) for a in argv),
        # Values are never quoted in a reason: they may be the task's secrets.
        env={k: _text(v, "an env value", rid) for k, v in env.items()},
    )


def parse_reply(data: bytes) -> dict[str, Any]:
    """A reply or event from the launcher, as the delegate reads it."""
    try:
        return _object(data)
    except Refused:
        raise Refused("the task launcher sent something that is not a JSON object") from None
