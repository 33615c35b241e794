"""A notify socket as systemd holds one: AF_UNIX datagrams, received with a deadline."""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path

__all__ = ["NotifySocket", "parse"]


def parse(datagram: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines, as systemd reads them."""
    return dict(line.split("=", 1) for line in datagram.decode().splitlines() if "=" in line)


class NotifySocket:
    """Bound at ``path``, or in the abstract namespace (``@name``) when no path is given."""

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            self.name = f"@tether-test-{secrets.token_hex(8)}"
            self.sock.bind("\0" + self.name[1:])
        else:
            self.name = str(path)
            self.sock.bind(self.name)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    async def receive(self, timeout: float) -> dict[str, str]:
        async with asyncio.timeout(timeout):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        message = parse(data)
        self.received.append(message)
        return message

    async def wait_for(self, key: str, value: str, timeout: float) -> dict[str, str]:
        """The next message that sets ``key`` to ``value``; the others are kept in
        :attr:`received`."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await self.receive(timeout)
                    if message.get(key) == value:
                        return message
        except TimeoutError:
            raise AssertionError(
                f"no {key}={value} within {timeout} s; got {self.received[-5:]}"
            ) from None

    def drain(self) -> list[dict[str, str]]:
        """Whatever is already queued, without waiting."""
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out
            out.append(parse(data))
            self.received.append(out[-1])

    def close(self) -> None:
        self.sock.close()
