"""Sending and receiving the launcher's messages (delegate/launcher/protocol.py) on a
non-blocking ``SOCK_SEQPACKET`` socket, with descriptors; used by both ends.

asyncio has no ``sendmsg``/``recvmsg`` of its own: each call is tried at once and, when the
socket would block, retried once the loop says it is ready.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

from delegate.launcher.protocol import MAX_FDS, RECORD_BYTES, Assembler, Refused, records

__all__ = ["receive", "send"]


async def _ready(sock: socket.socket, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    (loop.add_writer if write else loop.add_reader)(fd, on_ready)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def send(sock: socket.socket, message: bytes, fds: Sequence[int] = ()) -> None:
    """Send ``message``, with ``fds`` (duplicated into the peer; ours stay open)."""
    for i, record in enumerate(records(message)):
        while True:
            try:
                socket.send_fds(sock, [record], list(fds) if i == 0 else [])
                break
            except BlockingIOError:
                await _ready(sock, write=True)


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)


async def receive(sock: socket.socket, assembler: Assembler) -> tuple[bytes, list[int]] | None:
    """The next whole message and the descriptors that came with it; None at EOF.

    :class:`Refused` on a framing fault (a record too long, descriptors cut short or on a
    later record); the stream cannot be trusted after one, so the caller closes it.
    Received descriptors are close-on-exec: no child inherits them by accident.
    """
    got: list[int] = []
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(
                sock, RECORD_BYTES + 2, MAX_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            await _ready(sock, write=False)
            continue
        except BaseException:
            _close(got)
            raise
        if not data:
            # Every record holds its flag byte: an empty read is the peer gone.
            _close([*got, *fds])
            return None
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or (fds and assembler.midway):
            _close([*got, *fds])
            raise Refused("malformed record (too long, or descriptors cut short or late)")
        got.extend(fds)
        try:
            message = assembler.feed(data)
        except Refused:
            _close(got)
            raise
        if message is not None:
            return message, got
